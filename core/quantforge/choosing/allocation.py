"""Choosing a width per tensor to a budget: a multiple-choice knapsack over measured costs.

Each tensor has a few ways to be stored (:class:`Choice`: a type or width, its bytes, and the
KL divergence it adds when it alone is stored that way). :func:`choose` picks one per tensor
minimising the summed KL with the total bytes within a budget; :func:`choose_for_kl` the
smallest total whose optimum meets a KL budget. Quantizers that build to a budget
(``Quantizer.budget_options``) measure the costs their own way and share this.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BINS = 20_000  # resolution of the size axis of the knapsack


@dataclass(frozen=True)
class Choice:
    """One way to store a tensor: its type or width (``"Q4_K"``, ``"4"``), its bytes, and the
    KL divergence it adds alone."""

    type: str
    nbytes: int
    kl: float


@dataclass
class Sensitivity:
    """What each tensor to decide costs each way it can be stored, and what the rest weighs."""

    choices: dict[str, list[Choice]]  # tensor name -> its choices, smallest first
    fixed_bytes: int  # tensors not decided (norms, tensors no choice applies to)
    params: int  # every tensor's element count (for bits per weight)
    overhead_bytes: int  # what is not tensor data: headers, metadata, alignment

    def as_dict(self) -> dict[str, Any]:
        return {
            "choices": {
                name: [[c.type, c.nbytes, c.kl] for c in options]
                for name, options in self.choices.items()
            },
            "fixed_bytes": self.fixed_bytes,
            "params": self.params,
            "overhead_bytes": self.overhead_bytes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        return cls(
            {
                n: [Choice(str(t), int(b), float(k)) for t, b, k in o]
                for n, o in data["choices"].items()
            },
            int(data["fixed_bytes"]),
            int(data["params"]),
            int(data["overhead_bytes"]),
        )

    @classmethod
    def load(cls, path: Path) -> Sensitivity | None:
        """A table :meth:`save` wrote, or ``None`` when there is none (or it is unreadable)."""
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        """Write the table to ``path`` whole or not at all (a temporary file, then renamed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(self.as_dict()), encoding="utf-8")
        partial.replace(path)


def choose(sensitivity: Sensitivity, budget_bytes: float) -> dict[str, Choice] | None:
    """The type per matrix that minimises the summed KL with every tensor's bytes (decided
    and fixed) at most ``budget_bytes``; ``None`` when even the smallest types exceed it."""
    import numpy as np

    names = sorted(sensitivity.choices)
    floor = sum(sensitivity.choices[n][0].nbytes for n in names)
    room = budget_bytes - sensitivity.fixed_bytes - floor
    if room < 0:
        return None
    spread = sum(
        sensitivity.choices[n][-1].nbytes - sensitivity.choices[n][0].nbytes for n in names
    )
    if spread <= room:  # everything at its largest type fits
        return {n: sensitivity.choices[n][-1] for n in names}
    unit = room / BINS
    inf = math.inf
    best = np.full(BINS + 1, inf)
    best[0] = 0.0
    picks = np.zeros((len(names), BINS + 1), dtype=np.int8)
    for i, name in enumerate(names):
        options = sensitivity.choices[name]
        low = options[0].nbytes
        nxt = np.full(BINS + 1, inf)
        pick = np.zeros(BINS + 1, dtype=np.int8)
        for j, option in enumerate(options):
            w = math.ceil((option.nbytes - low) / unit) if unit > 0 else 0
            if w > BINS:
                continue
            shifted = np.full(BINS + 1, inf)
            shifted[w:] = best[: BINS + 1 - w] + option.kl
            better = shifted < nxt
            nxt[better] = shifted[better]
            pick[better] = j
        best = nxt
        picks[i] = pick
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        return None
    chosen: dict[str, Choice] = {}
    for i in range(len(names) - 1, -1, -1):
        option = sensitivity.choices[names[i]][int(picks[i, end])]
        chosen[names[i]] = option
        low = sensitivity.choices[names[i]][0].nbytes
        end -= math.ceil((option.nbytes - low) / unit) if unit > 0 else 0
    return chosen


def choose_for_kl(sensitivity: Sensitivity, max_kl: float) -> dict[str, Choice] | None:
    """The smallest choice whose predicted KL is at most ``max_kl`` (bisection over the size
    budget, within 0.1 % of the total); ``None`` when even the largest types exceed it."""
    names = sorted(sensitivity.choices)
    high = float(sensitivity.fixed_bytes + sum(sensitivity.choices[n][-1].nbytes for n in names))
    low = float(sensitivity.fixed_bytes + sum(sensitivity.choices[n][0].nbytes for n in names))
    largest = {n: sensitivity.choices[n][-1] for n in names}
    if predicted_kl(largest) > max_kl:
        return None
    best = largest
    while high - low > 0.001 * high:
        middle = (low + high) / 2
        found = choose(sensitivity, middle)
        if found is not None and predicted_kl(found) <= max_kl:
            best, high = found, middle
        else:
            low = middle
    return best


def predicted_kl(chosen: Mapping[str, Choice]) -> float:
    return sum(c.kl for c in chosen.values())


def file_bytes(sensitivity: Sensitivity, chosen: Mapping[str, Choice]) -> int:
    """The size the mix's file will have: its tensors, the fixed ones and the header."""
    return (
        sum(c.nbytes for c in chosen.values())
        + sensitivity.fixed_bytes
        + sensitivity.overhead_bytes
    )
