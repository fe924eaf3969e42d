"""Hugging Face model cards from the results store: one per variant, and one for the family.

Cards are built with huggingface_hub's ``ModelCard``, ``ModelCardData`` and
``EvalResult`` from the Jinja templates in ``model_cards/templates`` (installed with the
package as ``quantforge/card_templates``). Every number in a card is read from the
results store; a value the store does not hold is written "not measured".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.errors import ResultsError, UsageError
from quantforge.interfaces import format_family
from quantforge.results import ResultsStore, Row
from quantforge.table import COLUMNS, bits_label, column_order, format_value, title

TEMPLATES = Path(__file__).parent / "card_templates"
PLOT_FILE = "quantforge-tradeoffs.png"
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
CARD_FILE = "README.md"
CARD_LIBRARIES = ("huggingface_hub", "jinja2", "matplotlib")
LIBRARY = {"hf": "transformers", "gguf": "gguf", "onnx": "onnx", "openvino": "openvino"}
# model-index entries: metric -> (type, name)
INDEXED = {
    "perplexity": ("perplexity", "Perplexity"),
    "kl_divergence": ("kl_divergence", "KL divergence vs base"),
    "top1_agreement": ("top1_agreement", "Top-1 agreement with base"),
}
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Variant:
    """One built variant, as the store records it."""

    name: str
    spec: Mapping[str, Any]
    method: str
    bits: float | None
    format: str
    path: Path | None
    steps: list[dict[str, Any]]
    calibration: Mapping[str, Any] | None
    precision: Mapping[str, Any] | None

    @property
    def family(self) -> str:
        return format_family(self.format)

    @property
    def bits_label(self) -> str:
        return bits_label(self.bits, dict(self.precision) if self.precision else None)

    def spec_text(self) -> str:
        """The ``-v`` argument that builds it again (``rtn:int4,group_size=64``)."""
        if self.name == "base":
            return "base"
        text = str(self.spec.get("method") or self.name)
        if self.spec.get("preset"):
            text += f":{self.spec['preset']}"
        for key, value in (self.spec.get("options") or {}).items():
            text += f",{key}={value}"
        return text


@dataclass
class RunFacts:
    """What a run recorded, indexed for cards."""

    run: Mapping[str, Any]
    config: Mapping[str, Any]
    variants: list[Variant]
    rows: dict[tuple[str, str, str], Row] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> RunFacts:
        store = ResultsStore(run_dir)
        try:
            run = store.latest_run()
            if run is None:
                raise ResultsError(
                    f"{run_dir} holds no finished run", hint="run `quantforge quantize` first"
                )
            variants = [
                Variant(
                    name=v["name"],
                    spec=json.loads(v["spec"]),
                    method=v["method"] or v["name"],
                    bits=v["bits"],
                    format=v["format"],
                    path=Path(v["path"]) if v["path"] else None,
                    steps=v["steps"] or [],
                    calibration=v["calibration"],
                    precision=v["precision"],
                )
                for v in store.variants()
                if v["status"] == "ok"
            ]
            rows = {(m.variant, m.target, m.metric): m for m in store.measurements()}
        finally:
            store.close()
        return cls(run, json.loads(run["config"]), variants, rows)

    @property
    def base_name(self) -> str:
        """The base model's folder or repo name (``tiny-llama``), for repo names and titles."""
        return Path(str(self.config.get("model") or self.run["base_model"])).name

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        from quantforge.errors import UnknownNameError

        raise UnknownNameError("variant", name, [v.name for v in self.variants])

    def targets(self, kind: str) -> list[str]:
        """Targets with rows of ``kind`` (``measured`` or ``estimated``), in run order."""
        found = {t for (_, t, _), r in self.rows.items() if r.kind == kind}
        ordered = [t for t in self.config.get("targets", {}) if t in found]
        return ordered + sorted(found - set(ordered))

    def value(self, variant: str, target: str, metric: str) -> float | None:
        row = self.rows.get((variant, target, metric))
        return None if row is None else row.value

    def task_metrics(self) -> list[str]:
        """Metrics outside the standard columns (task scores from task evaluators)."""
        known = set(COLUMNS) | {"weights_mb"}
        return sorted({m for (_, _, m) in self.rows if m not in known}, key=column_order)

    def measuring_target(self, variant: str) -> str | None:
        """The measured target that scored this variant (for the family plot and index)."""
        for target in self.targets("measured"):
            if (
                self.value(variant, target, "kl_divergence") is not None
                or self.value(variant, target, "perplexity") is not None
            ):
                return target
        return None


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
        lines.append(
            f"**{target}** (measured on {hardware}): decode "
            f"{format_value('decode_tps', decode) if decode is not None else NOT_MEASURED} tok/s, "
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


@dataclass(frozen=True)
class CardOptions:
    """What a card needs beyond the store: names on the Hub and attribution."""

    base_model: str | None = None  # the base's Hub id; required for base_model metadata
    repo_ids: Mapping[str, str] = field(default_factory=dict)  # variant -> Hub repo id
    revisions: Mapping[str, str] = field(default_factory=dict)  # variant -> branch (branch layout)
    quantized_by: str | None = None
    license: str | None = None
    plot: str | None = PLOT_FILE


DEFAULT_REPO_SCHEME = "{base}-{method}-{bits}"


def repo_ids(facts: RunFacts, namespace: str, scheme: str = DEFAULT_REPO_SCHEME) -> dict[str, str]:
    """Hub repo id of every built variant (the base is not republished).

    ``scheme`` may use ``{base}`` (the base model's name), ``{method}``, ``{bits}``
    (``4bit``), ``{preset}`` and ``{variant}``. Two variants the scheme would name alike
    (the same method and bits, other options) fall back to ``{base}-{variant}``.
    """
    base = facts.base_name
    names: dict[str, str] = {}
    for v in facts.variants:
        if v.name == "base":
            continue
        bits = nominal_bits(v)
        fields = {
            "base": base,
            "method": v.spec.get("method") or v.name,
            "bits": f"{bits}bit" if bits is not None else "export",
            "preset": v.spec.get("preset") or "",
            "variant": v.name,
        }
        try:
            names[v.name] = scheme.format(**fields).strip("-")
        except (KeyError, IndexError) as exc:
            raise UsageError(
                f"repo naming scheme {scheme!r} uses an unknown field {exc}",
                hint="use {base}, {method}, {bits}, {preset} and {variant}",
            ) from None
    taken = list(names.values())
    for name, repo in names.items():
        if taken.count(repo) > 1:
            names[name] = f"{base}-{name}"
    ids = {name: f"{namespace}/{repo}" for name, repo in names.items()}
    for repo_id in ids.values():
        check_repo_id(repo_id, "a variant")
    return ids


def check_repo_id(repo_id: str, what: str) -> None:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or len(repo_id) > 96:
        raise UsageError(
            f"{repo_id!r} is not a valid Hub repo id for {what}",
            hint="use NAMESPACE/NAME with letters, digits, '-', '_' and '.'",
        )


def base_license(facts: RunFacts, base_model: str | None = None) -> str | None:
    """The license in the base model's own card: the local folder's ``README.md``, else
    the card of ``base_model`` on the Hub (``None`` when neither says)."""
    from huggingface_hub import ModelCard

    base = next((v for v in facts.variants if v.name == "base"), None)
    folder = base.path if base and base.path else Path(str(facts.run["base_model"]))
    readme = folder / "README.md"
    if readme.is_file():
        card = ModelCard.load(readme)
    elif base_model:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            card = ModelCard.load(base_model)
        except (HfHubHTTPError, OSError, ValueError):
            return None  # no card, or the Hub is out of reach: the card says "other"
    else:
        return None
    license_ = card.data.get("license")
    return str(license_) if license_ else None


def license_metadata(license_: str | None) -> dict[str, str]:
    """``license`` metadata; without a known license, the Hub's ``other`` plus a name."""
    if license_:
        return {"license": license_}
    return {"license": "other", "license_name": "same-as-base-model"}


def hub_metadata(facts: RunFacts, options: CardOptions, *, quantized: bool) -> dict[str, Any]:
    """License, base model (and its relation), and attribution, shared by every card."""
    metadata: dict[str, Any] = {
        "pipeline_tag": "text-generation",
        **license_metadata(options.license or base_license(facts, options.base_model)),
    }
    if options.base_model:
        check_repo_id(options.base_model, "the base model")
        metadata["base_model"] = options.base_model
        if quantized:
            metadata["base_model_relation"] = "quantized"
    if options.quantized_by:
        metadata["quantized_by"] = options.quantized_by
    return metadata


def variant_card(facts: RunFacts, name: str, options: CardOptions) -> Any:
    """The ``ModelCard`` of one variant."""
    from huggingface_hub import ModelCard, ModelCardData

    variant = facts.variant(name)
    base_id = options.base_model
    tags = ["quantforge", variant.family]
    if variant.spec.get("method"):
        tags.append(str(variant.spec["method"]))
    nominal = nominal_bits(variant)
    if nominal is not None:
        tags.append(f"{nominal}-bit")
    if variant.spec.get("preset"):
        tags.append(str(variant.spec["preset"]))
    metadata: dict[str, Any] = {
        "library_name": LIBRARY.get(variant.family, variant.family),
        "tags": sorted(set(tags), key=tags.index),
        **hub_metadata(facts, options, quantized=name != "base"),
    }
    results = eval_results(facts, name, dataset="quantforge-eval-text")
    model_id = options.repo_ids.get(name) or name
    data = ModelCardData(model_name=model_id, eval_results=results or None, **metadata)
    measured = facts.targets("measured")
    tables = [
        {"target": t, "rows": tradeoff_rows(facts, t, name)}
        for t in measured
        if facts.value(name, t, "size_mb") is not None
        or any(facts.value(name, t, m) is not None for m in CARD_METRICS)
    ]
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / "variant.md.j2"),
        title=model_id,
        variant=variant,
        base_ref=base_id or str(facts.run["base_model"]),
        base_linked=bool(base_id),
        steps=variant.steps,
        calibration=variant.calibration,
        mixed=mixed_precision(variant),
        group_fallback=group_fallback(variant),
        columns=[title(m) for m in (*CARD_METRICS, *facts.task_metrics())],
        tables=tables,
        not_measured=not tables,
        fits=fit_lines(facts, name),
        has_estimates=any(
            facts.value(name, t, "fits") is not None for t in facts.targets("estimated")
        ),
        plot=options.plot,
        # without a Hub id the snippet shows where the user's namespace goes
        usage=usage(
            variant,
            options.repo_ids.get(name) or f"<namespace>/{name}",
            options.revisions.get(name),
        ),
        provenance=provenance(facts, name),
        command=reproduce_command(facts, variant),
        siblings=[
            {
                "name": v.name,
                "url": hub_url(options.repo_ids.get(v.name), options.revisions.get(v.name)),
            }
            for v in facts.variants
            if v.name != name
        ],
    )


