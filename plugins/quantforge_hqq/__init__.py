"""First-party quantizer: HQQ (half-quadratic, calibration-free) 2/3/4/8-bit weights.

transformers 5 does not implement ``HqqConfig``, so this plugin uses HQQ's native
``AutoHQQHFModel`` to quantize, save and reload (on CPU, float32 compute).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, Option, OptionSet, Quantizer, StepContext, hookimpl
from quantforge.errors import UnsupportedModelError
from quantforge.interfaces import check_group_size
from quantforge.options import OptionValue

# families whose decoder blocks are not at model.layers, where HQQ's model patcher looks
BLOCKS_ELSEWHERE = {
    "gpt_neox": "gpt_neox.layers",
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "bloom": "transformer.h",
    "falcon": "transformer.h",
}


class HQQQuantizer(Quantizer):
    name = "hqq"
    quantizes_experts = False  # nn.Linear layers only
    method = "HQQ"
    description = "HQQ half-quadratic 2/3/4/8-bit weights (no calibration), HQQ's own format"
    output_format = "hf+hqq"
    requires = ("hqq", "torch", "transformers")
    extra = "hqq"
    options = OptionSet(
        [
            Option("bits", int, 4, "weight bits", choices=[1, 2, 3, 4, 8]),
            Option("group_size", int, 64, "weights per scale/zero", choices=[16, 32, 64, 128, 256]),
        ],
        # 1 bit only works with small groups (HQQ's own 1-bit models use 8 to 16)
        presets={
            **{f"int{b}": {"bits": b} for b in (2, 3, 4, 8)},
            "int1": {"bits": 1, "group_size": 16},
        },
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return float(options["bits"])

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        super().check_model(options, config)
        blocks = BLOCKS_ELSEWHERE.get(str(config.get("model_type")))
        if blocks is not None:
            raise UnsupportedModelError(
                f"hqq: HQQ's AutoHQQHFModel finds decoder blocks at model.layers, and "
                f"{config.get('model_type')!r} models keep them at {blocks}",
                hint="use quanto, bnb or torchao for this family",
            )
        check_group_size(self.name, int(options["group_size"]), config)

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        import torch
        from hqq.core.quantize import BaseQuantizeConfig
        from hqq.models.hf.base import AutoHQQHFModel
        from quantforge.model.artifacts import copy_tokenizer_files
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=torch.float32, device_map="cpu"
        )
        config = BaseQuantizeConfig(
            nbits=int(options["bits"]), group_size=int(options["group_size"])
        )
        AutoHQQHFModel.quantize_model(
            model, quant_config=config, compute_dtype=torch.float32, device="cpu"
        )
        AutoHQQHFModel.save_quantized(model, str(output))
        copy_tokenizer_files(source.path, output)

    def load_model(self, artifact: Artifact) -> Any | None:
        import torch
        from hqq.models.hf.base import AutoHQQHFModel

        return AutoHQQHFModel.from_quantized(
            str(artifact.path), compute_dtype=torch.float32, device="cpu"
        )


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(HQQQuantizer())
