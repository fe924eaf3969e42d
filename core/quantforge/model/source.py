"""The base model: a local folder or a Hub id, and the identity that cache keys build on."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from quantforge.errors import ModelSourceError
from quantforge.model.artifacts import check_hf_folder
from quantforge.model.checks import check_pickle, check_safetensors


@dataclass(frozen=True)
class BaseModel:
    """A resolved base model.

    :ivar ref: what the user wrote (a path or a Hub id).
    :ivar path: the local folder holding it.
    :ivar revision: the Hub commit, or ``None`` for a local folder.
    :ivar content_hash: sha256 over file names and contents (cache-key identity).
    """

    ref: str
    path: Path
    revision: str | None
    content_hash: str

    @property
    def identity(self) -> str:
        return f"{self.ref}@{self.revision}" if self.revision else f"sha256:{self.content_hash}"


def file_sha256(path: Path, memo: dict[str, list[object]] | None = None) -> str:
    """sha256 of a file's content; ``memo`` remembers digests by path, size and mtime."""
    memo = {} if memo is None else memo
    stat = path.stat()
    key = str(path.resolve())
    hit = memo.get(key)
    if hit and hit[0] == stat.st_size and hit[1] == stat.st_mtime_ns:
        return str(hit[2])
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    memo[key] = [stat.st_size, stat.st_mtime_ns, digest.hexdigest()]
    return digest.hexdigest()


def content_hash(folder: Path, cache_dir: Path | None = None) -> str:
    """sha256 over every file of ``folder``; per-file digests are remembered by size and mtime."""
    memo_path = (cache_dir / "file-hashes.json") if cache_dir else None
    memo: dict[str, list[object]] = {}
    if memo_path and memo_path.exists():
        try:
            memo = json.loads(memo_path.read_text())
        except ValueError:
            memo = {}
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if file.name.startswith(".") or "/." in str(file.relative_to(folder)):
            continue
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(file_sha256(file, memo).encode())
    if memo_path:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        tmp.replace(memo_path)
    return digest.hexdigest()


def looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "/", "~"))


def check_model_files(
    path: Path, *, allow_pickle: bool = False, what: str = "model folder"
) -> None:
    """A readable HF folder whose safetensors are whole, and whose weights are not pickle
    only unless ``allow_pickle`` (see :mod:`quantforge.model.checks`)."""
    check_hf_folder(path)
    check_safetensors(path)
    check_pickle(path, allow=allow_pickle, what=what)


def resolve_model(
    ref: str,
    revision: str | None = None,
    cache_dir: Path | None = None,
    *,
    allow_pickle: bool = False,
) -> BaseModel:
    """Find the base model: a local folder, else a Hub repo fetched with huggingface_hub.
    Pickle weights are refused unless ``allow_pickle`` (and only then fetched)."""
    path = Path(ref).expanduser()
    if path.exists() or not looks_like_hub_id(ref):
        check_model_files(path, allow_pickle=allow_pickle)
        return BaseModel(ref, path.resolve(), None, content_hash(path, cache_dir))
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ModelSourceError(
            f"{ref!r} is not a local folder, and huggingface_hub is not installed to fetch it",
            hint="pip install 'quantforge[hub]'",
        ) from None
    try:
        local = Path(
            snapshot_download(
                ref,
                revision=revision,
                allow_patterns=[
                    "*.json",
                    "*.safetensors",
                    "*.model",
                    "*.txt",
                    "*.jinja",
                    "*.md",
                    *(["*.bin"] if allow_pickle else []),
                ],
            )
        )
    except LocalEntryNotFoundError:
        raise ModelSourceError(
            f"model {ref!r} is not a local folder and could not be fetched from the Hub (offline?)",
            hint="check the id, your network, or pass a local folder",
        ) from None
    except HfHubHTTPError as exc:
        raise ModelSourceError(f"cannot fetch {ref!r} from the Hub: {exc}") from None
    check_model_files(local, allow_pickle=allow_pickle)
    return BaseModel(ref, local, local.name, content_hash(local, cache_dir))
