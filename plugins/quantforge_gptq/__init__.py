"""First-party quantizers: GPTQ and AWQ through GPTQModel, on CPU.

GPTQModel is the maintained library for both methods (auto-gptq and autoawq are
archived upstream and do not run with transformers 5 and torch 2.13 here). It
quantizes on CPU, saves checkpoints that plain ``transformers.from_pretrained``
loads back (transformers 5 uses GPTQModel's kernels to run them), and also runs
checkpoints that AutoGPTQ and AutoAWQ produced: see :mod:`quantforge_gptq.imports`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, Option, OptionSet, Quantizer, StepContext, hookimpl
from quantforge.choosing.budget import budget_option_list, given_budget
from quantforge.errors import UnsupportedModelError, UsageError
from quantforge.interfaces import gpu_visible
from quantforge.options import OptionValue

GROUP_SIZES = [-1, 32, 64, 128, 256, 512, 1024]

COMMON = [
    Option(
        "group_size",
        int,
        128,
        "input columns per scale (-1: one per output row; the default falls back per layer to "
        "a power of two that divides its width)",
        choices=GROUP_SIZES,
    ),
    Option("batch_size", int, 4, "calibration rows per forward", min=1, max=256),
    Option("device", str, "cpu", "where to quantize (cuda needs a GPU)", choices=["cpu", "cuda"]),
    Option(
        "overrides",
        str,
        "",
        "mixed precision: 'PATTERN=BITS|skip;...' (regex over module names), e.g. 'lm_head=skip;layers\\.0\\.=8'",
    ),
]


class _GPTQModelMethod(Quantizer):
    requires = ("gptqmodel", "optimum", "torch", "transformers")
    extra = "gptq"
    needs_calibration = True
    group_size_fallback = True  # per layer; see fitting_group_size
    ends_process_on_error = True  # GPTQModel's worker threads call os._exit(1)

    def supported_architectures(self) -> frozenset[str] | None:
        from quantforge_gptq.support import gptqmodel_architectures

        return gptqmodel_architectures()

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        super().check_model(options, config)
        from quantforge_gptq.support import FAILS, gptqmodel_version

        why = FAILS.get((self.name, str(config.get("model_type"))))
        if why is not None:
            raise UnsupportedModelError(
                f"{self.name}: GPTQModel {gptqmodel_version()} fails on "
                f"{config.get('model_type')!r} models: {why}",
                hint="`quantforge methods --model PATH` lists what supports it",
            )
        if options["device"] == "cuda" and not gpu_visible():
            raise UsageError(
                f"{self.name}: device 'cuda' was asked for, and this machine has no visible GPU",
                hint="use device=cpu (the default)",
            )
        from quantforge_gptq.support import parse_overrides

        parse_overrides(self.name, str(options["overrides"]))
        if self.builds_to_budget:
            given_budget(self.name, options)

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_gptq.support import run_gptqmodel

        run_gptqmodel(self.name, source.path, output, options, context)

    def load_model(self, artifact: Artifact) -> Any | None:
        """Uniform checkpoints load with plain ``from_pretrained`` (returns ``None``); mixed
        precision (GPTQModel's ``dynamic``) needs GPTQModel's loader, which builds each
        layer at its own bits."""
        from quantforge_gptq.support import load_mixed_precision, prepare_environment

        prepare_environment()
        return load_mixed_precision(artifact.path)


class GPTQQuantizer(_GPTQModelMethod):
    name = "gptq"
    method = "GPTQ"
    description = (
        "GPTQ (second-order, calibrated) 2/3/4/8-bit weights via GPTQModel; 4/8 bits per "
        "layer to a budget (bpw, max_size_mb, max_kl)"
    )
    output_format = "hf+gptq"
    builds_to_budget = True  # bpw, max_size_mb or max_kl: see quantforge_gptq.budget
    version = "2"  # a per-layer rule keeps its layer's group-size fallback
    options = OptionSet(
        [
            Option("bits", int, 4, "weight bits", choices=[2, 3, 4, 8]),
            Option(
                "act_order", bool, False, "quantize columns in order of activation size (desc_act)"
            ),
            Option("symmetric", bool, True, "symmetric (no zero point)"),
            Option(
                "damp",
                float,
                0.05,
                "Hessian dampening, fraction of the mean diagonal",
                min=0.001,
                max=1.0,
            ),
            *COMMON,
            *budget_option_list("4, 8 or float bits"),
        ],
        presets={
            "int4": {"bits": 4},
            "int3": {"bits": 3},
            "int8": {"bits": 8},
            "int4-act": {"bits": 4, "act_order": True},
        },
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        if given_budget(self.name, options):
            return float(str(options["bpw"])) or None  # a mix: its bits are measured
        return float(options["bits"])


class AWQQuantizer(_GPTQModelMethod):
    name = "awq"
    method = "AWQ"
    description = (
        "AWQ (activation-aware, calibrated) 4-bit weights via GPTQModel (awq_torch on CPU)"
    )
    output_format = "hf+awq"
    options = OptionSet(
        [Option("bits", int, 4, "weight bits", choices=[4]), *COMMON],
        presets={"int4": {"bits": 4}},
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return 4.0


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(GPTQQuantizer())
    register(AWQQuantizer())
