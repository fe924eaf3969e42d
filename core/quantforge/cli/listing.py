"""``quantforge plugins``, ``methods``, ``targets`` and ``evaluators``: what is installed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from quantforge.devices.profiles import DeviceProfile
from quantforge.interfaces import Component, Quantizer, Target
from quantforge.plugins.manager import Plugins, load_plugins
from quantforge.plugins.registry import Registry


def _console() -> Any:
    from rich.console import Console

    return Console()


def _options(obj: Component) -> list[dict[str, Any]]:
    return [{"name": o.name, "spec": o.describe(), "help": o.help} for o in obj.options.options]


def plugins_command(args: argparse.Namespace) -> int:
    plugins = load_plugins()
    infos = [i for i in plugins.infos.values() if not (args.third_party and i.first_party)]
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    console = _console()
    if not infos:
        console.print(
            "No plugins loaded." if not plugins.infos else "No third-party plugins installed."
        )
        return 0
    from rich.table import Table

    table = Table("plugin", "version", "registers", "missing packages", "errors")
    for info in infos:
        registered = "\n".join(
            f"{kind}: {', '.join(names)}" for kind, names in info.registered.items()
        )
        missing = "\n".join(
            f"{obj}: {', '.join(pkgs)}" for obj, pkgs in info.missing_packages.items()
        )
        name = info.name + (" (first-party)" if info.first_party else "")
        table.add_row(
            name,
            info.version or "-",
            registered or "-",
            missing or "-",
            "\n".join(info.errors) or "-",
        )
    console.print(table)
    return 0


def _describe(plugins: Plugins, kind: str) -> list[dict[str, Any]]:
    registries: dict[str, Registry[Any]] = {
        "methods": plugins.methods,
        "targets": plugins.targets,
        "evaluators": plugins.evaluators,
    }
    registry = registries[kind]
    out = []
    for obj in sorted(registry, key=lambda o: o.name):
        row: dict[str, Any] = {
            "name": obj.name,
            "plugin": registry.plugin_of(obj.name),
            "description": obj.description,
            "options": _options(obj),
            "missing_packages": obj.missing_packages(),
            "extra": obj.extra,
        }
        if kind == "methods":
            row["kind"] = "quantizer" if isinstance(obj, Quantizer) else "exporter"
            row["input_format"] = obj.input_format  # type: ignore[attr-defined]
            row["output_format"] = obj.output_format  # type: ignore[attr-defined]
            row["presets"] = sorted(obj.options.presets)
            row["needs_calibration"] = isinstance(obj, Quantizer) and obj.needs_calibration
            supported = obj.supported_architectures()  # type: ignore[attr-defined]
            row["architectures"] = "any" if supported is None else sorted(supported)
        if kind == "targets":
            row.update(_target_facts(obj))
        if kind == "evaluators":
            row["by_default"] = obj.by_default
            if not obj.by_default:
                row["description"] += f" (ask for it: --evaluator {obj.name})"
        out.append(row)
    return out


def _target_facts(target: Target) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "formats": sorted(target.formats),
        "measured": target.measured,
        "unavailable": target.unavailable_reason() if target.measured else None,
    }
    if isinstance(target, DeviceProfile):
        facts.update(
            memory_gib=target.memory_gib,
            reserved_gib=target.reserved_gib,
            bandwidth_gbs=target.bandwidth_gbs,
            efficiency=target.efficiency,
            processor=target.processor,
            runtimes={r.family: r.name for r in target.runtimes},
            source=target.source,
        )
    return facts


def _targets_table(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table("name", "device", "memory", "bandwidth", "runs", "status")
    for row in rows:
        if "runtimes" in row:
            memory = (
                f"{row['memory_gib']:g} GiB ({row['memory_gib'] - row['reserved_gib']:g} usable)"
            )
            bandwidth = f"{row['bandwidth_gbs']:g} GB/s"
            runs = "\n".join(f"{fam}: {rt}" for fam, rt in sorted(row["runtimes"].items()))
            status = "profile: estimates"
        else:
            memory = bandwidth = "this machine"
            runs = ", ".join(row["formats"])
            status = "measured, ready"
            if row["missing_packages"]:
                status = f"missing {', '.join(row['missing_packages'])}: pip install 'quantforge[{row['extra']}]'"
            elif row["unavailable"]:
                status = f"unavailable: {row['unavailable']}"
        table.add_row(row["name"], row["description"], memory, bandwidth, runs, status)
    return table


def _listing(args: argparse.Namespace, kind: str) -> int:
    plugins = load_plugins()
    rows = _describe(plugins, kind)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if kind == "targets":
        _console().print(_targets_table(rows))
        _console().print(
            "Profiles estimate from memory size and bandwidth; check one with "
            "`quantforge fit MODEL --target NAME --context N`."
        )
        return 0
    from rich.table import Table

    table = Table("name", "what", "options", "status")
    for row in rows:
        what = row["description"]
        if kind == "methods":
            what = f"[{row['kind']}] {row['input_format']} -> {row['output_format']}\n{what}"
            if row["presets"]:
                what += "\npresets: " + ", ".join(row["presets"])
            archs = row["architectures"]
            shown = (
                archs
                if archs == "any"
                else ", ".join(archs[:6]) + (f" (+{len(archs) - 6})" if len(archs) > 6 else "")
            )
            what += f"\narchitectures: {shown}"
            if row["needs_calibration"]:
                what += "\nneeds calibration data"
        options = "\n".join(f"{o['name']}: {o['spec']}" for o in row["options"]) or "-"
        if row["missing_packages"]:
            status = f"missing {', '.join(row['missing_packages'])}: pip install 'quantforge[{row['extra']}]'"
        else:
            status = "ready"
        table.add_row(row["name"], what, options, status)
    _console().print(table)
    for info in plugins.errors():
        _console().print(f"[yellow]plugin {info.name} failed to load: {info.errors[0]}[/yellow]")
    return 0


def methods_command(args: argparse.Namespace) -> int:
    if args.model is not None:
        return _model_support(args)
    return _listing(args, "methods")


def _model_support(args: argparse.Namespace) -> int:
    """``quantforge methods --model PATH``: every preset checked against one model."""
    from quantforge.running.support import model_support, read_config

    config = read_config(args.model)
    rows = model_support(load_plugins(), config, args.model)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    from rich.table import Table

    arch = ", ".join(config.get("architectures") or []) or "?"
    table = Table(
        "variant", "format", "runs on", "support", title=f"{arch} ({config.get('model_type')})"
    )
    colour = {"supported": "green", "refused": "red", "missing": "yellow", "error": "red"}
    for row in rows:
        text = row.status if not row.reason else f"{row.status}: {row.reason}"
        table.add_row(
            row.variant,
            row.format,
            ", ".join(row.runs_on) or "-",
            f"[{colour[row.status]}]{text}[/{colour[row.status]}]",
        )
    console = _console()
    console.print(table)
    ok = sum(r.status == "supported" for r in rows)
    console.print(
        f"{ok} of {len(rows)} presets support this model. Build some with "
        f"`quantforge quantize {args.model} --variant METHOD:PRESET`."
    )
    return 0


def targets_command(args: argparse.Namespace) -> int:
    return _listing(args, "targets")


def evaluators_command(args: argparse.Namespace) -> int:
    return _listing(args, "evaluators")