def family_card(facts: RunFacts, options: CardOptions, title: str) -> Any:
    """The overview card that lists every variant of the run."""
    from huggingface_hub import ModelCard, ModelCardData

    from quantforge.recommend import DEFAULT_CONSTRAINTS, recommend

    metadata = {
        "tags": ["quantforge", "quantized"],
        **hub_metadata(facts, options, quantized=False),
    }
    rows = []
    for v in facts.variants:
        target = facts.measuring_target(v.name) or "-"
        rows.append(
            {
                "name": v.name,
                "url": hub_url(options.repo_ids.get(v.name), options.revisions.get(v.name)),
                "method": v.method,
                "format": v.format,
                "bits": v.bits_label,
                "target": target,
                "cells": [_cell(facts, v.name, target, m) for m in SUMMARY_METRICS],
            }
        )
    return ModelCard.from_template(
        ModelCardData(**metadata),
        template_path=str(TEMPLATES / "family.md.j2"),
        title=title,
        base_ref=options.base_model or str(facts.run["base_model"]),
        rows=rows,
        columns=[COLUMNS[m][0] for m in SUMMARY_METRICS],
        estimates=[
            {
                "target": t,
                "lines": [(v.name, fit_lines_for(facts, v.name, t)) for v in facts.variants],
            }
            for t in facts.targets("estimated")
        ],
        plot=options.plot,
        run_id=facts.run["run_id"],
        recommend_rule=DEFAULT_CONSTRAINTS.describe(),
        recommendations=[r.line() for r in recommend(facts, DEFAULT_CONSTRAINTS)],
    )


