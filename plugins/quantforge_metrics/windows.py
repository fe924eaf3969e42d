"""Sliding-window scoring shared by perplexity and KL: every variant sees the same windows."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from quantforge.interfaces import Runtime


@dataclass
class Scored:
    """Log-probabilities at each scored position and the token that came next."""

    logprobs: torch.Tensor  # [N, vocab] float32
    targets: torch.Tensor  # [N] long


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored token) per window; every token after the first is scored
    exactly once, with up to ``window - stride`` tokens of context carried over."""
    # A window must overlap the previous one by a token: its first token is predicted
    # from the position before it.
    stride = max(1, min(stride, window - 1))
    spans: list[tuple[int, int, int]] = []
    scored_until = 1  # token 0 has no context
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first = max(scored_until, begin + 1)
        if first < end:
            spans.append((begin, end, first))
        scored_until = end
        if end == n_tokens:
            break
    return spans


def scored_logprobs(
    runtime: Runtime,
    token_ids: Sequence[int],
    window: int,
    stride: int,
    max_tokens: int,
    pause: Callable[[], None] = lambda: None,
) -> Scored:
    """Score every window; ``pause`` (:attr:`EvalContext.pause`) is called between them."""
    ids = list(token_ids[:max_tokens])
    if len(ids) < 2:
        raise ValueError("evaluation text has fewer than 2 tokens")
    chunks, targets = [], []
    for begin, end, first in windows(len(ids), window, stride):
        pause()
        logits = runtime.logits(ids[begin:end])  # position i predicts token i + 1
        lp = torch.log_softmax(logits.float(), dim=-1)
        chunks.append(lp[first - 1 - begin : end - 1 - begin])
        targets.extend(ids[first:end])
    return Scored(torch.cat(chunks), torch.tensor(targets, dtype=torch.long))


def perplexity(scored: Scored) -> tuple[float, int]:
    nll = -scored.logprobs.gather(1, scored.targets[:, None]).mean().item()
    return math.exp(nll), len(scored.targets)


def save_reference(scored: Scored, out_dir: Path) -> None:
    torch.save({"logprobs": scored.logprobs, "targets": scored.targets}, out_dir / "reference.pt")


def compare_to_reference(scored: Scored, ref_dir: Path) -> tuple[float, float, int]:
    """Mean KL(base || variant) per token, top-1 agreement, and tokens compared."""
    ref = torch.load(ref_dir / "reference.pt", weights_only=True)
    if not torch.equal(ref["targets"], scored.targets):
        raise ValueError("variant was scored on different tokens than the base")
    p_log = ref["logprobs"]
    kl = (p_log.exp() * (p_log - scored.logprobs)).sum(-1).mean().item()
    top1 = (p_log.argmax(-1) == scored.logprobs.argmax(-1)).float().mean().item()
    return max(kl, 0.0), top1, len(scored.targets)
