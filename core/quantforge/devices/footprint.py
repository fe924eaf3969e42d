"""What a model needs in memory, read from its config and its files: weights as stored,
the KV cache per token, its widths and the longest context it supports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantforge.errors import ModelSourceError
from quantforge.interfaces import format_family
from quantforge.model.artifacts import WEIGHT_SUFFIXES, folder_bytes, is_weight_file

DEFAULT_CONTEXT = 4096  # tokens checked unless asked otherwise (the model's maximum if shorter)


@dataclass(frozen=True)
class Footprint:
    """What fit checks and estimates need to know about one model or variant.

    :ivar weights_bytes: bytes of the weight files as stored (what is loaded).
    :ivar kv_heads: key/value heads (fewer than attention heads under grouped-query attention).
    :ivar max_context: the longest context the model supports, when its config says.
    """

    name: str
    family: str
    weights_bytes: int
    layers: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_context: int | None = None

    def default_context(self, preferred: int = DEFAULT_CONTEXT) -> int:
        """``preferred``, or the model's maximum context when that is shorter."""
        return min(preferred, self.max_context or preferred)

    def kv_bytes(self, context: int, bytes_per_value: float) -> float:
        """Keys and values of every layer for ``context`` tokens."""
        return 2 * self.layers * self.kv_heads * self.head_dim * context * bytes_per_value


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def footprint_from_config(
    name: str, family: str, weights_bytes: int, config: Mapping[str, Any]
) -> Footprint:
    """A footprint from a transformers ``config.json`` and the size of the weights."""
    c = _text_config(config)
    try:
        layers = int(c["num_hidden_layers"])
        heads = int(c["num_attention_heads"])
        hidden = int(c["hidden_size"])
        vocab = int(c["vocab_size"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSourceError(
            f"{name}: config.json lacks {exc} needed to size the KV cache",
            hint="fit needs a decoder config with num_hidden_layers, num_attention_heads, hidden_size",
        ) from None
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or hidden // heads)
    max_context = c.get("max_position_embeddings")
    return Footprint(
        name=name,
        family=family,
        weights_bytes=weights_bytes,
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=vocab,
        max_context=int(max_context) if isinstance(max_context, int) else None,
    )


def _family_of_folder(folder: Path) -> str:
    manifest = folder / "quantforge.json"
    if manifest.exists():
        try:
            return format_family(str(json.loads(manifest.read_text())["format"]))
        except (ValueError, KeyError):
            pass
    names = {p.suffix for p in folder.iterdir() if p.is_file()}
    if ".gguf" in names:
        return "gguf"
    if ".onnx" in names:
        return "onnx"
    if (folder / "openvino_model.xml").exists():
        return "openvino"
    return "hf"


def footprint_of(path: Path) -> Footprint:
    """The footprint of a local model folder (HF, or a quantforge variant of any format)."""
    if not path.exists():
        raise ModelSourceError(f"{str(path)!r} does not exist", hint="pass a model folder")
    if path.is_file():
        raise ModelSourceError(
            f"{str(path)!r} is a file; fit reads a model folder with its config.json",
            hint="pass the folder that holds it",
        )
    config_path = path / "config.json"
    if not config_path.exists():
        raise ModelSourceError(
            f"{str(path)!r} has no config.json to read the model's shape from",
            hint="pass a Hugging Face model folder or a quantforge variant folder",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelSourceError(f"{config_path} is not valid JSON: {exc}") from None
    weights = folder_bytes(path, weights_only=True)
    if not weights:
        raise ModelSourceError(
            f"{str(path)!r} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})"
        )
    return footprint_from_config(path.name, _family_of_folder(path), weights, config)


def footprint_from_hub(ref: str, revision: str | None = None) -> Footprint:
    """The footprint of a Hub model from its config and file sizes, without its weights."""
    try:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ModelSourceError(
            f"{ref!r} is not a local folder, and huggingface_hub is not installed to look it up",
            hint="pip install 'quantforge[hub]'",
        ) from None
    try:
        info = HfApi().model_info(ref, revision=revision, files_metadata=True)
        config_file = hf_hub_download(ref, "config.json", revision=info.sha)
    except LocalEntryNotFoundError:
        raise ModelSourceError(
            f"{ref!r} is not a local folder and could not be looked up on the Hub (offline?)",
            hint="check the id, your network, or pass a local folder",
        ) from None
    except HfHubHTTPError as exc:
        raise ModelSourceError(f"cannot look up {ref!r} on the Hub: {exc}") from None
    files = {s.rfilename: s.size or 0 for s in info.siblings or []}
    weights = sum(size for name, size in files.items() if is_weight_file(name))
    if not weights:
        raise ModelSourceError(f"Hub repo {ref!r} holds no weight files")
    family = "gguf" if any(n.endswith(".gguf") for n in files) else "hf"
    config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    return footprint_from_config(ref, family, weights, config)
