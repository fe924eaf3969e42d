"""First-party ExecuTorch plugin: phones and edge devices, through PyTorch's own runtime.

Built as any third party could build it: entry points and the public hooks only.

* ``executorch`` (exporter, hf -> executorch): the decoder with a static KV cache, exported
  with ``torch.export`` and lowered to XNNPACK in float32 (``model.pte``).
* ``xnnpack`` (quantizer, hf -> executorch+xnnpack): torchao's ``8da4w`` (int8 dynamic
  activations, int4 grouped weights) or ``8da8w`` first, then the same export and lowering.
* ``executorch`` (target): ExecuTorch's runtime (``executorch.runtime``) with its XNNPACK
  delegate on this CPU, measured like every other runtime.

Core ML and TensorRT-LLM programs cannot be built or run on this kind of machine; asking
for them names the plugin that would provide them (:data:`quantforge.plugins.registry.ELSEWHERE`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from quantforge import (
    Artifact,
    Exporter,
    Option,
    OptionSet,
    Quantizer,
    Runtime,
    StepContext,
    Target,
    hookimpl,
)
from quantforge.interfaces import check_causal_lm
from quantforge.options import OptionValue

EXTRA = "executorch"
REQUIRES = ("executorch", "torch", "torchao", "transformers")
DEFAULT_GROUP = 32
LONGEST = 2048

_MAX_SEQ_LEN = Option(
    "max_seq_len",
    int,
    0,
    f"positions of the program's KV cache (0: the model's, at most {LONGEST})",
    min=0,
)


def _et_version() -> str:
    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _max_seq_len(options: Mapping[str, OptionValue], source: Path) -> int:
    chosen = int(str(options["max_seq_len"]))
    if chosen:
        return chosen
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    return min(int(config.get("max_position_embeddings") or LONGEST), LONGEST)


def executorch_card_usage(repo_id: str, revision: str | None) -> str:
    """How ExecuTorch's Python runtime runs ``model.pte`` from ``repo_id``."""
    rev = f', revision="{revision}"' if revision else ""
    return f"""An ExecuTorch program (`model.pte`, XNNPACK delegate) built with executorch
**{_et_version()}**; its KV cache lives inside the program (inputs `input_ids` and
`cache_position`, output logits).

```python
# pip install executorch transformers
import torch
from executorch.runtime import Runtime
from huggingface_hub import snapshot_download
from transformers import AutoTokenizer

folder = snapshot_download("{repo_id}"{rev})
tokenizer = AutoTokenizer.from_pretrained(folder)
forward = Runtime.get().load_program(f"{{folder}}/model.pte").load_method("forward")
ids = tokenizer("The quick brown fox").input_ids
logits = forward.execute([torch.tensor([ids]), torch.arange(len(ids))])[0]
for _ in range(32):
    ids.append(int(logits[0, -1].argmax()))
    logits = forward.execute([torch.tensor([ids[-1:]]), torch.tensor([len(ids) - 1])])[0]
print(tokenizer.decode(ids))
```

On Android and iOS, ExecuTorch's LLM runner loads the same `model.pte` with
`tokenizer.json`."""


