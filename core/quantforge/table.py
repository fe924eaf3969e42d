"""The trade-off table of a run, read from the results store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantforge.results import ResultsStore

# metric -> (column title, format)
COLUMNS: dict[str, tuple[str, str]] = {
    "size_mb": ("size MB", "{:.1f}"),
    "peak_rss_mb": ("peak RSS MB", "{:.0f}"),
    "model_memory_mb": ("+model MB", "{:.0f}"),
    "prefill_tps": ("prefill tok/s", "{:.0f}"),
    "decode_tps": ("decode tok/s", "{:.1f}"),
    "perplexity": ("ppl", "{:.2f}"),
    "kl_divergence": ("KL vs base", "{:.5f}"),
    "top1_agreement": ("top-1", "{:.1%}"),
    # device profiles: estimates
    "fits": ("fits", "{}"),
    "needed_mb": ("needs MiB", "{:.0f}"),
    "est_decode_tps": ("est. decode tok/s", "{:.1f}"),
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
        values = {(m.variant, m.metric): m.value for m in measurements if m.target == target}
        present = {metric for _, metric in values}
        known = [c for c in COLUMNS if c in present]
        extra = sorted(present - set(COLUMNS) - HIDDEN)
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
                }
            )
        kinds = {m.kind for m in measurements if m.target == target}
        tables.append(
            Table(target, known + extra, rows, estimated=("estimated" in kinds) if kinds else None)
        )
    return tables


def bits_label(bits: float | None, precision: dict[str, Any] | None) -> str:
    """``4``, or ``4/8`` when a precision map shows several bit widths (mixed precision)."""
    if precision:
        widths = sorted(
            {b for b in precision.get("modules", {}).values() if isinstance(b, int | float)}
        )
        if len(widths) > 1:
            return "/".join(f"{b:.3g}" for b in widths)
    return "-" if bits is None else f"{bits:g}"


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "fits":
        return "yes" if value >= 1 else "NO"
    fmt = COLUMNS.get(metric, (metric, "{:.4g}"))[1]
    return fmt.format(value)


def title(metric: str) -> str:
    return COLUMNS.get(metric, (metric, ""))[0]
