"""Mixed precision: per-module overrides written ``PATTERN=BITS|skip;...``.

Patterns are regular expressions searched in module names (``layers\\.0\\.``
matches every module of block 0). The last matching rule wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from quantforge.errors import OptionError

Rule = tuple[str, int | None]  # (pattern, bits; None means: leave unquantized)


def parse_overrides(method: str, text: str, allowed_bits: Iterable[int]) -> list[Rule]:
    allowed = sorted(set(allowed_bits))
    rules: list[Rule] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        pattern, eq, value = part.rpartition("=")
        if not eq or not pattern:
            raise OptionError(
                method, "overrides", f"entry {part!r} is not PATTERN=BITS or PATTERN=skip"
            )
        try:
            re.compile(pattern)
        except re.error as exc:
            raise OptionError(
                method, "overrides", f"pattern {pattern!r} is not a regex ({exc})"
            ) from None
        if value == "skip":
            rules.append((pattern, None))
        elif value.isdigit() and int(value) in allowed:
            rules.append((pattern, int(value)))
        else:
            choices = ", ".join(map(str, allowed))
            raise OptionError(
                method, "overrides", f"{value!r} in {part!r} must be {choices} or skip"
            )
    return rules


def bits_for(name: str, rules: list[Rule], default: int) -> int | None:
    """The bits ``name`` gets under ``rules`` (``None``: unquantized)."""
    bits: int | None = default
    for pattern, value in rules:
        if re.search(pattern, name):
            bits = value
    return bits
