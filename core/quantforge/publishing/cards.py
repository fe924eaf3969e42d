"""Hugging Face model cards from the results store: one per variant, and one for the family.

Cards are built with huggingface_hub's ``ModelCard``, ``ModelCardData`` and
``EvalResult`` from the Jinja templates in ``model_cards/templates`` (installed with the
package as ``quantforge/publishing/card_templates``). Every number in a card is read from the
results store (:mod:`quantforge.publishing.card_data`); a value the store does not hold is
written "not measured".
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantforge.publishing.card_data import (
    CARD_METRICS,
    SUMMARY_METRICS,
    _cell,
    eval_results,
    fit_lines,
    fit_lines_for,
    gguf_label,
    group_fallback,
    mixed_precision,
    nominal_bits,
    provenance,
    reproduce_command,
    tradeoff_rows,
)
from quantforge.publishing.plot import PLOT_FILE, pareto_plot
from quantforge.publishing.repo_names import (
    base_license,
    check_repo_id,
    hub_url,
    license_metadata,
)
from quantforge.store.facts import RunFacts, Variant
from quantforge.store.table import COLUMNS, title

if TYPE_CHECKING:
    from quantforge.interfaces import Exporter, Quantizer, Step
    from quantforge.plugins.registry import Registry

    Method = Quantizer | Exporter

TEMPLATES = Path(__file__).parent / "card_templates"


CARD_FILE = "README.md"


CARD_LIBRARIES = ("huggingface_hub", "jinja2", "matplotlib")


LIBRARY = {"hf": "transformers", "gguf": "gguf", "onnx": "onnx", "openvino": "openvino"}


@dataclass(frozen=True)
class CardOptions:
    """What a card needs beyond the store: names on the Hub and attribution."""

    base_model: str | None = None  # the base's Hub id; required for base_model metadata
    repo_ids: Mapping[str, str] = field(default_factory=dict)  # variant -> Hub repo id
    revisions: Mapping[str, str] = field(default_factory=dict)  # variant -> branch (branch layout)
    quantized_by: str | None = None
    license: str | None = None
    plot: str | None = PLOT_FILE


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
    step = producing_step(variant)
    library = (step.card_library if step else None) or LIBRARY.get(variant.family, variant.family)
    tags = ["quantforge", variant.family, *([library] if step and step.card_library else [])]
    if variant.spec.get("method"):
        tags.append(str(variant.spec["method"]))
    nominal = nominal_bits(variant)
    if nominal is not None:
        tags.append(f"{nominal}-bit")
    if variant.spec.get("preset"):
        tags.append(str(variant.spec["preset"]))
    metadata: dict[str, Any] = {
        "library_name": library,
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
            step,
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

    from quantforge.choosing.recommend import DEFAULT_CONSTRAINTS, recommend

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


def producing_step(variant: Variant) -> Step | None:
    """The installed plugin step that made ``variant`` last (``None`` for the base, or when
    its plugin is not installed here): it may write the card's usage and library name."""
    method = variant.steps[-1].get("method") if variant.steps else None
    if not isinstance(method, str):
        return None
    methods = _installed_methods()
    return methods.get(method) if method in methods else None


@functools.cache
def _installed_methods() -> Registry[Method]:
    from quantforge.plugins.manager import load_plugins

    return load_plugins().methods


def usage(
    variant: Variant, repo_id: str, revision: str | None = None, step: Step | None = None
) -> dict[str, str]:
    """Snippets for the runtime that runs this format (rendered by the template); the
    producing step's own Markdown when it writes one (:meth:`Step.card_usage`)."""
    gguf_type = str((variant.precision or {}).get("type", "")) or "F16"
    return {
        "family": variant.family,
        "repo": repo_id,
        "gguf_type": gguf_type,
        # extra arguments for from_pretrained / snapshot_download when the variant is a branch
        "rev": f', revision="{revision}"' if revision else "",
        "custom": (step.card_usage(repo_id, revision) if step else None) or "",
    }


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
