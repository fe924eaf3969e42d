"""Short-answer tasks scored by exact match: arithmetic and multi-step word problems.

A case is one JSONL line, ``{"question": "...", "answer": "19"}`` (the answer may be a JSON
number). The answer is read from the generated text with a regular expression (its first
group when it has one, else the whole match; the first match counts). Answers compare
as numbers when both read as numbers (``19.0`` is ``19``, ``1,000`` is ``1000``), else as
text without case or surrounding space and punctuation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantforge.errors import UsageError

from quantforge_tasks.cases import CaseResult, read_jsonl

DEFAULT_PROMPT = "Question: {question}\nAnswer with a number only.\nAnswer:"
DEFAULT_REGEX = r"-?\d[\d,]*(?:\.\d+)?"
CHECK = "exact_match"


@dataclass(frozen=True)
class QACase:
    line: int
    question: str
    answer: str


def _case(number: int, data: Any) -> QACase:
    if not isinstance(data, dict):
        raise TypeError("a case is a JSON object with a question and an answer")
    answer = data["answer"]
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise TypeError("answer must be a string or a number")
    return QACase(number, str(data["question"]), str(answer))


def load_cases(path: Path, on_bad_lines: str = "refuse") -> tuple[list[QACase], list[str]]:
    """The cases of a JSONL file and the problems of skipped lines."""
    return read_jsonl(path, _case, on_bad_lines, "question/answer cases")


def compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UsageError(
            f"answer_regex {pattern!r} is not a regular expression: {exc}",
            hint=f"e.g. answer_regex='{DEFAULT_REGEX}'",
        ) from None
    if compiled.groups > 1:
        raise UsageError(
            f"answer_regex {pattern!r} has {compiled.groups} groups; use at most one",
            hint="make the others non-capturing: (?:...)",
        )
    return compiled


def check_prompt(template: str) -> None:
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(
            f"prompt {template!r} is not a template with one {{question}} field ({exc})",
            hint="write {{ and }} for literal braces",
        ) from None
    if "{question}" not in template:
        raise UsageError(f"prompt {template!r} has no {{question}} field")


def extract(output: str, regex: re.Pattern[str]) -> str | None:
    match = regex.search(output)
    if match is None:
        return None
    return match.group(1) if regex.groups else match.group(0)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def same_answer(got: str, expected: str) -> bool:
    a, b = _number(got), _number(expected)
    if a is not None and b is not None:
        return a == b
    strip = " \t\n.,;:!?\"'"
    return got.strip(strip).casefold() == expected.strip(strip).casefold()


def score(case: QACase, output: str, stopped: bool, regex: re.Pattern[str]) -> CaseResult:
    """An answer cut off by the token cap fails, whatever it holds."""
    got = extract(output, regex)
    ok = stopped and got is not None and same_answer(got, case.answer)
    return CaseResult(case.line, output, stopped, {CHECK: ok})