def gguf_label(variant: Variant) -> str:
    """``Q4_K_M`` for a llama.cpp quantization, ``F16`` (the outtype) for a plain export."""
    qtype = (variant.precision or {}).get("type")
    if qtype:
        return str(qtype)
    for step in variant.steps:
        if step.get("output_format") == "gguf":
            return str((step.get("options") or {}).get("outtype", "f16")).upper()
    return variant.name


def gguf_card(
    facts: RunFacts, names: Sequence[str], files: Mapping[str, str], options: CardOptions, repo: str
) -> Any:
    """The card of a repo that holds several GGUF variants (``files``: variant -> file name)."""
    from huggingface_hub import ModelCard, ModelCardData

    variants = [facts.variant(n) for n in names]
    rows = []
    for v in variants:
        target = facts.measuring_target(v.name) or "-"
        rows.append(
            {
                "file": files[v.name],
                "type": gguf_label(v),
                "bits": v.bits_label,
                "target": target,
                "cells": [_cell(facts, v.name, target, m) for m in SUMMARY_METRICS],
            }
        )
    metadata = {
        "library_name": "gguf",
        "tags": ["quantforge", "gguf", *[gguf_label(v).lower() for v in variants]],
        **hub_metadata(facts, options, quantized=True),
    }
    config = facts.config
    command = " ".join(
        ["quantforge quantize", str(config.get("model"))]
        + [f"-v {v.spec_text()}" for v in variants]
        + ["--target llama.cpp"]
    )
    return ModelCard.from_template(
        ModelCardData(**metadata),
        template_path=str(TEMPLATES / "gguf.md.j2"),
        title=repo,
        base_ref=options.base_model or str(facts.run["base_model"]),
        base_linked=bool(options.base_model),
        rows=rows,
        columns=[COLUMNS[m][0] for m in SUMMARY_METRICS],
        plot=options.plot,
        repo=repo,
        run_id=facts.run["run_id"],
        command=command,
    )


