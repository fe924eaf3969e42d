"""GPTQModel glue: environment, supported architectures, mixed precision, the quantize call."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantforge.choosing.budget import given_budget
from quantforge.errors import UsageError
from quantforge.interfaces import StepContext, fitting_group_size
from quantforge.layer_progress import blocks_progress
from quantforge.model.artifacts import PRECISION_FILE, copy_tokenizer_files, safetensors_shapes
from quantforge.model.overrides import Rule, bits_for
from quantforge.model.overrides import parse_overrides as parse_rules
from quantforge.options import OptionValue


def prepare_environment() -> None:
    """GPTQModel sizes its CPU worker pools from this; on <= 2 cores it must be >= 2."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))


@functools.cache
def gptqmodel_architectures() -> frozenset[str] | None:
    """``model_type`` keys of GPTQModel's model table, read from its source without importing it
    (importing GPTQModel imports torch, too slow for a preflight check)."""
    spec = importlib.util.find_spec("gptqmodel")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "auto.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "MODEL_MAP" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return frozenset(
                k.value
                for k in node.value.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            )
    return None


# Families in GPTQModel's table that its GPTQ or AWQ fails on in the installed release on
# CPU, as tests/test_families.py found them (the whole matrix: QUANTFORGE_FAMILIES=all)
LOADS_LM_HEAD = "it looks for GPT-NeoX's untied output layer (embed_out) as lm_head"
FAILS = {
    ("awq", "gemma2"): "its scale search runs Gemma 2's eager attention on a longer batch "
    "than the attention mask it captured",
    ("awq", "gemma3_text"): "its scale search calls Gemma 3's rotary embedding without the "
    "layer type",
    ("awq", "phi3"): "it cannot pack Phi-3's fused qkv_proj and gate_up_proj (KeyError 'q_zeros')",
    ("gptq", "phi3"): "the quantized model's CPU kernels index out of bounds on Phi-3's fused "
    "projections (IndexError, or an abort)",
    ("gptq", "gpt_neox"): LOADS_LM_HEAD,
    ("awq", "gpt_neox"): LOADS_LM_HEAD,
}


def gptqmodel_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gptqmodel")
    except PackageNotFoundError:
        return "(not installed)"


def parse_overrides(method: str, text: str) -> list[Rule]:
    return parse_rules(method, text, (2, 3, 4, 8))


def _dynamic(
    rules: list[Rule], fallbacks: Mapping[str, int] | None = None
) -> dict[str, dict[str, Any]] | None:
    """GPTQModel's ``dynamic`` overrides: ``-:regex`` skips a module, ``+:regex`` changes its
    bits or group size. GPTQModel applies the first pattern that matches a module, so the
    per-layer group-size fallbacks come first, each carrying the bits the rules give it."""
    settings: dict[str, dict[str, Any]] = {}
    for name, group in (fallbacks or {}).items():
        bits = bits_for(name, rules, 0)
        if bits is not None:  # a skipped module is handled by the rule's "-:" entry below
            settings[name] = {"group_size": group, **({"bits": bits} if bits else {})}
    dynamic = {f"+:{pattern}": value for pattern, value in _patterns(settings).items()}
    for pattern, rule_bits in rules:
        regex = f".*{pattern}.*" if not pattern.startswith("^") else pattern
        if rule_bits is None:
            dynamic[f"-:{regex}"] = {}
        else:  # a fallback entry of the same pattern already carries these bits
            dynamic.setdefault(f"+:{regex}", {"bits": rule_bits})
    return dynamic or None


