"""Existing quantized checkpoints as variants: AutoGPTQ, AutoAWQ, bitsandbytes, or plain HF.

A user names a folder (or a Hub repo) that another tool produced; quantforge
reads its ``config.json`` to learn the format and which plugin loads it, then
measures it beside the variants it built itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantforge.errors import ModelSourceError
from quantforge.model.source import check_model_files


@dataclass(frozen=True)
class ImportedCheckpoint:
    path: Path
    format: str
    method_label: str
    bits: float | None
    producer: str | None  # the method whose ``load_model`` loads it (None: plain from_pretrained)
    quantization: dict[str, Any]


def inspect_checkpoint(path: Path, *, allow_pickle: bool = False) -> ImportedCheckpoint:
    """Read what ``path`` holds; raise :class:`ModelSourceError` if it is not a model folder,
    its safetensors are cut short, or its weights are pickle only and ``allow_pickle`` is off."""
    check_model_files(path, allow_pickle=allow_pickle, what="imported checkpoint")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelSourceError(f"{path / 'config.json'} is not valid JSON ({exc})") from None
    q = dict(config.get("quantization_config") or {})
    method = str(q.get("quant_method", "")).lower()
    if not q:
        return ImportedCheckpoint(path, "hf", "imported (unquantized)", None, None, q)
    if method == "gptq":
        source = "AutoGPTQ" if "meta" not in q else "GPTQModel"
        return ImportedCheckpoint(
            path, "hf+gptq", f"GPTQ ({source})", _num(q.get("bits")), "gptq", q
        )
    if method == "awq":
        bits = _num(q.get("bits", q.get("w_bit")))
        return ImportedCheckpoint(path, "hf+awq", "AWQ (AutoAWQ)", bits, "awq", q)
    if method == "bitsandbytes":
        bits = 4.0 if q.get("load_in_4bit") else 8.0
        return ImportedCheckpoint(path, "hf+bnb", "bitsandbytes", bits, None, q)
    return ImportedCheckpoint(
        path, f"hf+{method or 'unknown'}", method or "unknown", _num(q.get("bits")), None, q
    )


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
