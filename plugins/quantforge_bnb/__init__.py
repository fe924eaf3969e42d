"""First-party quantizer: bitsandbytes int8 (LLM.int8) and 4-bit NF4/FP4, on CPU.

The checkpoint is saved right after quantization, before any forward pass:
on CPUs with AVX512-BF16 the first inference forward repacks 4-bit weights in
place, and a save after that writes corrupt weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, Option, OptionSet, Quantizer, StepContext, hookimpl
from quantforge.options import OptionValue


class BitsAndBytesQuantizer(Quantizer):
    name = "bnb"
    quantizes_experts = False  # nn.Linear layers only
    method = "bitsandbytes"
    description = "bitsandbytes int8 (LLM.int8) and 4-bit NF4/FP4, quantized at load"
    output_format = "hf+bnb"
    requires = ("torch", "transformers", "bitsandbytes")
    extra = "bnb"
    options = OptionSet(
        [
            Option("quant_type", str, "nf4", "weight format", choices=["nf4", "fp4", "int8"]),
            Option("double_quant", bool, True, "4-bit: quantize the scales too"),
            Option(
                "compute_dtype",
                str,
                "float32",
                "4-bit: dtype of the matmuls",
                choices=["float32", "bfloat16", "float16"],
            ),
            Option("int8_threshold", float, 6.0, "int8: outlier threshold", min=0.0, max=100.0),
            Option("skip", str, "lm_head", "comma-separated modules kept in full precision"),
        ],
        presets={
            "nf4": {"quant_type": "nf4"},
            "fp4": {"quant_type": "fp4"},
            "int8": {"quant_type": "int8"},
        },
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return 8.0 if options["quant_type"] == "int8" else 4.0

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge.model.artifacts import copy_tokenizer_files
        from transformers import AutoModelForCausalLM

        config = bnb_config(options)
        model = AutoModelForCausalLM.from_pretrained(
            source.path, quantization_config=config, device_map="cpu"
        )
        # Save before any forward pass (see the module docstring).
        model.save_pretrained(output)
        copy_tokenizer_files(source.path, output)
        context.log(f"bnb: saved {options['quant_type']} checkpoint")


def bnb_config(options: Mapping[str, OptionValue]) -> Any:
    """transformers' ``BitsAndBytesConfig`` for these options (shared with the QLoRA plugin)."""
    import torch
    from transformers import BitsAndBytesConfig

    skip = [s.strip() for s in str(options.get("skip", "lm_head")).split(",") if s.strip()]
    if options["quant_type"] == "int8":
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=float(options.get("int8_threshold", 6.0)),
            llm_int8_skip_modules=skip,
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=str(options["quant_type"]),
        bnb_4bit_use_double_quant=bool(options["double_quant"]),
        bnb_4bit_compute_dtype=getattr(torch, str(options["compute_dtype"])),
        llm_int8_skip_modules=skip,
    )


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(BitsAndBytesQuantizer())
