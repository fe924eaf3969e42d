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

from quantforge.artifacts import PRECISION_FILE, copy_tokenizer_files
from quantforge.interfaces import StepContext
from quantforge.options import OptionValue
from quantforge.overrides import Rule
from quantforge.overrides import parse_overrides as parse_rules


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


def parse_overrides(method: str, text: str) -> list[Rule]:
    return parse_rules(method, text, (2, 3, 4, 8))


def _dynamic(rules: list[Rule]) -> dict[str, dict[str, Any]] | None:
    """GPTQModel's ``dynamic`` overrides: ``-:regex`` skips a module, ``+:regex`` changes its bits."""
    if not rules:
        return None
    dynamic: dict[str, dict[str, Any]] = {}
    for pattern, bits in rules:
        regex = f".*{pattern}.*" if not pattern.startswith("^") else pattern
        if bits is None:
            dynamic[f"-:{regex}"] = {}
        else:
            dynamic[f"+:{regex}"] = {"bits": bits}
    return dynamic


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
) -> None:
    prepare_environment()
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig

    if context.calibration is None:
        raise RuntimeError(f"{method} needs calibration rows")
    bits = int(options["bits"])
    rules = parse_overrides(method, str(options["overrides"]))
    common: dict[str, Any] = {
        "bits": bits,
        "group_size": int(options["group_size"]),
        "dynamic": _dynamic(rules),
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
    model.quantize(
        context.calibration.as_dicts(), batch_size=int(options["batch_size"]), backend=backend
    )
    model.save(str(output))
    copy_tokenizer_files(source, output)
    (output / PRECISION_FILE).write_text(
        json.dumps(precision_map(output, bits), indent=2), encoding="utf-8"
    )
