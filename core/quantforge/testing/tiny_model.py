"""Build a tiny Llama-architecture causal LM and its tokenizer, locally and deterministically.

The text is Python's own standard-library source, which every machine with
Python has: a Llama-2-style BPE (byte fallback) is trained on it, then the model is trained for a
short while so that perplexity, KL divergence and top-1 agreement mean
something. Every dimension is a multiple of 256 (llama.cpp k-quants need rows
divisible by 256). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quantforge.model.texts import STDLIB_TRAIN_CHARS, stdlib_signature, stdlib_training_text

CORPORA = {
    "stdlib": "Python standard-library source",
    "toolcalls": "a synthetic tool-calling corpus (requests and their JSON calls)",
}


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and training budget of a tiny model. Same spec, same machine: same weights."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 512
    train_steps: int = 200
    batch_size: int = 8
    seq_len: int = 128
    learning_rate: float = 1e-3
    train_chars: int = STDLIB_TRAIN_CHARS
    seed: int = 0
    # Llama-2 style: Metaspace pre-tokenizer and byte fallback, which llama.cpp's converter reads
    tokenizer: str = "llama-bpe-byte-fallback"
    # "stdlib": Python's standard library; "toolcalls": the synthetic tool-calling corpus
    corpus: str = "stdlib"

    def key(self) -> str:
        fields = asdict(self)
        if fields["corpus"] == "stdlib":
            del fields["corpus"]  # keys from before the field existed stay valid
        blob = json.dumps(fields, sort_keys=True) + stdlib_signature()
        if self.corpus == "toolcalls":
            from quantforge_tasks.synthetic import training_text as toolcall_text

            blob += hashlib.sha256(
                toolcall_text(self.train_chars // 100, self.seed).encode()
            ).hexdigest()
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# A tiny model that calls tools: trained on the synthetic tool-calling corpus (answers only)
# until the base solves most of the built-in held-out cases; task evaluators' tests and
# `quantforge demo --tasks` use it.
TOOLCALL_MODEL = TinyModelSpec(
    corpus="toolcalls",
    vocab_size=512,  # the corpus has fewer merges than 1024 tokens; llama.cpp needs all used
    max_positions=256,
    train_steps=300,
    train_chars=400_000,
    learning_rate=2e-3,
)


def default_cache_dir() -> Path:
    root = os.environ.get("QUANTFORGE_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "quantforge"
    return base / "tiny-models"


def build_tiny_model(
    spec: TinyModelSpec | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Return a folder holding the tiny model (``config.json``, safetensors, tokenizer).

    Built once per spec and cached; the folder appears only when complete.
    """
    spec = spec or TinyModelSpec()
    cache_dir = cache_dir or default_cache_dir()
    final = cache_dir / f"tiny-llama-{spec.key()}"
    if (final / "model.safetensors").exists():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
    try:
        _build(spec, tmp, log or (lambda _msg: None))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not (final / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build(spec: TinyModelSpec, out: Path, log: Callable[[str], None]) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if spec.corpus not in CORPORA:
        raise ValueError(f"unknown corpus {spec.corpus!r}; known: {', '.join(CORPORA)}")
    if spec.corpus == "toolcalls":
        from quantforge_tasks.synthetic import training_text as toolcall_text

        text = toolcall_text(spec.train_chars // 100, seed=spec.seed)
    else:
        text = stdlib_training_text(spec.train_chars)
    started = time.perf_counter()
    # The layout of Llama 2's tokenizer.json: BPE over "▁"-joined words, unknown characters
    # fall back to <0xNN> byte tokens. llama.cpp's converter reads it as a "llama" vocab.
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))],
        limit_alphabet=200,
        show_progress=False,
    )
    chunks = [text[i : i + 10_000] for i in range(0, len(text), 10_000)]
    tok.train_from_iterator(chunks, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.model_max_length = spec.max_positions
    log(f"tokenizer trained ({len(tokenizer)} tokens) in {time.perf_counter() - started:.1f}s")

    torch.manual_seed(spec.seed)
    shape: dict[str, Any] = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    config = LlamaConfig(**shape)
    model = LlamaForCausalLM(config)
    encoded = tokenizer(text, return_offsets_mapping=True)
    ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
    labels = ids.clone()
    if spec.corpus == "toolcalls":
        # learn the answers only: copying arguments out of the request is the skill, and
        # the requests' own words would drown it out at this budget
        from quantforge_tasks.synthetic import answer_spans

        inside = torch.zeros(len(text) + 1, dtype=torch.bool)
        for start, end in answer_spans(text):
            inside[start:end] = True
        starts = torch.tensor([a for a, _ in encoded["offset_mapping"]], dtype=torch.long)
        labels[~inside[starts]] = -100
    n_seq = (len(ids) - 1) // spec.seq_len
    data = ids[: n_seq * spec.seq_len].view(n_seq, spec.seq_len)
    targets = labels[: n_seq * spec.seq_len].view(n_seq, spec.seq_len)
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=spec.learning_rate, total_steps=spec.train_steps, pct_start=0.1
    )
    model.train()
    started = time.perf_counter()
    for step in range(spec.train_steps):
        rows = torch.randint(0, n_seq, (spec.batch_size,), generator=generator)
        loss = model(input_ids=data[rows], labels=targets[rows]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0 or step == spec.train_steps - 1:
            log(f"step {step + 1}/{spec.train_steps} loss {loss.item():.3f}")
    log(f"trained {spec.train_steps} steps in {time.perf_counter() - started:.1f}s")
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(
        "---\nlicense: apache-2.0\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n"
        "# tiny-llama\n\nA tiny Llama trained by `quantforge.testing.build_tiny_model` on "
        f"{CORPORA[spec.corpus]} for {spec.train_steps} steps. For tests and demos only.\n",
        encoding="utf-8",
    )
    (out / "quantforge-tiny.json").write_text(json.dumps(asdict(spec), indent=2), encoding="utf-8")
