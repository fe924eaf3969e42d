"""What a model card shows, gathered from a run's facts: the trade-off rows, fit lines,
precision notes, the command that rebuilds a variant, provenance and ``model-index``
entries. Every number comes from the results store; a missing one is "not measured".
"""

from __future__ import annotations

from typing import Any

from quantforge.store.facts import RunFacts, Variant
from quantforge.store.table import COLUMNS, format_value

NOT_MEASURED = "not measured"


# what the card's trade-off table shows, in this order (task scores are appended)
CARD_METRICS = (
    "size_mb",
    "peak_rss_mb",
    "prefill_tps",
    "decode_tps",
    "perplexity",
    "kl_divergence",
    "top1_agreement",
)


# the columns of the family and GGUF cards
SUMMARY_METRICS = ("size_mb", "decode_tps", "perplexity", "kl_divergence", "top1_agreement")


# model-index entries: metric -> (type, name)
INDEXED = {
    "perplexity": ("perplexity", "Perplexity"),
    "kl_divergence": ("kl_divergence", "KL divergence vs base"),
    "top1_agreement": ("top1_agreement", "Top-1 agreement with base"),
}


def _cell(facts: RunFacts, variant: str, target: str, metric: str) -> str:
    row = facts.rows.get((variant, target, metric))
    return NOT_MEASURED if row is None else format_value(metric, row.value, row.details)


def _delta(facts: RunFacts, variant: str, target: str, metric: str, base: str) -> str:
    """``-73 %`` against the base on the same target, or ``""`` when either side is missing."""
    mine, theirs = facts.value(variant, target, metric), facts.value(base, target, metric)
    if mine is None or theirs is None or variant == base:
        return ""
    if metric in ("kl_divergence", "top1_agreement") or metric not in COLUMNS:
        return ""  # measured against the base, or a task score whose base row shows counts
    if theirs == 0:
        return ""
    change = (mine - theirs) / theirs
    return f"{change:+.1%}" if abs(change) < 0.1 else f"{change:+.0%}"


def tradeoff_rows(facts: RunFacts, target: str, highlight: str) -> list[dict[str, Any]]:
    """Rows of the card's table on one measured target: the base, then every variant."""
    base = "base"
    metrics = list(CARD_METRICS) + facts.task_metrics()
    rows = []
    for v in facts.variants:
        if not any(facts.value(v.name, target, m) is not None for m in metrics):
            continue  # this target does not run the variant's format
        cells = []
        for metric in metrics:
            text = _cell(facts, v.name, target, metric)
            delta = _delta(facts, v.name, target, metric, base) if v.name == highlight else ""
            cells.append(f"{text} ({delta})" if delta else text)
        rows.append(
            {
                "name": v.name,
                "method": v.method,
                "bits": v.bits_label,
                "cells": cells,
                "this": v.name == highlight,
            }
        )
    return rows


def fit_lines(facts: RunFacts, variant: str) -> list[str]:
    """One line per target: measured figures, or a device profile's estimate (labelled)."""
    lines = []
    for target in facts.targets("measured"):
        decode = facts.value(variant, target, "decode_tps")
        rss = facts.value(variant, target, "peak_rss_mb")
        if decode is None and rss is None:
            continue
        hardware = next(
            (
                str(r.provenance.get("hardware"))
                for (v, t, _), r in facts.rows.items()
                if v == variant and t == target
            ),
            "",
        )
        timed = [
            facts.rows[(variant, target, m)].details.get("ran_alone")
            for m in ("decode_tps", "peak_rss_mb")
            if (variant, target, m) in facts.rows
        ]
        alone = (
            ", with no other job running"
            if timed and all(a is True for a in timed)
            else ", while other jobs shared the machine"
            if any(a is False for a in timed)
            else ""
        )
        roof = facts.rows.get((variant, target, "roofline_pct"))
        of_roofline = (
            f" ({roof.value:.0f}% of the memory-bandwidth roofline, "
            f"{float(roof.details.get('bandwidth_gbs', 0)):.1f} GB/s measured on this machine)"
            if roof is not None
            else ""
        )
        lines.append(
            f"**{target}** (measured on {hardware}{alone}): decode "
            f"{format_value('decode_tps', decode) if decode is not None else NOT_MEASURED} tok/s"
            f"{of_roofline}, "
            f"peak RSS {format_value('peak_rss_mb', rss) if rss is not None else NOT_MEASURED} MB"
        )
    for target in facts.targets("estimated"):
        fits = facts.value(variant, target, "fits")
        if fits is None:
            continue
        needed = facts.value(variant, target, "needed_mb")
        speed = facts.value(variant, target, "est_decode_tps")
        row = facts.rows[(variant, target, "fits")]
        context = row.details.get("context")
        lines.append(
            f"**{target}** (estimate from a device profile"
            + (f", context {context}" if context else "")
            + f"): {'fits' if fits >= 1 else 'does NOT fit'}, needs "
            f"{format_value('needed_mb', needed) if needed is not None else NOT_MEASURED} MiB, "
            f"about {format_value('est_decode_tps', speed) if speed is not None else NOT_MEASURED}"
            " tok/s decode"
        )
    return lines


