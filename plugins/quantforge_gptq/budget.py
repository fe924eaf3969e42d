"""GPTQ to a budget: each linear layer's bits (4, 8, or left in float) chosen from measured
sensitivities by the host's knapsack (:mod:`quantforge.choosing.budget`), then built by
GPTQModel through its per-module ``dynamic`` overrides.

The sensitivities are of GPTQ's own weights, not a proxy: GPTQModel quantizes the model
once at 4 and once at 8 bits; each layer of the float base is then replaced, alone, by that
layer's dequantized GPTQ weights, and the KL divergence from the base is measured on the
calibration tokens. The table is kept in the cache (``gptq-sensitivity/``), so a second
budget on the same base and calibration costs one GPTQ run.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from quantforge.choosing.allocation import Choice, Sensitivity
from quantforge.choosing.budget import (
    BUDGET_KEYS,
    FLOAT,
    layer_rules,
    sensitivity_file,
    solve,
    summary,
)
from quantforge.choosing.sensitivity import KLProbe, cut_rows
from quantforge.interfaces import StepContext
from quantforge.model.artifacts import safetensors_nbytes, safetensors_shapes
from quantforge.options import OptionValue

WIDTHS = (4, 8)
PACKED = ("qweight", "qzeros", "scales", "g_idx", "bias")  # what a GPTQ layer stores


def _dequantized(build: Path) -> dict[str, Any]:
    """Each GPTQ layer of ``build`` as the float weight it computes with (``[out, in]``)."""
    from transformers import AutoModelForCausalLM

    from quantforge_gptq.support import load_mixed_precision

    # per-layer group sizes (the fallbacks) are a GPTQModel ``dynamic``: its loader reads them
    model = load_mixed_precision(build) or AutoModelForCausalLM.from_pretrained(
        build, device_map="cpu"
    )
    return {
        name: module.dequantize_weight().T.contiguous()
        for name, module in model.named_modules()
        if hasattr(module, "qweight") and hasattr(module, "dequantize_weight")
    }


def _layer_bytes(build: Path, layers: set[str]) -> dict[str, int]:
    sizes = safetensors_nbytes(build)
    return {name: sum(sizes.get(f"{name}.{part}", 0) for part in PACKED) for name in sorted(layers)}


def _measure(
    source: Path,
    builds: Mapping[int, Path],
    rows: list[list[int]],
    progress: Callable[[int, int], None],
) -> Sensitivity:
    """Every GPTQ layer's bytes and KL at each width of ``builds`` and in float, alone."""
    import torch
    from transformers import AutoModelForCausalLM

    weights = {bits: _dequantized(path) for bits, path in builds.items()}
    layers = set.intersection(*(set(w) for w in weights.values()))
    sizes = {bits: _layer_bytes(path, layers) for bits, path in builds.items()}
    widest = max(builds)
    stored = safetensors_nbytes(builds[widest])
    shapes = safetensors_shapes(builds[widest])
    # a layer left in float is stored like the float tensors GPTQModel writes
    element = next(
        stored[n] // max(1, math.prod(shapes[n]))
        for n in sorted(stored)
        if n.endswith(".weight") and len(shapes[n]) == 2
    )
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.eval()
    probe = KLProbe(model, rows)
    params = dict(model.named_parameters())

    def candidates(name: str) -> Iterator[tuple[str, int, Any]]:
        yield FLOAT, params[f"{name}.weight"].numel() * element, None
        for bits in sorted(builds):
            yield str(bits), sizes[bits][name], weights[bits][name]

    choices: dict[str, list[Choice]] = {}
    for done, name in enumerate(sorted(layers)):
        choices[name] = probe.choices(f"{name}.weight", candidates(name))
        progress(done + 1, len(layers))
    tensor_bytes = sum(stored.values())
    decided = sum(sizes[widest].values())
    overhead = sum(p.stat().st_size for p in builds[widest].iterdir() if p.is_file())
    base = safetensors_shapes(source)
    return Sensitivity(
        choices,
        fixed_bytes=tensor_bytes - decided,
        params=sum(math.prod(s) for s in base.values()),
        overhead_bytes=overhead - tensor_bytes + 4096,  # 4 KB: quantforge.json, the report
    )


def build_to_budget(
    source: Path,
    output: Path,
    options: Mapping[str, OptionValue],
    context: StepContext,
) -> None:
    """Measure (or read from the cache) the sensitivities, choose the bits per layer, and let
    GPTQModel build the mix into ``output``."""
    from quantforge_gptq.support import gptqmodel_version, run_gptqmodel

    assert context.calibration is not None
    uniform = {**options, **dict.fromkeys(BUDGET_KEYS, 0.0)}
    rows = cut_rows(context.calibration.samples, int(str(options["tokens"])))

    keys = ("group_size", "act_order", "symmetric", "damp", "tokens")
    cached = sensitivity_file(
        "gptq-sensitivity",
        [gptqmodel_version(), {k: str(options[k]) for k in keys}, context.calibration.samples],
        weights=source,
    )
    sens = Sensitivity.load(cached)
    if sens is not None:
        context.log(f"gptq: sensitivities from {cached}")
    else:
        with tempfile.TemporaryDirectory(prefix="gptq-widths-", dir=output.parent) as tmp:
            builds = {}
            for bits in WIDTHS:
                context.log(f"gptq: quantizing every layer at {bits} bits, to measure them")
                builds[bits] = Path(tmp) / f"int{bits}"
                builds[bits].mkdir()
                run_gptqmodel("gptq", source, builds[bits], {**uniform, "bits": bits}, context)
            context.log(f"gptq: measuring each layer alone on {sum(map(len, rows))} tokens")
            sens = _measure(
                source, builds, rows, lambda done, total: context.progress(done, total, "layers")
            )
        sens.save(cached)
    chosen, budget = solve("gptq", sens, options)
    report = summary(sens, chosen, budget, sum(map(len, rows)))
    context.log(f"gptq: {budget}: layers per width {report['chosen']}")
    run_gptqmodel(
        "gptq", source, output, {**uniform, "bits": 4}, context, layer_rules(chosen), report
    )
