"""First-party quantizer: torchao int8 weight-only, int8 dynamic, and int4 weight-only (CPU path).

Saved through transformers' ``TorchAoConfig`` and reloaded by plain
``from_pretrained``. torchao's ``Int4WeightOnlyConfig`` has no CPU layout, so
int4 uses ``IntxWeightOnlyConfig(int4, PerGroup)``, which runs on CPU (its
weights are stored unpacked in int8, so the file is not smaller than int8's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, Option, OptionSet, Quantizer, StepContext, hookimpl
from quantforge.interfaces import check_group_size
from quantforge.options import OptionValue

SCHEMES = {"int8-weight": 8.0, "int8-dynamic": 8.0, "int4-weight": 4.0}


class TorchAOQuantizer(Quantizer):
    name = "torchao"
    quantizes_experts = False  # nn.Linear layers only
    method = "torchao"
    description = "torchao int8 weight-only, int8 dynamic activation+weight, int4 weight-only (CPU)"
    output_format = "hf+torchao"
    requires = ("torchao", "torch", "transformers")
    extra = "torchao"
    options = OptionSet(
        [
            Option("scheme", str, "int8-weight", "quantization scheme", choices=list(SCHEMES)),
            Option("group_size", int, 32, "int4: weights per scale", choices=[32, 64, 128, 256]),
        ],
        presets={
            "int8": {"scheme": "int8-weight"},
            "int8-dyn": {"scheme": "int8-dynamic"},
            "int4": {"scheme": "int4-weight"},
        },
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return SCHEMES[str(options["scheme"])]

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        super().check_model(options, config)
        if options["scheme"] == "int4-weight":
            check_group_size(self.name, int(options["group_size"]), config)

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        import torch
        from quantforge.model.artifacts import copy_tokenizer_files
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
            PerGroup,
        )
        from transformers import AutoModelForCausalLM, TorchAoConfig

        scheme = str(options["scheme"])
        if scheme == "int8-weight":
            quant = Int8WeightOnlyConfig()
        elif scheme == "int8-dynamic":
            quant = Int8DynamicActivationInt8WeightConfig()
        else:
            quant = IntxWeightOnlyConfig(
                weight_dtype=torch.int4, granularity=PerGroup(int(options["group_size"]))
            )
        model = AutoModelForCausalLM.from_pretrained(
            source.path,
            dtype=torch.float32,
            device_map="cpu",
            quantization_config=TorchAoConfig(quant_type=quant),
        )
        model.save_pretrained(output, safe_serialization=False)
        copy_tokenizer_files(source.path, output)


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(TorchAOQuantizer())
