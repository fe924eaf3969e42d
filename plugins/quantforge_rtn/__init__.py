"""First-party quantizer: group-wise round-to-nearest int4/int8 weights, in plain torch.

The always-available baseline every other method is compared against: no
calibration, no extra library. Linear weights are stored packed (two int4 per
byte) with one float16 scale (and zero point when asymmetric) per group of input
columns, and dequantized on the fly at inference, so both the file and the
loaded model are really smaller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, Option, OptionSet, Quantizer, StepContext, hookimpl
from quantforge.choosing.budget import budget_option_list, given_budget
from quantforge.options import OptionValue


class RTNQuantizer(Quantizer):
    name = "rtn"
    quantizes_experts = False  # nn.Linear layers only
    method = "round-to-nearest"
    description = "group-wise round-to-nearest int4/int8 weights (torch, no calibration)"
    output_format = "hf+rtn"
    requires = ("torch", "transformers", "safetensors")
    extra = "rtn"
    group_size_fallback = True  # per layer; see fitting_group_size
    builds_to_budget = True  # bpw, max_size_mb or max_kl: see quantforge.choosing.budget
    version = "2"  # the precision file says "chosen"
    options = OptionSet(
        [
            Option("bits", int, 4, "weight bits", choices=[4, 8]),
            Option(
                "group_size",
                int,
                128,
                "input columns sharing one scale (the default falls back per layer to a power "
                "of two that divides its width)",
                min=16,
                max=8192,
            ),
            Option("symmetric", bool, True, "symmetric (no zero point)"),
            Option(
                "skip",
                str,
                "lm_head",
                "comma-separated module name suffixes kept in full precision",
            ),
            Option(
                "overrides",
                str,
                "",
                "mixed precision: 'PATTERN=BITS|skip;...' (regex over module names), e.g. 'layers\\.0\\.=8'",
            ),
            *budget_option_list("4, 8 or float bits"),
        ],
        presets={"int4": {"bits": 4}, "int8": {"bits": 8}},
    )

    def calibrates(self, options: Mapping[str, OptionValue]) -> bool:
        return given_budget(self.name, options) is not None

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return float(options["bits"])

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        super().check_model(options, config)
        from quantforge.model.overrides import parse_overrides

        parse_overrides(self.name, str(options["overrides"]), (4, 8))
        given_budget(self.name, options)

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_rtn.rtn import quantize_folder

        quantize_folder(source.path, output, options, context)

    def load_model(self, artifact: Artifact) -> Any | None:
        from quantforge_rtn.rtn import load_quantized

        return load_quantized(artifact.path)


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(RTNQuantizer())
