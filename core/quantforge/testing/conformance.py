"""Conformance checks a plugin's own test suite runs against what it registers.

Each check drives the object exactly as the host does (in-process here, for
easy debugging) on a tiny model, and raises ``AssertionError`` with a reason.

    from quantforge.testing import build_tiny_model, check_quantizer
    def test_my_quantizer(tmp_path):
        check_quantizer(MyQuantizer(), build_tiny_model(), tmp_path)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantforge.interfaces import (
    Artifact,
    CalibrationSet,
    Component,
    EvalContext,
    Evaluator,
    Exporter,
    Measurement,
    Quantizer,
    Runtime,
    StepContext,
    Target,
)
from quantforge.model.artifacts import write_manifest
from quantforge.options import OptionValue

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def check_declarations(obj: Component) -> None:
    """Name, description, options with valid defaults and presets, optional packages."""
    assert isinstance(getattr(obj, "name", None), str) and _NAME.match(obj.name), (
        f"{type(obj).__name__}.name must be lower-case letters, digits, '.', '_' or '-'"
    )
    assert obj.description, f"{obj.name}: give a one-line description"
    assert all(isinstance(p, str) and p for p in obj.requires), (
        f"{obj.name}: requires holds import names"
    )
    names = obj.options.names()
    assert len(names) == len(set(names)), f"{obj.name}: duplicate option names"
    for option in obj.options.options:
        assert option.help, f"{obj.name}: option {option.name} needs help text"
        if option.default is not None:
            option.coerce(obj.name, option.default)
    if all(o.default is not None for o in obj.options.options):
        obj.options.resolve(obj.name, {})
    for preset in obj.options.presets:
        obj.options.resolve(obj.name, {}, preset)
    if isinstance(obj, Quantizer | Exporter):
        assert obj.output_format and obj.output_format != obj.input_format, (
            f"{obj.name}: output_format must differ from input_format"
        )


def _step(
    obj: Quantizer | Exporter,
    model_dir: Path,
    out: Path,
    options: Mapping[str, Any] | None,
    preset: str | None,
    calibration: CalibrationSet | None,
) -> Artifact:
    check_declarations(obj)
    obj.check_available()
    resolved = obj.options.resolve(obj.name, options or {}, preset)
    out.mkdir(parents=True, exist_ok=False)
    if isinstance(obj, Quantizer) and obj.needs_calibration and calibration is None:
        calibration = tiny_calibration(model_dir)
    context = StepContext(calibration=calibration, log=lambda _m: None)
    source = Artifact(model_dir, obj.input_format, {})
    if isinstance(obj, Quantizer):
        obj.quantize(source, resolved, out, context)
        bits = obj.bits(resolved)
        assert bits is None or 0 < bits <= 32, f"{obj.name}: bits() gave {bits}"
    else:
        obj.export(source, resolved, out, context)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files, f"{obj.name} wrote nothing into its output folder"
    write_manifest(
        out,
        {"format": obj.output_format, "steps": [{"method": obj.name, "options": dict(resolved)}]},
    )
    return Artifact(out, obj.output_format, {})


def check_quantizer(
    quantizer: Quantizer,
    model_dir: Path,
    tmp_path: Path,
    *,
    options: Mapping[str, Any] | None = None,
    preset: str | None = None,
    target: Target | None = None,
    calibration: CalibrationSet | None = None,
) -> Artifact:
    """Quantize the tiny model; with ``target``, also load and run the result.

    A quantizer that calibrates gets :func:`tiny_calibration` unless ``calibration`` is given.
    """
    artifact = _step(
        quantizer, model_dir, tmp_path / f"{quantizer.name}-out", options, preset, calibration
    )
    if target is not None:
        check_target(target, artifact, loader=quantizer.load_model)
    return artifact


def tiny_calibration(model_dir: Path, samples: int = 16, seq_len: int = 128) -> CalibrationSet:
    """Calibration rows from the tiny model's training-distribution text, tokenized with its tokenizer."""
    from transformers import AutoTokenizer

    from quantforge.model.calibration import CalibrationSpec, make_rows
    from quantforge.model.texts import stdlib_calibration_text as calibration_text

    spec = CalibrationSpec(source="builtin:stdlib", samples=samples, seq_len=seq_len)
    ids = AutoTokenizer.from_pretrained(model_dir)(calibration_text(samples * seq_len * 8))[
        "input_ids"
    ]
    return CalibrationSet(make_rows([ids], spec), "builtin:stdlib", spec.describe())


def check_exporter(
    exporter: Exporter,
    model_dir: Path,
    tmp_path: Path,
    *,
    options: Mapping[str, Any] | None = None,
    target: Target | None = None,
) -> Artifact:
    """Export the tiny model; with ``target``, also load and run the result."""
    artifact = _step(exporter, model_dir, tmp_path / f"{exporter.name}-out", options, None, None)
    if target is not None:
        check_target(target, artifact)
    return artifact


def check_target(
    target: Target,
    artifact: Artifact,
    *,
    options: Mapping[str, OptionValue] | None = None,
    loader: Any = None,
    token_ids: list[int] | None = None,
) -> Runtime:
    """Load ``artifact``; logits must be ``[T, vocab]`` and finite; generation must be timed."""
    check_declarations(target)
    assert target.formats, f"{target.name}: declare the format families it runs"
    assert target.runs(artifact.format), f"{target.name} does not run {artifact.format}"
    assert target.hardware(), f"{target.name}: hardware() must describe the device"
    resolved = target.options.resolve(target.name, options or {})
    runtime = target.load(artifact, resolved, loader or (lambda _a: None))
    ids = token_ids or [1, 17, 42, 99, 7, 256, 3, 12]
    logits = runtime.logits(ids)
    assert tuple(logits.shape)[0] == len(ids), (
        f"{target.name}: logits must have one row per input token"
    )
    assert bool(logits.isfinite().all()), f"{target.name}: logits are not finite"
    timing = runtime.generate(ids, 4)
    assert timing.prompt_tokens == len(ids) and timing.new_tokens >= 1
    assert timing.prefill_seconds > 0 and timing.decode_seconds > 0, "generation must be timed"
    return runtime


def check_evaluator(
    evaluator: Evaluator,
    artifact: Artifact,
    runtime: Runtime | None,
    context: EvalContext,
    *,
    options: Mapping[str, Any] | None = None,
    reference_dir: Path | None = None,
) -> list[Measurement]:
    """Run the evaluator (and its reference step on ``runtime`` when it needs one)."""
    check_declarations(evaluator)
    resolved = evaluator.options.resolve(evaluator.name, options or {})
    if evaluator.needs_reference:
        assert runtime is not None and reference_dir is not None, (
            "pass a runtime and a reference_dir"
        )
        reference_dir.mkdir(parents=True, exist_ok=True)
        evaluator.prepare_reference(runtime, resolved, context, reference_dir)
        context.reference_dir = reference_dir
    measurements = evaluator.evaluate(
        artifact, runtime if evaluator.needs_runtime else None, resolved, context
    )
    assert measurements, f"{evaluator.name} returned no measurements"
    for m in measurements:
        assert isinstance(m, Measurement), f"{evaluator.name} must return Measurement objects"
        assert m.metric and isinstance(m.value, float | int) and math.isfinite(m.value), (
            f"{evaluator.name}: {m.metric}={m.value!r} is not a finite number"
        )
        assert m.better in ("higher", "lower", "none"), f"{evaluator.name}: better={m.better!r}"
    return measurements