def fit_lines_for(facts: RunFacts, variant: str, target: str) -> str:
    fits = facts.value(variant, target, "fits")
    if fits is None:
        return NOT_MEASURED
    speed = facts.value(variant, target, "est_decode_tps")
    return ("fits" if fits >= 1 else "does NOT fit") + (
        f", ~{format_value('est_decode_tps', speed)} tok/s" if speed is not None else ""
    )


def hub_url(repo_id: str | None, revision: str | None = None) -> str | None:
    if not repo_id:
        return None
    return f"https://huggingface.co/{repo_id}" + (f"/tree/{revision}" if revision else "")


def usage(variant: Variant, repo_id: str, revision: str | None = None) -> dict[str, str]:
    """Snippets for the runtime that runs this format (rendered by the template)."""
    gguf_type = str((variant.precision or {}).get("type", "")) or "F16"
    return {
        "family": variant.family,
        "repo": repo_id,
        "gguf_type": gguf_type,
        # extra arguments for from_pretrained / snapshot_download when the variant is a branch
        "rev": f', revision="{revision}"' if revision else "",
    }


def pareto_plot(facts: RunFacts, path: Path, highlight: str | None = None) -> Path | None:
    """Size vs KL (quality loss) of every scored variant, the Pareto front drawn; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for v in facts.variants:
        target = facts.measuring_target(v.name)
        if target is None:
            continue
        size = facts.value(v.name, target, "size_mb")
        kl = facts.value(v.name, target, "kl_divergence")
        if size is None or kl is None:
            continue
        points.append((v.name, size, max(kl, 1e-7)))
    if not points:
        return None
    front, best = [], float("inf")
    for _, size, kl in sorted(points, key=lambda p: (p[1], p[2])):
        if kl < best:
            front.append((size, kl))
            best = kl
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#999", lw=1)
    for name, size, kl in points:
        mine = name == highlight
        ax.scatter(size, kl, s=60 if mine else 28, color="#d62728" if mine else "#1f77b4", zorder=3)
        ax.annotate(name, (size, kl), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("KL divergence vs base (lower is better)")
    ax.set_title(f"{facts.base_name}: size vs quality (measured)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_variant_card(
    facts: RunFacts, name: str, folder: Path, options: CardOptions
) -> dict[str, Path]:
    """``README.md`` (and the plot, when ``options.plot``) of one variant into ``folder``;
    returns them by their path in the repo."""
    folder.mkdir(parents=True, exist_ok=True)
    plot = pareto_plot(facts, folder / PLOT_FILE, highlight=name) if options.plot else None
    variant_card(facts, name, _with_plot(options, plot)).save(folder / CARD_FILE)
    return {CARD_FILE: folder / CARD_FILE, **({PLOT_FILE: plot} if plot else {})}


def write_family_card(facts: RunFacts, folder: Path, options: CardOptions) -> dict[str, Path]:
    """The family card (and the plot) into ``folder``; returns them by their path in the repo."""
    folder.mkdir(parents=True, exist_ok=True)
    plot = pareto_plot(facts, folder / PLOT_FILE) if options.plot else None
    title = f"{options.base_model or facts.base_name}: quantized variants"
    family_card(facts, _with_plot(options, plot), title).save(folder / CARD_FILE)
    return {CARD_FILE: folder / CARD_FILE, **({PLOT_FILE: plot} if plot else {})}


def write_cards(
    facts: RunFacts, out: Path, options: CardOptions, variants: Sequence[str] | None = None
) -> list[Path]:
    """Write ``out/<variant>/README.md`` (+ the plot) per variant and ``out/README.md``."""
    names = list(variants) if variants else [v.name for v in facts.variants]
    for name in names:
        facts.variant(name)  # unknown names fail before anything is written
    written = [write_variant_card(facts, n, out / n, options)[CARD_FILE] for n in names]
    return [*written, write_family_card(facts, out, options)[CARD_FILE]]


def _with_plot(options: CardOptions, plot: Path | None) -> CardOptions:
    from dataclasses import replace

    return replace(options, plot=plot.name if plot else None)


def check_card_libraries(
    owner: str, libraries: Sequence[str] = CARD_LIBRARIES, extra: str = "cards"
) -> None:
    """Refuse, naming the extra, when a library cards (or what builds on them, such as
    the Space) need is not installed."""
    import importlib.util

    from quantforge.errors import MissingDependencyError

    missing = [m for m in libraries if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(owner, missing, extra)
