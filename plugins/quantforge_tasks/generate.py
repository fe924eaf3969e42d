"""Greedy answers for task evaluators: prompt ids in, text out, stopping at end of text, at a
complete answer, or at the token cap (which counts as not stopping)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from quantforge.interfaces import EvalContext, Runtime
from quantforge.space.generation import Sampling, stop_tokens, stream


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


def base_tokenizer(context: EvalContext, evaluator: str) -> Any:
    """The base model's tokenizer, which every variant shares."""
    from transformers import AutoTokenizer

    if context.base_model is None:
        raise ValueError(f"{evaluator} needs the base model's tokenizer (an older host?)")
    return AutoTokenizer.from_pretrained(context.base_model)
