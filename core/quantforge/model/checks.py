"""What preflight checks in a model folder's files before anything loads them (no torch).

- **Pickle weights** (``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``, ``*.pkl``):
  unpickling can run any code the file's author wrote, so a folder whose weights are
  pickle only is refused unless the user says they trust it (``--allow-pickle``).
- **Code the model ships** (``auto_map`` in ``config.json`` or ``tokenizer_config.json``):
  quantforge never runs it. A model type that transformers knows is loaded with
  transformers' own classes and the run says the shipped code was ignored; one that only
  the shipped code defines is refused.
- **Safetensors files cut short** (an interrupted download or copy): each file's header
  must parse and the file must be as long as its header says; every shard a
  ``*.safetensors.index.json`` names must be there.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantforge.errors import ModelSourceError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# a header longer than this is not a safetensors header (the format caps it at 100 MB)
MAX_HEADER_BYTES = 100 * 2**20
CONVERT_HINT = (
    "convert it to safetensors once in an environment you trust (transformers: "
    "`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT)`), or pass "
    "--allow-pickle if you trust whoever made it"
)


def is_pickle(path: Path) -> bool:
    """Whether ``path`` holds pickled data: a torch.save zip (``*/data.pkl`` inside) or a
    raw pickle stream (protocol 2+ starts with byte 0x80). OpenVINO's ``.bin`` is neither."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if head[:1] == b"\x80":
        return True
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(".pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def pickle_files(folder: Path) -> list[Path]:
    """The pickled weight files directly in ``folder`` (by content, not only by name)."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES and is_pickle(p)
    )


def check_pickle(folder: Path, *, allow: bool, what: str = "model folder") -> list[Path]:
    """Refuse a folder whose weights are pickle only, unless ``allow``; return the pickle
    files that would be read (none when safetensors weights are there: loaders prefer them)."""
    pickles = pickle_files(folder)
    if not pickles or any(folder.glob("*.safetensors")):
        return []
    if not allow:
        raise ModelSourceError(
            f"{what} {str(folder)!r} holds pickle weights only ({pickles[0].name}); loading "
            "pickle runs whatever code its author put in it",
            hint=CONVERT_HINT,
        )
    return pickles


def check_safetensors(folder: Path) -> None:
    """Raise :class:`ModelSourceError` for a safetensors file that is cut short or not
    safetensors at all, or a shard that the index names and the folder lacks."""
    for file in sorted(folder.glob("*.safetensors")):
        _check_safetensors_file(file)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelSourceError(f"{index} is not a safetensors index ({exc})") from None
        missing = sorted({str(s) for s in weight_map.values()} - {p.name for p in folder.iterdir()})
        if missing:
            raise ModelSourceError(
                f"{index.name} names {len(missing)} shard(s) the folder lacks ({missing[0]})",
                hint="the download is incomplete: fetch the model again",
            )


def _check_safetensors_file(file: Path) -> None:
    size = file.stat().st_size
    cut = ModelSourceError(
        f"{file} is cut short or is not a safetensors file",
        hint="the download or copy was interrupted: fetch or save the model again",
    )
    if size < 8:
        raise cut
    with file.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise cut
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            raise cut from None
    if not isinstance(header, dict):
        raise cut
    end = 0
    try:
        for name, entry in header.items():
            if name != "__metadata__":
                end = max(end, int(entry["data_offsets"][1]))
    except (KeyError, TypeError, ValueError, IndexError):
        raise cut from None
    expected = 8 + length + end
    if size < expected:
        raise ModelSourceError(
            f"{file} is cut short: {size:,} bytes of the {expected:,} its header promises",
            hint="the download or copy was interrupted: fetch or save the model again",
        )


@dataclass(frozen=True)
class ShippedCode:
    """Code a model folder ships for transformers' ``trust_remote_code``."""

    files: tuple[str, ...]  # the .py modules that auto_map names
    model_type: str | None

    def ignored_note(self, folder: Path) -> str:
        return (
            f"{folder.name} ships its own code ({', '.join(self.files)}); quantforge never "
            f"runs a model's code and uses transformers' built-in {self.model_type!r} classes"
        )


def shipped_code(folder: Path, config: dict[str, Any]) -> ShippedCode | None:
    """What ``auto_map`` in ``config.json`` and ``tokenizer_config.json`` points at."""
    entries: list[Any] = []
    for source in (config, _json(folder / "tokenizer_config.json")):
        auto_map = source.get("auto_map") if isinstance(source, dict) else None
        if isinstance(auto_map, dict):
            for value in auto_map.values():
                entries.extend(value if isinstance(value, list) else [value])
    modules = sorted(
        {str(e).split("--")[-1].rsplit(".", 1)[0] + ".py" for e in entries if isinstance(e, str)}
    )
    if not modules:
        return None
    return ShippedCode(tuple(modules), config.get("model_type"))


def check_shipped_code(folder: Path, config: dict[str, Any]) -> str | None:
    """``None`` when the folder ships no code; a note to print when transformers has its own
    classes for the model type; :class:`ModelSourceError` when only the shipped code could
    load it."""
    code = shipped_code(folder, config)
    if code is None:
        return None
    if not code.model_type or not _transformers_knows(code.model_type):
        raise ModelSourceError(
            f"{folder.name} needs the code it ships ({', '.join(code.files)}): its model type "
            f"{code.model_type!r} is not one transformers knows, and quantforge never runs "
            "code that a model ships",
            hint="use a release of the model that transformers supports natively",
        )
    tokenizer = _json(folder / "tokenizer_config.json")
    if (
        isinstance(tokenizer, dict)
        and "auto_map" in tokenizer
        and not (folder / "tokenizer.json").is_file()
    ):
        raise ModelSourceError(
            f"{folder.name}'s tokenizer is defined by code it ships and it has no "
            "tokenizer.json; quantforge never runs code that a model ships",
            hint="save the tokenizer as tokenizer.json (a fast tokenizer) in a trusted environment",
        )
    return code.ignored_note(folder)


def _transformers_knows(model_type: str) -> bool:
    import importlib

    auto = importlib.import_module("transformers.models.auto.configuration_auto")
    return model_type in auto.CONFIG_MAPPING_NAMES


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None
