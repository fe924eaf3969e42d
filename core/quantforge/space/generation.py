"""Generation for people watching: token by token, greedy or sampled, timed live.

The Space streams several variants side by side with this. Each variant's clock runs
only around its own model calls, so interleaving variants on one machine does not
charge one variant for another's work. With the same seed every variant draws the same
uniform numbers, one per token, so where two outputs part shows where their
distributions differ rather than where their random streams did.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantforge.errors import UsageError
from quantforge.interfaces import Runtime


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: ``temperature`` 0 is greedy; ``seed`` fixes the random draws."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise UsageError(f"temperature must be 0 (greedy) or more, not {self.temperature}")


@dataclass
class Progress:
    """What one variant's generation has produced so far."""

    tokens: list[int] = field(default_factory=list)
    prefill_seconds: float | None = None  # time to first token (the prompt's forward)
    decode_seconds: float = 0.0  # every later model call
    decode_steps: int = 0
    stopped: str | None = None  # "end of text", "max new tokens", "time limit"

    @property
    def decode_tps(self) -> float | None:
        """Tokens per second after the first token (``None`` until one decode step ran)."""
        if self.decode_steps == 0 or self.decode_seconds <= 0:
            return None
        return self.decode_steps / self.decode_seconds


def pick(logits: Any, temperature: float, uniform: float) -> int:
    """The token for ``logits`` (1-D): argmax when ``temperature`` is 0, otherwise the
    inverse-CDF draw of ``uniform`` from the softmax at that temperature."""
    import numpy as np

    values = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(values.argmax())
    scaled = (values - values.max()) / temperature
    probs = np.exp(scaled)
    cdf = np.cumsum(probs / probs.sum())
    index = int(np.searchsorted(cdf, uniform, side="right"))
    return min(index, len(cdf) - 1)


def stream(
    runtime: Runtime,
    prompt_ids: Sequence[int],
    sampling: Sampling,
    stop_ids: Collection[int] = (),
    deadline: float | None = None,
) -> Iterator[Progress]:
    """Yield the growing :class:`Progress` after every token until ``sampling.max_new_tokens``,
    a token in ``stop_ids``, or ``deadline`` (a ``time.monotonic()`` value) ends it."""
    import numpy as np

    sampling.check()
    rng = np.random.default_rng(sampling.seed)
    progress = Progress()
    decoding = runtime.decoder(len(prompt_ids) + sampling.max_new_tokens)
    feed: Sequence[int] = list(prompt_ids)
    while True:
        start = time.perf_counter()
        logits = decoding.feed(feed)
        token = pick(logits, sampling.temperature, float(rng.random()))
        spent = time.perf_counter() - start
        if progress.prefill_seconds is None:
            progress.prefill_seconds = spent
        else:
            progress.decode_seconds += spent
            progress.decode_steps += 1
        if token in stop_ids:
            progress.stopped = "end of text"
        else:
            progress.tokens.append(token)
            if len(progress.tokens) >= sampling.max_new_tokens:
                progress.stopped = "max new tokens"
            elif deadline is not None and time.monotonic() > deadline:
                progress.stopped = "time limit"
        yield progress
        if progress.stopped:
            return
        feed = [token]


def first_divergence(reference: Sequence[int], tokens: Sequence[int]) -> int | None:
    """Index of the first token where ``tokens`` leaves ``reference`` (``None``: no
    difference within the shorter of the two)."""
    for index, (a, b) in enumerate(zip(reference, tokens, strict=False)):
        if a != b:
            return index
    return None


def prompt_tokens(
    tokenizer: Any, text: str, tools: Sequence[Mapping[str, Any]] | None = None
) -> list[int]:
    """Token ids of a user message: through the tokenizer's chat template when it has one
    (with ``tools`` in the OpenAI function layout, which chat templates render), else the
    plain text with the tokenizer's special tokens."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": text}]
        ids: Any = tokenizer.apply_chat_template(
            messages, tools=list(tools) if tools else None, add_generation_prompt=True
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(text)["input_ids"]
    return [int(i) for i in ids]


def stop_tokens(tokenizer: Any) -> set[int]:
    """The tokenizer's end-of-text ids."""
    eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
