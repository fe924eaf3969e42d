"""What every generative task shares: JSONL case files read line by line (bad lines named
by number, refused or skipped as the user chooses), per-case results with named checks,
rates with their counts, and the cases a variant newly fails against the base."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from quantforge.errors import UsageError

Case = TypeVar("Case")
BAD_LINES = ("refuse", "skip")


@dataclass(frozen=True)
class CaseResult:
    """One case answered: its JSONL line, the text generated, whether generation ended by
    itself (not cut off by the token cap), and each check passed or not."""

    line: int
    output: str
    stopped: bool
    checks: dict[str, bool]

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "output": self.output, "stopped": self.stopped, **self.checks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        rest = {k: bool(v) for k, v in data.items() if k not in ("line", "output", "stopped")}
        return cls(int(data["line"]), str(data["output"]), bool(data["stopped"]), rest)


def read_jsonl(
    path: Path, parse: Callable[[int, Any], Case], on_bad_lines: str, what: str
) -> tuple[list[Case], list[str]]:
    """``(cases, problems)`` from a JSONL file, ``parse(line_number, value)`` per line.

    ``parse`` raises ``ValueError``/``KeyError``/``TypeError`` on a malformed case. With
    ``on_bad_lines="refuse"`` any problem raises :class:`UsageError` naming the lines;
    with ``"skip"`` the good cases are kept and the problems returned."""
    if on_bad_lines not in BAD_LINES:
        raise UsageError(f"on_bad_lines must be refuse or skip, not {on_bad_lines!r}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read {what} {str(path)!r}: {exc}", hint="give a UTF-8 JSONL file"
        ) from None
    cases: list[Case] = []
    problems: list[str] = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            cases.append(parse(number, json.loads(text)))
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, json.JSONDecodeError):
                reason = f"not JSON ({exc.msg} at column {exc.colno})"
            else:
                reason = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            problems.append(f"line {number}: {reason.splitlines()[0]}")
    if problems and on_bad_lines == "refuse":
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise UsageError(
            f"{path}: {len(problems)} malformed {'line' if len(problems) == 1 else 'lines'} "
            f"({shown})",
            hint="fix them, or set on_bad_lines=skip to evaluate the rest",
        )
    if not cases:
        raise UsageError(f"{path} holds no {what}", hint="one JSON object per line")
    return cases, problems


def fingerprint(path: Path) -> str:
    """A short digest of a file's bytes, for cache keys and provenance."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def summarize(results: Sequence[CaseResult]) -> dict[str, tuple[int, int]]:
    """``{check: (passed, total)}`` in the order the checks were made."""
    total = len(results)
    names = list(results[0].checks) if results else []
    return {n: (sum(r.checks[n] for r in results), total) for n in names}


def newly_failed(
    base: Sequence[CaseResult], variant: Sequence[CaseResult], check: str
) -> list[int]:
    """Lines where the base passes ``check`` and the variant does not."""
    passed = {r.line for r in base if r.checks.get(check)}
    return sorted(r.line for r in variant if r.line in passed and not r.checks.get(check))
