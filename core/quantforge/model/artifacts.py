"""Model folders on disk: manifests, completeness, atomic creation, sizes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from quantforge.errors import DiskFullError, ModelSourceError, one_line
from quantforge.interfaces import Artifact

MANIFEST = "quantforge.json"
# Written by quantizers that know it: which module got which precision (mixed precision).
PRECISION_FILE = "quantforge-precision.json"
# ONNX keeps large weights beside the graph in ``*.onnx.data`` / ``*.onnx_data`` files.
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".gguf",
    ".onnx",
    ".data",
    ".onnx_data",
    ".xml",
    ".pt",
    ".pth",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
)


def is_weight_file(name: str) -> bool:
    return Path(name).suffix in WEIGHT_SUFFIXES


def weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def folder_bytes(path: Path, *, weights_only: bool = False) -> int:
    files = weight_files(path) if weights_only else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def check_hf_folder(path: Path) -> None:
    """Raise :class:`ModelSourceError` unless ``path`` is a readable HF model folder with weights."""
    if not path.exists():
        raise ModelSourceError(
            f"model path {str(path)!r} does not exist",
            hint="pass a local model folder or a Hub id such as org/name",
        )
    if not path.is_dir():
        if path.suffix == ".gguf":
            raise ModelSourceError(
                f"model path {str(path)!r} is a GGUF file; quantforge builds variants from "
                "Hugging Face weights",
                hint=f"dequantize it once: `quantforge gguf-to-hf {path} --out DIR`, then pass DIR",
            )
        raise ModelSourceError(f"model path {str(path)!r} is a file, not a model folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ModelSourceError(f"model folder {str(path)!r} is not readable")
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if ggufs and not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model folder {str(path)!r} holds a GGUF file ({ggufs[0]}) and no Hugging Face "
            "weights; quantforge builds variants from Hugging Face weights",
            hint=f"dequantize it once: `quantforge gguf-to-hf {path / ggufs[0]} --out DIR`, "
            "then pass DIR (or pass the model's original Hugging Face release)",
        )
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model folder {str(path)!r} has no config.json",
            hint="point at the folder save_pretrained() wrote",
        )
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if ggufs and not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
        raise ModelSourceError(
            f"model folder {str(path)!r} holds GGUF weights only ({ggufs[0]}); quantforge "
            "builds variants from Hugging Face weights",
            hint=f"dequantize it once: `quantforge gguf-to-hf {path / ggufs[0]} --out DIR`, "
            "then pass DIR (or pass the model's original Hugging Face release)",
        )
    if not any(p.suffix in (".safetensors", ".bin") for p in path.iterdir()):
        raise ModelSourceError(
            f"model folder {str(path)!r} has no weights (*.safetensors or *.bin)",
            hint="the download or save may be incomplete",
        )
    for name in ("config.json", *TOKENIZER_FILES):
        file = path / name
        if file.exists() and not os.access(file, os.R_OK):
            raise ModelSourceError(f"{file} is not readable")


def _safetensors_headers(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every tensor's header entry (dtype, shape, data_offsets) in the ``*.safetensors``
    files of ``path`` (no torch, no weights read)."""
    import struct

    for file in sorted(path.glob("*.safetensors")):
        with file.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                yield name, entry


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Every tensor's shape in the ``*.safetensors`` files of ``path``, read from their JSON
    headers (no torch, no weights read)."""
    return {name: list(entry["shape"]) for name, entry in _safetensors_headers(path)}


def safetensors_nbytes(path: Path) -> dict[str, int]:
    """Every tensor's size in bytes in the ``*.safetensors`` files of ``path`` (headers only)."""
    return {
        name: int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
        for name, entry in _safetensors_headers(path)
    }


def copy_files(source: Path, output: Path, names: Iterable[str]) -> None:
    """Copy each of ``names`` that ``source`` holds into ``output``."""
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, output / name)


def copy_tokenizer_files(source: Path, output: Path) -> None:
    """Carry the tokenizer (and chat template) of ``source`` into ``output``."""
    copy_files(source, output, TOKENIZER_FILES)


def write_manifest(output: Path, manifest: Mapping[str, Any]) -> None:
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def read_artifact(path: Path) -> Artifact:
    """An artifact written by quantforge (its manifest says the format)."""
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    return Artifact(path=path, format=manifest["format"], manifest=manifest)


def read_precision(path: Path) -> dict[str, Any] | None:
    file = path / PRECISION_FILE
    return dict(json.loads(file.read_text(encoding="utf-8"))) if file.is_file() else None


def is_complete(path: Path) -> bool:
    """A folder quantforge finished writing (the manifest is written last, then renamed in)."""
    return (path / MANIFEST).is_file()


def remove_partial(final: Path) -> None:
    """Delete temporary folders that a killed worker left while building ``final``."""
    for tmp in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; rename it to ``final`` on success.

    On any error the temporary folder is removed, so a failed step leaves nothing
    that looks complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except Exception as exc:
        # Libraries and tools report a full disk in their own words ("196608 requested and
        # 125920 written"); while the half-written folder is still there, the disk says it.
        if not isinstance(exc, DiskFullError) and disk_nearly_full(final.parent):
            raise DiskFullError(f"the disk of {final.parent} is full: {one_line(exc)}") from exc
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# below this much free space (or 1% of the disk, when that is less), a failed write is
# taken for a full disk
NEARLY_FULL_BYTES = 64 * 2**20


def disk_nearly_full(path: Path) -> bool:
    """Whether the disk holding ``path`` has (almost) no space left for this user."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return False
    return usage.free < min(NEARLY_FULL_BYTES, usage.total // 100)
