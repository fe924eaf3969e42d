"""First-party step: QLoRA recovery. Quantize to 4 bits with bitsandbytes, then train a LoRA
adapter (peft) on local text, and measure the 4-bit model with the adapter applied.

Beside ``bnb:nf4`` in the same run it shows how much quality a short fine-tune
recovers. The training text is the run's calibration set (``[calibration]``).
The 4-bit checkpoint is saved before any forward pass (on AVX512-BF16 CPUs the
first forward repacks 4-bit weights in place), and the adapter is kept separate
rather than merged into 4-bit weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, Option, OptionSet, Quantizer, StepContext, hookimpl
from quantforge.options import OptionValue

ADAPTER_DIR = "adapter"
REPORT_FILE = "quantforge-qlora.json"


class QLoRARecovery(Quantizer):
    name = "qlora"
    quantizes_experts = False  # nn.Linear layers only
    method = "bitsandbytes + QLoRA"
    description = "4-bit bitsandbytes, then a LoRA adapter (peft) trained on the calibration text"
    output_format = "hf+bnb+lora"
    needs_calibration = True
    requires = ("torch", "transformers", "bitsandbytes", "peft")
    extra = "qlora"
    options = OptionSet(
        [
            Option("quant_type", str, "nf4", "4-bit weight format", choices=["nf4", "fp4"]),
            Option("double_quant", bool, True, "quantize the scales too"),
            Option(
                "compute_dtype",
                str,
                "float32",
                "dtype of the matmuls",
                choices=["float32", "bfloat16"],
            ),
            Option("steps", int, 40, "training steps", min=1, max=100_000),
            Option("learning_rate", float, 1e-3, "AdamW learning rate", min=1e-6, max=1.0),
            Option("rank", int, 8, "LoRA rank", min=1, max=256),
            Option("alpha", int, 16, "LoRA alpha", min=1, max=1024),
            Option("batch_size", int, 4, "calibration rows per step", min=1, max=256),
            Option(
                "target_modules",
                str,
                "all-linear",
                "comma-separated module names that get adapters, or all-linear (every "
                "linear layer but the output head, whatever the family calls them)",
            ),
        ],
        presets={"nf4": {"quant_type": "nf4"}, "fp4": {"quant_type": "fp4"}},
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return 4.0

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_qlora.train import quantize_and_train

        quantize_and_train(source.path, output, options, context)

    def load_model(self, artifact: Artifact) -> Any | None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(artifact.path, device_map="cpu")
        return PeftModel.from_pretrained(model, str(artifact.path / ADAPTER_DIR)).eval()


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(QLoRARecovery())
