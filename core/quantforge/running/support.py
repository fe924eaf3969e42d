"""Which methods and runtimes can process a model: the checks preflight runs, before compute.

Preflight asks :func:`refusal` of each variant and runs the ones that pass;
``quantforge methods --model PATH`` asks it of every method's presets, so a user learns
what supports their model before spending compute on it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantforge.errors import MissingDependencyError, QuantforgeError, UnsupportedModelError
from quantforge.interfaces import Quantizer, Step, expert_count
from quantforge.plugins.manager import Plugins
from quantforge.running.planner import VariantPlan, VariantSpec, plan_variant


def refusal(
    plugins: Plugins, plan: VariantPlan, config: Mapping[str, Any], model: Path | None = None
) -> str | None:
    """Why a step of ``plan`` cannot process a model with this ``config.json`` (and, given its
    folder ``model``, these files), or ``None``.

    Raises what is not about the model: a missing package, options that are wrong.
    """
    try:
        for i, step in enumerate(plan.steps):
            method = plugins.methods.get(step.method)
            method.check_available()
            _check_experts(method, config)
            method.check_model(step.options, config)
            if i == 0 and model is not None:
                method.check_files(step.options, model)
    except UnsupportedModelError as exc:
        return str(exc)
    return None


def _check_experts(method: Step, config: Mapping[str, Any]) -> None:
    experts = expert_count(config)
    if experts and isinstance(method, Quantizer) and not method.quantizes_experts:
        raise UnsupportedModelError(
            f"{method.name} quantizes nn.Linear layers, and this mixture-of-experts model keeps "
            f"its {experts} experts per layer as fused 3-D weights, which it would leave at "
            "full precision",
            hint="use a method that quantizes experts: llamacpp or gptq",
        )


@dataclass(frozen=True)
class Support:
    """One variant's support for a model.

    :ivar status: ``"supported"``, ``"refused"`` (the model is what it cannot process),
        ``"missing"`` (a package is not installed) or ``"error"`` (another check failed).
    :ivar runs_on: measured targets that run its format.
    """

    variant: str
    format: str
    runs_on: tuple[str, ...]
    status: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "format": self.format,
            "runs_on": list(self.runs_on),
            "status": self.status,
            "reason": self.reason,
        }


def read_config(model: Path) -> dict[str, Any]:
    """``config.json`` of a local model folder, refused in one line when it is not one."""
    from quantforge.errors import ModelSourceError

    file = model / "config.json"
    if not file.is_file():
        raise ModelSourceError(
            f"{str(model)!r} is not a model folder (no config.json)",
            hint="pass the folder that holds config.json and the weights",
        )
    try:
        return dict(json.loads(file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {file}: {exc}") from None


def model_support(
    plugins: Plugins, config: Mapping[str, Any], model: Path | None = None
) -> list[Support]:
    """Every registered method's presets (or its defaults) checked against ``config`` (and the
    files of the folder ``model``)."""
    rows = []
    measured = [t for t in plugins.targets if t.measured]
    for method in sorted(plugins.methods, key=lambda m: m.name):
        presets: list[str | None] = [*sorted(method.options.presets)] or [None]
        for preset in presets:
            name = f"{method.name}:{preset}" if preset else method.name
            spec = VariantSpec(name, method.name, preset)
            try:
                plan = plan_variant(plugins, spec, "support", calibration="support")
            except QuantforgeError as exc:
                rows.append(Support(name, method.output_format, (), "error", str(exc)))
                continue
            runs_on = tuple(t.name for t in measured if t.runs(plan.format))
            try:
                why = refusal(plugins, plan, config, model)
            except MissingDependencyError as exc:
                rows.append(Support(name, plan.format, runs_on, "missing", str(exc)))
                continue
            except QuantforgeError as exc:
                rows.append(Support(name, plan.format, runs_on, "error", str(exc)))
                continue
            status = "supported" if why is None else "refused"
            rows.append(Support(name, plan.format, runs_on, status, why or ""))
    return rows
