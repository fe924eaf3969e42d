"""What a search must meet, as a recipe or the command line states it.

These types sit below both the recipe (a ``[search]`` table) and the search that reads
them, so neither imports the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quantforge.errors import UsageError


@dataclass(frozen=True)
class Constraints:
    """What the answer must meet. ``max_ppl_increase`` is a fraction (0.02 for 2 %)."""

    target: str
    max_kld: float | None = None
    max_ppl_increase: float | None = None
    min_decode_tps: float | None = None
    context: int | None = None
    # a size budget: the search then answers the lowest KL within it (MB are 10^6 bytes)
    max_size_mb: float | None = None
    bpw: float | None = None

    @property
    def size_budget(self) -> bool:
        return self.max_size_mb is not None or self.bpw is not None

    def check(self, require_one: bool = True) -> None:
        """Refuse constraints that contradict themselves or (with ``require_one``) bind nothing."""
        unbound = self.max_kld is None and self.max_ppl_increase is None
        if require_one and unbound and self.min_decode_tps is None and not self.size_budget:
            raise UsageError(
                "no constraint given",
                hint="pass --max-size, --bpw, --max-kld, --max-ppl-increase or --min-decode-tps",
            )
        if self.max_size_mb is not None and self.bpw is not None:
            raise UsageError(
                "--max-size and --bpw both state a size budget", hint="pass one of them"
            )
        if self.max_size_mb is not None and self.max_size_mb <= 0:
            raise UsageError(f"--max-size must be above 0 MB, not {self.max_size_mb:g}")
        if self.bpw is not None and not 1 <= self.bpw <= 32:
            raise UsageError(
                f"--bpw {self.bpw:g} is not a width a weight can have",
                hint="give bits per weight between 1 and 32, such as 4.5",
            )
        if self.max_kld is not None and self.max_kld <= 0:
            raise UsageError(
                f"--max-kld {self.max_kld:g} cannot be met: KL divergence is above 0 for any "
                "change to the model",
                hint="give a positive budget such as 0.03",
            )
        if self.max_ppl_increase is not None and self.max_ppl_increase < 0:
            raise UsageError(
                f"--max-ppl-increase {self.max_ppl_increase:.1%} asks quantization to lower "
                "perplexity",
                hint="give the increase you accept, such as 2%",
            )
        if self.min_decode_tps is not None and self.min_decode_tps <= 0:
            raise UsageError(f"--min-decode-tps must be above 0, not {self.min_decode_tps:g}")
        if self.context is not None and self.context < 1:
            raise UsageError(f"--context must be at least 1 token, not {self.context}")

    def describe(self) -> str:
        parts: list[str] = []
        if self.max_size_mb is not None:
            parts.append(f"size <= {self.max_size_mb:g} MB")
        if self.bpw is not None:
            parts.append(f"<= {self.bpw:g} bits per weight")
        if self.max_kld is not None:
            parts.append(f"KL <= {self.max_kld:g}")
        if self.max_ppl_increase is not None:
            parts.append(f"perplexity +{self.max_ppl_increase:.1%} at most")
        if self.min_decode_tps is not None:
            parts.append(f"decode >= {self.min_decode_tps:g} tok/s")
        return ", ".join(parts) or "no constraints"


@dataclass(frozen=True)
class SearchSettings:
    """A recipe's ``[search]`` table: the constraints, the time bound, the methods to try."""

    constraints: Constraints
    budget_minutes: float | None = None
    methods: tuple[str, ...] = ()


def parse_percent(text: str) -> float:
    """``"2%"`` or ``"0.02"`` -> 0.02."""
    value = text.strip()
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise UsageError(f"{text!r} is not a percentage", hint="write e.g. 2% or 0.02") from None


def parse_size_mb(text: str) -> float:
    """``100MB``, ``0.1GB``, ``95.5`` (MB) -> megabytes (10^6 bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(kb|mb|gb|)\s*", text.lower())
    if not match:
        raise UsageError(
            f"--max-size {text!r} is not a size", hint="write it like 100MB, 0.5GB or 95.5"
        )
    scale = {"kb": 1e-3, "mb": 1.0, "gb": 1e3, "": 1.0}[match[2]]
    return float(match[1]) * scale
