"""``quantforge results RUN_DIR``: the trade-off table, straight from the results store."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from quantforge.store.results import ResultsStore
from quantforge.store.table import COLUMNS, title, tradeoff_tables


def results_json(run_dir: Path) -> dict[str, Any]:
    store = ResultsStore(run_dir)
    try:
        return {
            "run": store.latest_run(),
            "tables": [asdict(t) for t in tradeoff_tables(store)],
            "measurements": [asdict(m) for m in store.measurements()],
        }
    finally:
        store.close()


def print_tables(run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    store = ResultsStore(run_dir)
    try:
        tables = tradeoff_tables(store)
        run = store.latest_run()
    finally:
        store.close()
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 170)  # a file or a pipe: the whole table
    for t in tables:
        kind = {True: " (estimates from a device profile)", False: " (measured)", None: ""}
        heading = f"{run['base_model'] if run else ''} on {t.target}"
        # rows of formats this target does not run are left out, and named in one line
        skipped = [row for row in t.rows if row["status"] == "not runnable"]
        shown = [row for row in t.rows if row["status"] != "not runnable"]
        # task scores get a table of their own beside the trade-offs, for width
        standard = [m for m in t.columns if m in COLUMNS]
        tasks = [m for m in t.columns if m not in COLUMNS]
        parts = [(f"{heading}{kind[t.estimated]}", standard, True)]
        if tasks:
            parts.append((f"{heading}: task scores", tasks, False))
        for heading_, metrics, with_status in parts:
            table = Table(title=heading_)
            # a variant's name is what later commands take: wrapped, never cut short
            table.add_column("variant", overflow="fold")
            table.add_column("method", overflow="fold")
            table.add_column("bits", justify="right")
            for metric in metrics:
                table.add_column(title(metric), justify="right")
            if with_status:
                table.add_column("status")
            for row in shown:
                cells = [row["display"].get(m, "-") for m in metrics]
                status = [row["status"]] if with_status else []
                table.add_row(row["variant"], row["method"], row["bits_label"], *cells, *status)
            if shown:
                console.print(table)
        for row in shown:
            if row["error"]:
                console.print(f"[red]{row['variant']}[/red]: {row['error']}")
        if skipped:
            formats = sorted({row["format"].split("+")[0] for row in skipped})
            console.print(
                f"[dim]Not run on {t.target} (it does not run {', '.join(formats)}): "
                f"{', '.join(row['variant'] for row in skipped)}[/dim]"
            )
    console.print(
        f"Results store: {run_dir / 'results.sqlite'} (`quantforge results {run_dir} --json` for provenance)"
    )


def results_command(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(results_json(args.run_dir), indent=2, default=str))
    else:
        print_tables(args.run_dir)
    return 0