def _patterns(settings: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{module: settings}`` -> anchored regexes: one per block-independent name
    (``model\\.layers\\.\\d+\\.self_attn\\.q_proj``) where every block has the same settings,
    else one per module."""
    by_shape: dict[str, dict[str, dict[str, Any]]] = {}
    for name, value in settings.items():
        by_shape.setdefault(re.sub(r"\.\d+\.", ".#.", name), {})[name] = value
    patterns: dict[str, dict[str, Any]] = {}
    for shape, members in sorted(by_shape.items()):
        values = list(members.values())
        if all(v == values[0] for v in values):
            escaped = re.escape(shape).replace("\\#", "#").replace("#", "\\d+")
            patterns[f"^{escaped}$"] = values[0]
        else:
            for name, value in sorted(members.items()):
                patterns[f"^{re.escape(name)}$"] = value
    return patterns


def group_fallbacks(source: Path, group_size: int) -> dict[str, int]:
    """Decoder-block linear layers whose input width ``group_size`` does not divide, with the
    group size each falls back to (from the safetensors headers; no weights read)."""
    fallbacks: dict[str, int] = {}
    for name, width in _block_linear_widths(source).items():
        size = fitting_group_size(width, group_size)
        if size != group_size:
            # no power of two fits: one group per row (GPTQ's -1) keeps it 4-bit
            fallbacks[name] = -1 if size is None else size
    return fallbacks


def _block_linear_widths(source: Path) -> dict[str, int]:
    """Input width of every linear layer inside the decoder blocks."""
    return {
        key.removesuffix(".weight"): shape[1]
        for key, shape in safetensors_shapes(source).items()
        if key.endswith(".weight") and len(shape) == 2 and ".layers." in key
    }


def uniform_fallback(
    method: str, source: Path, group_size: int, fallbacks: Mapping[str, int]
) -> tuple[int, dict[str, int]]:
    """AWQ's scale search takes one group size for the whole model: the largest power of two
    that every fallback divides (then every layer uses it)."""
    if any(size < 0 for size in fallbacks.values()):
        raise UsageError(
            f"{method}: no power of two of 16 or more divides every layer's input width, and "
            "AWQ takes one group size for the whole model",
            hint="use group_size=-1 (one group per output row), or gptq:int4",
        )
    size = min(fallbacks.values())
    return size, {name: size for name in _block_linear_widths(source)}


def precision_map(output: Path, default_bits: int) -> dict[str, Any]:
    """Which linear layers the saved checkpoint holds quantized, at which bits."""
    config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    qconfig = config.get("quantization_config", {})
    from safetensors import safe_open

    layers: dict[str, Any] = {}
    for file in sorted(output.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.endswith(".qweight"):
                    layers[key.removesuffix(".qweight")] = None
                elif key.endswith(".weight") and not key.endswith("norm.weight"):
                    layers.setdefault(key.removesuffix(".weight"), "unquantized")
    dynamic = qconfig.get("dynamic") or {}
    for name, value in layers.items():
        if value is None:
            bits = default_bits
            for pattern, override in dynamic.items():
                if pattern.startswith("+:") and re.match(pattern[2:], name):
                    bits = override.get("bits", bits)
            layers[name] = bits
    return {"default_bits": default_bits, "modules": layers}


def load_mixed_precision(path: Path) -> Any | None:
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if not config.get("quantization_config", {}).get("dynamic"):
        return None
    from gptqmodel import GPTQModel

    return GPTQModel.load(str(path), device="cpu").model


def run_gptqmodel(
    method: str,
    source: Path,
    output: Path,
    options: Mapping[str, OptionValue],
    context: StepContext,
    rules: list[Rule] | None = None,
    report: Mapping[str, Any] | None = None,
) -> None:
    """Quantize ``source`` into ``output`` with GPTQModel. ``rules``: per-layer bits (in place
    of the ``overrides`` option); ``report``: more for the precision file. A GPTQ budget
    (``bpw``, ``max_size_mb``, ``max_kl``) goes to :func:`quantforge_gptq.budget.build_to_budget`,
    which chooses the rules and comes back here."""
    if rules is None and method == "gptq" and given_budget(method, options):
        from quantforge_gptq.budget import build_to_budget

        build_to_budget(source, output, options, context)
        return
    prepare_environment()
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    if context.calibration is None:
        raise RuntimeError(f"{method} needs calibration rows")
    bits = int(options["bits"])
    group_size = int(options["group_size"])
    if rules is None:
        rules = parse_overrides(method, str(options["overrides"]))
    fallbacks = group_fallbacks(source, group_size)
    used, note = group_size, ""
    if fallbacks and method == "awq":
        used, fallbacks = uniform_fallback(method, source, group_size, fallbacks)
        note = (
            f"group size {group_size} does not divide every layer's input width, and AWQ "
            f"takes one group size for the whole model: every layer uses {used}"
        )
    elif fallbacks:
        sizes = "/".join(str(g) for g in sorted(set(fallbacks.values()), reverse=True))
        note = (
            f"group size {group_size} does not divide {len(fallbacks)} layers' input width: "
            f"those use group size {sizes}, the largest power of two that divides"
        )
    if fallbacks:
        context.log(f"{method}: {note}")
    common: dict[str, Any] = {
        "bits": bits,
        "group_size": used,
        "dynamic": _dynamic(rules, fallbacks if used == group_size else {}),
    }
    if method == "awq":
        config = QuantizeConfig(quant_method="awq", format="gemm", sym=False, **common)
        backend = BACKEND.AWQ_TORCH
    else:
        config = QuantizeConfig(
            desc_act=bool(options["act_order"]),
            sym=bool(options["symmetric"]),
            damp_percent=float(options["damp"]),
            **common,
        )
        backend = BACKEND.AUTO
    context.log(f"{method}: {len(context.calibration.samples)} calibration rows, config {common}")
    model = GPTQModel.load(str(source), config, device=str(options["device"]))
    with blocks_progress(model.model, context):
        model.quantize(
            context.calibration.as_dicts(), batch_size=int(options["batch_size"]), backend=backend
        )
    model.save(str(output))
    copy_tokenizer_files(source, output)
    precision = {**(report or {}), **precision_map(output, bits)}
    if fallbacks:
        precision["group_size"] = group_size
        precision["group_sizes"] = dict(sorted(fallbacks.items()))
        precision["fallback"] = note
    (output / PRECISION_FILE).write_text(json.dumps(precision, indent=2), encoding="utf-8")