def mixed_precision(variant: Variant) -> dict[str, Any] | None:
    """Bit widths and how many weights got each, when the precision map is mixed."""
    modules = (variant.precision or {}).get("modules") or {}
    widths: dict[str, list[str]] = {}
    for name, bits in modules.items():
        label = f"{bits:g} bits" if isinstance(bits, int | float) else str(bits)
        widths.setdefault(label, []).append(name)
    if len(widths) < 2:
        return None
    return {label: sorted(names) for label, names in sorted(widths.items())}


def group_fallback(variant: Variant) -> dict[str, Any] | None:
    """What a default group size fell back to on weights it does not divide, if it did."""
    precision = variant.precision or {}
    groups = precision.get("group_sizes") or {}
    if not groups:
        return None
    sizes: dict[str, int] = {}
    for size in groups.values():
        key = "one per row" if int(size) < 0 else str(size)
        sizes[key] = sizes.get(key, 0) + 1
    note = str(precision.get("fallback") or f"group size {precision.get('group_size')}")
    return {"note": note[0].upper() + note[1:], "sizes": sizes}


def nominal_bits(variant: Variant) -> int | None:
    """The bit width people call it by (4 for Q4_K_M at 4.5-6.6 bits, or int4 with scales
    at 5): the narrowest weight width, rounded down."""
    widths = [
        b
        for b in ((variant.precision or {}).get("modules") or {}).values()
        if isinstance(b, int | float)
    ]
    bits = min(widths) if widths else variant.bits
    return None if bits is None else int(bits)


def reproduce_command(facts: RunFacts, variant: Variant) -> str:
    config = facts.config
    parts = ["quantforge quantize", str(config.get("model"))]
    if config.get("revision"):
        parts.append(f"--revision {config['revision']}")
    if variant.name != "base":
        parts.append(f"-v {variant.spec_text()}")
    for target, options in (config.get("targets") or {}).items():
        opts = ",".join(f"{k}={v}" for k, v in (options or {}).items())
        parts.append(f"--target {target}" + (f",{opts}" if opts else ""))
    calibration = config.get("calibration") or {}
    if variant.calibration and calibration.get("source"):
        parts.append(f"--calibration {calibration['source']}")
        parts.append(f"--calibration-samples {calibration.get('samples')}")
        parts.append(f"--calibration-seq-len {calibration.get('seq_len')}")
    if config.get("eval_text"):
        parts.append(f"--eval-text {config['eval_text']}")
    return " ".join(parts)


def provenance(facts: RunFacts, variant: str) -> dict[str, Any]:
    """Hardware, library versions and fingerprints of the rows measured for ``variant``."""
    rows = [r for (v, _, _), r in facts.rows.items() if v == variant]
    libraries: dict[str, str] = {}
    hardware = sorted({str(r.provenance.get("hardware")) for r in rows if r.kind == "measured"})
    for r in rows:
        libraries.update(r.provenance.get("libraries") or {})
    fingerprints = sorted(
        {
            str(r.provenance["dataset_fingerprint"])
            for r in rows
            if r.provenance.get("dataset_fingerprint")
        }
    )
    return {
        "hardware": hardware,
        "python": sorted({str(r.provenance.get("python")) for r in rows}),
        "libraries": dict(sorted(libraries.items())),
        "base_revision": facts.run.get("base_revision") or f"sha256:{facts.run['base_hash']}",
        "eval_fingerprints": fingerprints,
        "eval_text_source": facts.config.get("eval_text_source"),
        "base_note": (facts.config.get("base_source") or {}).get("note"),
        "run_id": facts.run["run_id"],
        "measured_at": sorted({str(r.provenance.get("measured_at")) for r in rows}),
    }


def eval_results(facts: RunFacts, variant: str, dataset: str) -> list[Any]:
    """``model-index`` entries for the quality metrics measured on this variant."""
    from huggingface_hub import EvalResult

    target = facts.measuring_target(variant)
    if target is None:
        return []
    results = []
    fingerprint = ""
    for metric, (metric_type, metric_name) in INDEXED.items():
        row = facts.rows.get((variant, target, metric))
        if row is None:
            continue
        fingerprint = str(row.provenance.get("dataset_fingerprint", ""))
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=dataset,
                dataset_name=(
                    f"{facts.config.get('eval_text_source') or 'quantforge evaluation text'} "
                    f"({fingerprint[:19]})"
                ),
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=round(row.value, 6),
                # how it was measured (tokens scored, window, stride): values depend on them
                metric_args={
                    k: v for k, v in row.details.items() if isinstance(v, int | float | str)
                }
                or None,
            )
        )
    return results


def gguf_label(variant: Variant) -> str:
    """``Q4_K_M`` for a llama.cpp quantization, ``F16`` (the outtype) for a plain export."""
    qtype = (variant.precision or {}).get("type")
    if qtype:
        return str(qtype)
    for step in variant.steps:
        if step.get("output_format") == "gguf":
            return str((step.get("options") or {}).get("outtype", "f16")).upper()
    return variant.name


def fit_lines_for(facts: RunFacts, variant: str, target: str) -> str:
    fits = facts.value(variant, target, "fits")
    if fits is None:
        return NOT_MEASURED
    speed = facts.value(variant, target, "est_decode_tps")
    return ("fits" if fits >= 1 else "does NOT fit") + (
        f", ~{format_value('est_decode_tps', speed)} tok/s" if speed is not None else ""
    )
