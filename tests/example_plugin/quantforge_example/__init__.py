"""Example quantforge plugin. Stays light at import: torch is imported inside the step."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

from quantforge import (
    Artifact,
    EvalContext,
    Evaluator,
    Measurement,
    Option,
    OptionSet,
    Quantizer,
    Runtime,
    StepContext,
    hookimpl,
)
from quantforge.options import OptionValue


class HalfPrecision(Quantizer):
    name = "half"
    method = "half precision"
    description = "cast weights to float16 or bfloat16 (example plugin)"
    output_format = "hf+half"
    requires = ("torch", "transformers")
    extra = "torch"
    options = OptionSet(
        [Option("dtype", str, "bfloat16", "storage dtype", choices=["bfloat16", "float16"])],
        presets={"bf16": {"dtype": "bfloat16"}, "fp16": {"dtype": "float16"}},
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return 16.0

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = getattr(torch, str(options["dtype"]))
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype)
        model.save_pretrained(output)
        AutoTokenizer.from_pretrained(source.path).save_pretrained(output)


def _safetensors_params(path: Path) -> int:
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in info["shape"]:
            count *= dim
        total += count
    return total


class ParamCount(Evaluator):
    name = "param-count"
    description = "stored tensor elements, from safetensors headers (example plugin)"
    needs_runtime = False

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        files = sorted(artifact.path.glob("*.safetensors"))
        if not files:
            raise ValueError(f"no safetensors files in {artifact.path}")
        total = sum(_safetensors_params(f) for f in files)
        return [Measurement("stored_elements_m", total / 1e6, "M", "none", {"files": len(files)})]


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(HalfPrecision())


@hookimpl
def register_evaluators(register: Callable[[Evaluator], None]) -> None:
    register(ParamCount())
