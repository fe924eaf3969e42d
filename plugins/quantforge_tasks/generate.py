"""Greedy answers for task evaluators: prompt ids in, text out, stopping at end of text, at a
complete answer, or at the token cap (which counts as not stopping)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from quantforge.generation import Sampling, stop_tokens, stream
from quantforge.interfaces import Runtime


def greedy(
    runtime: Runtime,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    complete: Callable[[str], bool],
) -> tuple[str, bool]:
    """``(text, stopped)``: ``stopped`` is False when the cap cut the answer off."""
    text = ""
    for progress in stream(runtime, prompt_ids, Sampling(max_new_tokens), stop_tokens(tokenizer)):
        text = tokenizer.decode(progress.tokens, skip_special_tokens=True)
        if progress.stopped == "end of text" or complete(text):
            return text, True
    return text, False
