"""First-party quantizer: optimum-quanto int8/int4/int2 weights, in quanto's own format.

transformers' ``QuantoConfig`` quantizes but cannot save, and a plain
``from_pretrained`` on a quanto folder loads random weights without an error, so
this plugin saves and reloads through quanto's ``QuantizedModelForCausalLM``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, Option, OptionSet, Quantizer, StepContext, hookimpl
from quantforge.errors import UnsupportedModelError
from quantforge.options import OptionValue

# Families whose quanto checkpoint does not reload as it was saved, as tests/test_families.py
# measured (the whole matrix: QUANTFORGE_FAMILIES=all)
RELOAD_FAILS = {
    "gpt_neox": "its reloaded GPT-NeoX differs from the model it saved (logits up to 6.8 apart "
    "after reloading, 0.016 before, at 8 bits)",
}

BITS = {"int8": 8.0, "int4": 4.0, "int2": 2.0}


class QuantoQuantizer(Quantizer):
    name = "quanto"
    quantizes_experts = False  # nn.Linear layers only
    method = "quanto"
    description = "optimum-quanto int8/int4/int2 weights (no calibration), quanto's own format"
    output_format = "hf+quanto"
    requires = ("optimum.quanto", "torch", "transformers")
    extra = "quanto"
    options = OptionSet(
        [
            Option("weights", str, "int4", "weight dtype", choices=list(BITS)),
            Option(
                "exclude",
                str,
                "lm_head",
                "comma-separated module patterns (fnmatch) kept in full precision",
            ),
        ],
        presets={name: {"weights": name} for name in BITS},
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return BITS[str(options["weights"])]

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        super().check_model(options, config)
        why = RELOAD_FAILS.get(str(config.get("model_type")))
        if why is not None:
            from importlib.metadata import version

            raise UnsupportedModelError(
                f"quanto: optimum-quanto {version('optimum-quanto')} fails on "
                f"{config.get('model_type')!r} models: {why}",
                hint="use bnb or torchao for this family",
            )

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        import optimum.quanto as quanto
        from optimum.quanto import QuantizedModelForCausalLM
        from quantforge.model.artifacts import copy_tokenizer_files
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(source.path, device_map="cpu")
        exclude = [p.strip() for p in str(options["exclude"]).split(",") if p.strip()]
        weights = getattr(quanto, "q" + str(options["weights"]))
        qmodel = QuantizedModelForCausalLM.quantize(model, weights=weights, exclude=exclude or None)
        qmodel.save_pretrained(str(output))
        copy_tokenizer_files(source.path, output)

    def load_model(self, artifact: Artifact) -> Any | None:
        from optimum.quanto import QuantizedModelForCausalLM

        return QuantizedModelForCausalLM.from_pretrained(str(artifact.path))._wrapped


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(QuantoQuantizer())
