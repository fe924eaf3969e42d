"""Preflight: everything about a run that can be checked without compute (plugins, options,
the model folder and what it ships, data files, group sizes, contexts), checked before
the first step; what a method cannot do for this model is refused here, with why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.devices.footprint import footprint_from_config
from quantforge.devices.profiles import DeviceProfile
from quantforge.errors import RecipeError, UnsupportedModelError, UsageError
from quantforge.interfaces import Evaluator, Target, check_group_size
from quantforge.model.calibration import CalibrationSpec
from quantforge.model.calibration import fingerprint as calibration_fingerprint
from quantforge.model.checks import check_shipped_code
from quantforge.model.source import BaseModel, resolve_model
from quantforge.plugins.manager import Plugins
from quantforge.running.builtin_texts import builtin_calibration, builtin_eval_text
from quantforge.running.cache_keys import digest
from quantforge.running.planner import VariantPlan, needs_calibration, plan_variant
from quantforge.running.recipe import RunConfig
from quantforge.running.support import read_config, refusal


@dataclass
class Preflight:
    """What preflight resolved: the base, each variant's plan, targets and evaluators."""

    base: BaseModel
    plans: list[VariantPlan]
    targets: dict[str, tuple[Target, dict[str, Any]]]
    evaluators: list[tuple[Evaluator, dict[str, Any], str]]  # object, options, version
    eval_text: Path
    not_runnable: dict[tuple[str, str], str] = field(default_factory=dict)
    calibration: str | None = None  # fingerprint, when a step calibrates
    eval_source: str = ""  # what the evaluation text is, in words (cards name it)
    calibration_spec: CalibrationSpec | None = None  # the user's, or the built-in text
    # variants a step cannot process this model for (architecture, shapes), with the reason;
    # the others run
    refused: list[tuple[VariantPlan, str]] = field(default_factory=list)
    # things the user should know that do not stop the run (shipped code that is ignored)
    notes: list[str] = field(default_factory=list)


def _check_text_file(path: Path, what: str) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} file {str(path)!r}: {exc}") from None
    if not text.strip():
        raise UsageError(f"{what} file {str(path)!r} is empty")


def _version_of(plugins: Plugins, registry_plugin: str, impl_version: str) -> str:
    return f"{plugins.infos[registry_plugin].version or '0'}/{impl_version}"


def preflight(config: RunConfig, plugins: Plugins, cache_dir: Path) -> Preflight:
    """Validate the whole run before any compute. Raises :class:`QuantforgeError`."""
    targets: dict[str, tuple[Target, dict[str, Any]]] = {}
    for name, given in config.targets.items():
        target = plugins.targets.get(name)
        options = target.options.resolve(f"target {name}", given)
        if target.measured:
            target.check_available()
        targets[name] = (target, options)
    if not targets:
        raise RecipeError("no targets to measure on", hint='add targets = ["cpu"]')
    chosen = config.evaluators
    if chosen is None:
        chosen = {n: {} for n in plugins.evaluators.names() if plugins.evaluators.get(n).by_default}
    evaluators = []
    for name, given in chosen.items():
        evaluator = plugins.evaluators.get(name)
        evaluator.check_available()
        version = _version_of(plugins, plugins.evaluators.plugin_of(name), evaluator.version)
        options = evaluator.options.resolve(f"evaluator {name}", given)
        inputs = evaluator.check_inputs(options)
        if inputs:
            version = f"{version}; inputs {inputs}"
        evaluators.append((evaluator, options, version))
    base = resolve_model(config.model, config.revision, cache_dir, allow_pickle=config.allow_pickle)
    model_config = read_config(base.path)
    shipped = check_shipped_code(base.path, model_config)
    notes = [shipped] if shipped else []
    if config.eval_text is not None:
        eval_text, eval_source = config.eval_text, f"the file {config.eval_text.name}"
    else:
        eval_text, eval_source = builtin_eval_text(cache_dir, base.path)
    _check_text_file(eval_text, "evaluation text")
    base_key = digest("base", base.identity)
    calibration = None
    calibration_spec = None
    if any(needs_calibration(plugins, s) for s in config.variants):
        calibration_spec = config.calibration or builtin_calibration(cache_dir, base.path)
        calibration = calibration_fingerprint(calibration_spec)
    plans = [
        plan_variant(
            plugins, spec, base_key, calibration=calibration, allow_pickle=config.allow_pickle
        )
        for spec in config.variants
    ]
    refused = []
    for plan in plans:
        why = refusal(plugins, plan, model_config, base.path)
        if why is not None:
            refused.append((plan, why))
            continue
        _check_chosen_group_size(plugins, plan, model_config)
    asked = [p for p in plans if p.steps or p.path is not None]  # not base: always there
    if refused and len(refused) == len(asked):
        raise UnsupportedModelError(
            ("" if len(refused) == 1 else "every variant was refused: ")
            + "; ".join(f"{p.spec.name}: {why}" for p, why in refused)
        )
    plans = [p for p in plans if all(p is not r for r, _ in refused)]
    _check_contexts(config, targets, model_config)
    not_runnable = {}
    for plan in plans:
        for name, (target, _) in targets.items():
            if not target.runs(plan.format):
                not_runnable[(plan.spec.name, name)] = f"{name} does not run {plan.format} models"
    return Preflight(
        base,
        plans,
        targets,
        evaluators,
        eval_text,
        not_runnable,
        calibration,
        eval_source,
        calibration_spec,
        refused,
        notes,
    )


def _check_chosen_group_size(
    plugins: Plugins, plan: VariantPlan, model_config: Mapping[str, Any]
) -> None:
    """A ``group_size`` the user wrote must divide every width of the model; a method's
    default may fall back per weight instead (and records it in its precision file)."""
    if "group_size" not in plan.spec.options or not plan.steps:
        return
    step = plan.steps[-1]
    try:
        size = int(str(step.options.get("group_size")))
    except ValueError:
        return
    method = plugins.methods.get(step.method)
    option = next((o for o in method.options.options if o.name == "group_size"), None)
    choices = (
        [int(c) for c in option.choices if isinstance(c, int)]
        if option is not None and option.choices
        else None
    )
    check_group_size(
        step.method, size, model_config, choices, falls_back=method.group_size_fallback
    )


def _check_contexts(
    config: RunConfig,
    targets: dict[str, tuple[Target, dict[str, Any]]],
    model_config: dict[str, Any],
) -> None:
    """Device profiles check fit at a context length: the option's default, or the model's
    maximum when that is shorter; a longer one asked for is refused before any compute."""
    base = footprint_from_config("base", "hf", 0, model_config)
    longest = base.max_context
    for name, (target, options) in targets.items():
        if not isinstance(target, DeviceProfile) or not longest:
            continue
        if "context" not in config.targets[name]:
            options["context"] = base.default_context(int(options["context"]))
        elif int(options["context"]) > longest:
            raise UsageError(
                f"target {name}: context {options['context']} is longer than the model "
                f"supports ({longest} tokens, max_position_embeddings)",
                hint=f"set context = {longest} or less for {name}",
            )
