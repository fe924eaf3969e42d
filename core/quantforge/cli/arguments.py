"""Command-line values checked as they are parsed: numbers in range, sizes with units, and a
parser whose mistakes are one ``Error:`` line (with the command's ``--help``), exit 2."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that reports a bad command line in one line."""

    def error(self, message: str) -> NoReturn:
        print(f"Error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def number(
    kind: type[int] | type[float],
    *,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> Callable[[str], float]:
    """An argparse ``type`` that reads an int or a finite float and checks its range."""
    words = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {words}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be above {above:g}, not {text}")
        if at_least is not None and value < at_least:
            raise argparse.ArgumentTypeError(f"must be at least {at_least:g}, not {text}")
        if at_most is not None and value > at_most:
            raise argparse.ArgumentTypeError(f"must be at most {at_most:g}, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE = number(float, above=0)
FINITE = number(float)
COUNT = number(int, at_least=1)
PORT = number(int, at_least=1, at_most=65535)


def size_bytes(text: str) -> int:
    """``512MB``, ``4GB`` or ``1.5G`` (a bare number is MB) -> bytes, above 0."""
    from quantforge.running.recipe import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