class ExecuTorchExporter(Exporter):
    name = "executorch"
    description = "HF -> ExecuTorch program (.pte) lowered to XNNPACK, float32"
    input_format = "hf"
    output_format = "executorch"
    requires = REQUIRES
    extra = EXTRA
    card_library = "executorch"
    options = OptionSet([_MAX_SEQ_LEN])

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        self.check_available()
        check_causal_lm("executorch", config)

    def export(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_executorch.program import build_program

        length = _max_seq_len(options, source.path)
        build_program(
            source.path,
            output,
            scheme="",
            group_size=DEFAULT_GROUP,
            falls_back=True,
            max_seq_len=length,
            log=context.log,
        )
        context.log(f"executorch: float32 program, {length} cache positions")

    def card_usage(self, repo_id: str, revision: str | None) -> str | None:
        return executorch_card_usage(repo_id, revision)


class XNNPACKQuantizer(Quantizer):
    name = "xnnpack"
    method = "ExecuTorch"
    description = (
        "ExecuTorch program with torchao's 8da4w / 8da8w (int8 dynamic activations) on XNNPACK"
    )
    input_format = "hf"
    output_format = "executorch+xnnpack"
    requires = REQUIRES
    extra = EXTRA
    group_size_fallback = True
    quantizes_experts = False  # torchao replaces nn.Linear weights only
    card_library = "executorch"
    version = "1"
    options = OptionSet(
        [
            Option(
                "scheme",
                str,
                "8da4w",
                "int8 dynamic activations with int4 grouped (8da4w) or int8 per-channel "
                "(8da8w) weights",
                choices=["8da4w", "8da8w"],
            ),
            Option(
                "group_size",
                int,
                0,
                f"int4 weights per scale (8da4w; 0: {DEFAULT_GROUP}, falling back per weight "
                "to a power of two that divides its width)",
                choices=[0, 16, 32, 64, 128, 256],
            ),
            _MAX_SEQ_LEN,
        ],
        presets={"8da4w": {"scheme": "8da4w"}, "8da8w": {"scheme": "8da8w"}},
    )

    def group_size(self, options: Mapping[str, OptionValue]) -> int:
        size = int(str(options["group_size"]))
        return DEFAULT_GROUP if size == 0 else size

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return 4.0 if options["scheme"] == "8da4w" else 8.0

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        self.check_available()
        check_causal_lm("xnnpack", config)
        if options["scheme"] == "8da8w" and int(str(options["group_size"])):
            from quantforge.errors import UsageError

            raise UsageError(
                "xnnpack: 8da8w has one scale per output channel; group_size applies to 8da4w",
                hint="drop group_size, or use xnnpack:8da4w",
            )

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge.model.artifacts import PRECISION_FILE

        from quantforge_executorch.program import build_program

        scheme = str(options["scheme"])
        requested = int(str(options["group_size"]))
        report = build_program(
            source.path,
            output,
            scheme=scheme,
            group_size=self.group_size(options),
            falls_back=requested == 0,
            max_seq_len=_max_seq_len(options, source.path),
            log=context.log,
        )
        precision: dict[str, Any] = {
            "default_bits": self.bits(options),
            "scheme": scheme,
            "activations": "int8, dynamic per token",
            "modules": report["modules"],
        }
        if scheme == "8da4w":
            precision["group_size"] = self.group_size(options)
            fitted = {k: v for k, v in report["fallbacks"].items() if v}
            floats = sorted(k for k, v in report["fallbacks"].items() if not v)
            if fitted:
                precision["group_sizes"] = fitted
            if fitted or floats:
                precision["fallback"] = (
                    f"group size {self.group_size(options)} does not divide "
                    f"{len(fitted) + len(floats)} weights' width: "
                    + (f"{len(fitted)} use the largest power of two that does" if fitted else "")
                    + ("; " if fitted and floats else "")
                    + (f"{len(floats)} stay in float32" if floats else "")
                )
        (output / PRECISION_FILE).write_text(json.dumps(precision, indent=2), encoding="utf-8")

    def card_usage(self, repo_id: str, revision: str | None) -> str | None:
        return executorch_card_usage(repo_id, revision)


class ExecuTorchTarget(Target):
    name = "executorch"
    description = "this machine's CPU, with ExecuTorch's runtime and XNNPACK (measured)"
    formats = frozenset({"executorch"})
    measured = True
    requires = ("executorch", "torch", "numpy")
    extra = EXTRA

    def hardware(self) -> str:
        from quantforge_transformers import LocalCPU

        return LocalCPU().hardware() + f", ExecuTorch {_et_version()} (XNNPACK)"

    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        from quantforge_executorch.runtime import load_runtime

        return load_runtime(artifact.path)


@hookimpl
def register_exporters(register: Callable[[Exporter], None]) -> None:
    register(ExecuTorchExporter())


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(XNNPACKQuantizer())


@hookimpl
def register_targets(register: Callable[[Target], None]) -> None:
    register(ExecuTorchTarget())
