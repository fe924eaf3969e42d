"""Greedy answers for task evaluators: a prompt in, text out, stopping at end of text, at a
complete answer, or at the token cap (which counts as not stopping)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quantforge.generation import Sampling, stream
from quantforge.interfaces import Runtime


def answer(
    runtime: Runtime,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int,
    complete: Callable[[str], bool],
) -> tuple[str, bool]:
    """``(text, stopped)``: ``stopped`` is False when the cap cut the answer off."""
    if getattr(tokenizer, "chat_template", None):
        ids: Any = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(prompt)["input_ids"]
    eos = tokenizer.eos_token_id
    stop_ids = set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
    text = ""
    for progress in stream(runtime, list(ids), Sampling(max_new_tokens), stop_ids):
        text = tokenizer.decode(progress.tokens, skip_special_tokens=True)
        if progress.stopped == "end of text" or complete(text):
            return text, True
    return text, False
