"""The trade-off table of a run, read from the results store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from quantforge.store.results import ResultsStore

# metric -> (column title, format)
COLUMNS: dict[str, tuple[str, str]] = {
    "size_mb": ("size MB", "{:.1f}"),
    "peak_rss_mb": ("peak RSS MB", "{:.0f}"),
    "model_memory_mb": ("+model MB", "{:.0f}"),
    "prefill_tps": ("prefill tok/s", "{:.0f}"),
    "decode_tps": ("decode tok/s", "{:.1f}"),
    "roofline_pct": ("roofline", "{:.0f}%"),
    "perplexity": ("ppl", "{:.2f}"),
    "kl_divergence": ("KL vs base", "{:.5f}"),
    "top1_agreement": ("top-1", "{:.1%}"),
    # device profiles: estimates
    "fits": ("fits", "{}"),
    "needed_mb": ("needs MiB", "{:.0f}"),
    "est_decode_tps": ("est. decode tok/s", "{:.1f}"),
}


# Task scores (quantforge_tasks): titles and order; shown after the columns above.
TASK_TITLES: dict[str, str] = {
    "tool_json_valid": "JSON valid",
    "tool_name_accuracy": "right tool",
    "tool_args_exact": "exact args",
    "tool_args_schema_valid": "schema-valid args",
    "exact_match": "exact match",
}

# Kept in the store and in --json, left out of the printed table for width.
HIDDEN = {"weights_mb"}


@dataclass
class Table:
    target: str
    columns: list[str]  # metric names, in display order
    rows: list[dict[str, Any]]
    estimated: bool | None = None  # a device profile's estimates; None when nothing was recorded


def tradeoff_tables(store: ResultsStore) -> list[Table]:
    """One table per target: a row per variant with its metrics and its status."""
    variants = store.variants()
    evaluations = {(e["variant"], e["target"]): e for e in store.evaluations()}
    measurements = store.measurements()
    targets = sorted({m.target for m in measurements} | {t for _, t in evaluations})
    tables = []
    for target in targets or ["-"]:
        here = {(m.variant, m.metric): m for m in measurements if m.target == target}
        values = {key: m.value for key, m in here.items()}
        present = {metric for _, metric in values}
        known = [c for c in COLUMNS if c in present]
        extra = sorted(present - set(COLUMNS) - HIDDEN, key=column_order)
        rows = []
        for v in variants:
            ev = evaluations.get((v["name"], target))
            if v["status"] != "ok":
                status = "build failed"
            elif ev is None:
                status = "not measured"
            else:
                status = {
                    "ok": "ok",
                    "partial": "partial",
                    "failed": "eval failed",
                    "not-runnable": "not runnable",
                }.get(ev["status"], ev["status"])
            rows.append(
                {
                    "variant": v["name"],
                    "method": v["method"],
                    "bits": v["bits"],
                    "bits_label": bits_label(v["bits"], v["precision"]),
                    "format": v["format"],
                    "status": status,
                    "error": v["error"] or (ev["error"] if ev else None),
                    "metrics": {
                        m: values[(v["name"], m)] for m in known + extra if (v["name"], m) in values
                    },
                    "display": {
                        m: format_value(m, here[(v["name"], m)].value, here[(v["name"], m)].details)
                        for m in known + extra
                        if (v["name"], m) in here
                    },
                }
            )
        kinds = {m.kind for m in measurements if m.target == target}
        tables.append(
            Table(target, known + extra, rows, estimated=("estimated" in kinds) if kinds else None)
        )
    return tables


def bits_label(bits: float | None, precision: dict[str, Any] | None) -> str:
    """``4``, ``4/8`` when a precision map shows several bit widths (mixed precision), and
    ``4 (g128/64)`` when some layers fell back from the group size asked for."""
    label = "-" if bits is None else f"{bits:g}"
    if precision:
        widths = sorted(
            {b for b in precision.get("modules", {}).values() if isinstance(b, int | float)}
        )
        if len(widths) > 1:
            label = "/".join(f"{b:.3g}" for b in widths)
        fallbacks = precision.get("group_sizes") or {}
        if fallbacks and precision.get("group_size"):
            sizes = sorted({int(g) for g in fallbacks.values()}, reverse=True)
            label += f" (g{precision['group_size']}/{'/'.join(map(str, sizes))})"
    return label


def column_order(metric: str) -> tuple[int, str]:
    """Known task scores in their order, then the rest by name."""
    order = list(TASK_TITLES)
    return (order.index(metric) if metric in order else len(order), metric)


def format_value(metric: str, value: float | None, details: Mapping[str, Any] | None = None) -> str:
    """A value as the table shows it: a task score with counts as ``47/50``, an lm-eval
    score as ``0.634 ± 0.012`` (its stderr)."""
    if value is None:
        return "-"
    details = details or {}
    passed, total = details.get("passed"), details.get("total")
    if isinstance(passed, int) and isinstance(total, int) and total:
        return f"{passed}/{total}"
    stderr = details.get("stderr")
    if metric not in COLUMNS and isinstance(stderr, int | float):
        return f"{value:.4g} ± {stderr:.2g}"
    if metric == "fits":
        return "yes" if value >= 1 else "NO"
    fmt = COLUMNS.get(metric, (metric, "{:.4g}"))[1]
    return fmt.format(value)


def title(metric: str) -> str:
    return COLUMNS[metric][0] if metric in COLUMNS else TASK_TITLES.get(metric, metric)
