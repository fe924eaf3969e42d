"""NNCF weight compression of an OpenVINO IR, and what it left in the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantforge_openvino.convert import MODEL_XML

# bits of the element types NNCF stores compressed weights in
_ELEMENT_BITS = {"u8": 8, "i8": 8, "u4": 4, "i4": 4, "nf4": 4, "f4e2m1": 4, "f8e4m3": 8}


def compress(
    source: Path,
    output: Path,
    *,
    mode: str,
    group_size: int,
    ratio: float,
    all_layers: bool,
    awq: bool,
    scale_estimation: bool,
    gptq: bool,
    samples: list[list[int]] | None,
    adjust_group_size: bool = False,
) -> dict[str, Any]:
    """Compress the IR in ``source`` with ``nncf.compress_weights`` into ``output``.

    ``samples`` (token-id rows) become the NNCF dataset that AWQ, scale estimation and
    GPTQ read; each row is one stateful inference from an empty cache.
    """
    import nncf
    import numpy as np
    import openvino as ov

    model = ov.Core().read_model(source / MODEL_XML)
    kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode(mode)}
    if mode.startswith("int8"):
        pass  # per-channel, every layer: NNCF takes no ratio or group size for 8 bits
    else:
        kwargs.update(ratio=ratio, group_size=group_size, all_layers=all_layers)
        if adjust_group_size:
            # a default group size that does not divide a weight's width falls back to the
            # largest power of two that does (down to 16), as the other quantizers do
            kwargs["advanced_parameters"] = nncf.AdvancedCompressionParameters(
                group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST,
                min_adjusted_group_size=16,
            )
    if samples:
        rows = [np.asarray([row], dtype=np.int64) for row in samples]
        kwargs["dataset"] = nncf.Dataset(
            [{"input_ids": r, "attention_mask": np.ones_like(r)} for r in rows]
        )
        kwargs.update(awq=awq, scale_estimation=scale_estimation, gptq=gptq, subset_size=len(rows))
    compressed = nncf.compress_weights(model, **kwargs)
    ov.save_model(compressed, output / MODEL_XML, compress_to_fp16=False)
    report = weight_precisions(compressed)
    if not mode.startswith("int8") and group_size > 0:
        fallbacks = {k: g for k, g in report.pop("groups").items() if g != group_size}
        if fallbacks:
            report["group_sizes"] = fallbacks
    else:
        report.pop("groups")
    return report


def weight_precisions(model: Any) -> dict[str, Any]:
    """Bits of each compressed weight constant, and a count per element type."""
    modules: dict[str, float | str] = {}
    groups: dict[str, int] = {}
    counts: dict[str, int] = {}
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        element = op.get_element_type().get_type_name()
        shape = op.get_output_partial_shape(0)
        # weights are [out, in] or [out, groups, group_size]; zero points end in 1
        if element not in _ELEMENT_BITS or len(shape) < 2 or shape[-1].get_length() == 1:
            continue
        modules[op.get_friendly_name()] = float(_ELEMENT_BITS[element])
        if len(shape) == 3:  # grouped: [out, groups, group_size]
            groups[op.get_friendly_name()] = shape[-1].get_length()
        counts[element] = counts.get(element, 0) + 1
    return {"modules": modules, "element_types": counts, "groups": groups}
