"""HF -> an ExecuTorch program (``model.pte``) lowered to XNNPACK, with torchao's quantization.

The decoder is wrapped with transformers' ``TorchExportableModuleForDecoderOnlyLM`` (a static
KV cache inside the program; inputs ``input_ids`` and ``cache_position``, output logits),
exported with ``torch.export`` (a dynamic sequence length, so one program both prefills and
decodes), lowered with ExecuTorch's ``to_edge_transform_and_lower`` and the XNNPACK
partitioner, and serialized. Quantization happens on the PyTorch module first, with the
torchao configurations ExecuTorch's XNNPACK backend runs:

* ``8da4w``: int8 dynamic activations, int4 weights in groups (XNNPACK's qd8-f32-qb4w);
* ``8da8w``: int8 dynamic activations, int8 weights per output channel (qd8-f32-qc8w).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantforge.errors import UsageError
from quantforge.interfaces import fitting_group_size
from quantforge.model.artifacts import TOKENIZER_FILES, copy_files

PROGRAM_FILE = "model.pte"
METADATA_FILE = "executorch.json"
SIDE_FILES = (*TOKENIZER_FILES, "chat_template.jinja", "config.json", "generation_config.json")
SCHEMES = ("8da4w", "8da8w")


def _quantize(model: Any, scheme: str, group_size: int, falls_back: bool) -> dict[str, Any]:
    """Quantize every ``nn.Linear`` of ``model`` in place; return each layer's precision
    and the group sizes that fell back."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    modules: dict[str, Any] = {}
    fallbacks: dict[str, int] = {}
    by_group: dict[int, set[str]] = {}
    for name, layer in linears.items():
        width = int(layer.in_features)
        if scheme == "8da8w":
            by_group.setdefault(-1, set()).add(name)
            modules[name] = 8
            continue
        size = group_size
        if width % size:
            fitted = fitting_group_size(width, size) if falls_back else None
            if fitted is None:
                modules[name] = "float"
                fallbacks[name] = 0
                continue
            size = fitted
            fallbacks[name] = fitted
        by_group.setdefault(size, set()).add(name)
        modules[name] = 4
    for size, names in by_group.items():
        config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=torch.int8 if size < 0 else torch.int4,
            weight_granularity=PerAxis(0) if size < 0 else PerGroup(size),
        )
        chosen = frozenset(names)
        quantize_(model, config, filter_fn=lambda m, fqn, chosen=chosen: fqn in chosen)
    return {"modules": modules, "fallbacks": fallbacks}


def build_program(
    source: Path,
    output: Path,
    *,
    scheme: str,
    group_size: int,
    falls_back: bool,
    max_seq_len: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Write ``model.pte`` (and the tokenizer and config beside it) for the HF folder
    ``source``; ``scheme`` is ``""`` (float32) or one of :data:`SCHEMES`."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from transformers import AutoModelForCausalLM
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    model.eval()
    model.generation_config.cache_implementation = "static"
    report: dict[str, Any] = {"modules": {}, "fallbacks": {}}
    if scheme:
        report = _quantize(model, scheme, group_size, falls_back)
        log(f"executorch: {scheme} on {len(report['modules'])} linear layers (torchao)")
    exportable = TorchExportableModuleForDecoderOnlyLM(
        model, batch_size=1, max_cache_len=max_seq_len
    )
    length = torch.export.Dim("seq_len", max=max_seq_len - 1)
    with torch.no_grad():
        exported = exportable.export(
            input_ids=torch.tensor([[1, 2]], dtype=torch.long),
            cache_position=torch.arange(2, dtype=torch.long),
            dynamic_shapes={"input_ids": {1: length}, "cache_position": {0: length}},
            strict=True,
        )
    log("executorch: exported; lowering to XNNPACK")
    program = to_edge_transform_and_lower(
        exported,
        partitioner=[XnnpackPartitioner()],
        compile_config=EdgeCompileConfig(_check_ir_validity=False),
    ).to_executorch()
    (output / PROGRAM_FILE).write_bytes(program.buffer)
    copy_files(source, output, SIDE_FILES)
    metadata = {"max_seq_len": max_seq_len, "scheme": scheme or "float32", "backend": "xnnpack"}
    (output / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return report


def read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_FILE
    if not (folder / PROGRAM_FILE).exists() or not path.exists():
        raise UsageError(
            f"{folder} holds no ExecuTorch program ({PROGRAM_FILE}, {METADATA_FILE})",
            hint="build it with the `executorch` exporter or the `xnnpack` quantizer",
        )
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
