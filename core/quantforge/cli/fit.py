"""``quantforge fit MODEL --target rpi5 --context 4096``: fit checks and decode estimates."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quantforge.devices.footprint import Footprint, footprint_from_hub, footprint_of
from quantforge.devices.profiles import DeviceProfile, FitReport
from quantforge.errors import UsageError
from quantforge.model.source import looks_like_hub_id
from quantforge.plugins.manager import load_plugins


def footprint_for(ref: str, revision: str | None) -> Footprint:
    """A local folder (model or variant), else a Hub id looked up without its weights."""
    path = Path(ref).expanduser()
    if path.exists() or not looks_like_hub_id(ref):
        return footprint_of(path)
    return footprint_from_hub(ref, revision)


def fit_reports(
    ref: str, targets: list[str] | None, context: int | None, revision: str | None = None
) -> tuple[Footprint, list[DeviceProfile], list[FitReport]]:
    """The footprint of ``ref``, the profiles asked for, and a report for each that runs it."""
    plugins = load_plugins()
    names = targets or [
        t.name for t in sorted(plugins.targets, key=lambda t: t.name) if not t.measured
    ]
    profiles: list[DeviceProfile] = []
    for name in names:
        target = plugins.targets.get(name)  # unknown names raise with suggestions
        if not isinstance(target, DeviceProfile):
            raise UsageError(
                f"target {name!r} is measured on this machine, not a device profile",
                hint=f"measure it with `quantforge quantize MODEL -v METHOD --target {name}`",
            )
        profiles.append(target)
    footprint = footprint_for(ref, revision)
    if context is None:
        context = footprint.default_context()
    runnable = [p for p in profiles if footprint.family in p.formats]
    if not runnable:
        # one named device that does not run this format: say which formats it runs
        profiles[0].runtime_for(footprint.family)
    return footprint, profiles, [p.fit(footprint, context) for p in runnable]


def fit_command(args: argparse.Namespace) -> int:
    footprint, profiles, reports = fit_reports(
        args.model, args.targets, args.context, args.revision
    )
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    first = reports[0]
    console.print(
        f"[bold]{footprint.name}[/bold] ({footprint.family}) at {first.context} tokens of context:"
        " [yellow]estimates from device profiles, not measurements[/yellow]"
    )
    if len(profiles) == 1:
        profile = profiles[0]
        console.print(f"{profile.description} ({profile.processor}), with {first.runtime}")
        grid = Table.grid(padding=(0, 2))
        grid.add_column()
        grid.add_column(justify="right")
        grid.add_column(style="dim")
        for what, value, how in first.lines:
            grid.add_row(what, value, how)
        console.print(grid)
        console.print(f"source: {profile.source}", style="dim", highlight=False)
        return 0
    table = Table("device", "runtime", "needs", "usable", "fits", "est. decode tok/s")
    by_device = {r.device: r for r in reports}
    for profile in profiles:
        r = by_device.get(profile.name)
        if r is None:
            runs = ", ".join(sorted(profile.formats))
            table.add_row(profile.name, "-", "-", "-", f"runs {runs}, not {footprint.family}", "-")
            continue
        table.add_row(
            r.device,
            r.runtime,
            f"{r.needed_bytes / 2**30:.2f} GiB",
            f"{r.available_bytes / 2**30:.2f} GiB",
            "yes" if r.fits else "[red]NO[/red]",
            f"{r.decode_tps:.1f}",
        )
    console.print(table)
    console.print("The arithmetic for one device: `quantforge fit MODEL --target NAME`.")
    return 0
