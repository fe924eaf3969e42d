"""Tool-calling cases and their scoring: JSON validity, the tool chosen, exact arguments,
and arguments valid against the tool's JSON Schema (jsonschema).

A case is one JSONL line::

    {"request": "Weather in Oslo in celsius?",
     "tools": [{"name": "get_weather", "parameters": {...JSON Schema...}}, ...],
     "expected": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}

Work in progress for issue 8: the evaluator that generates with a variant wraps this.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.errors import UsageError


@dataclass(frozen=True)
class ToolCase:
    line: int
    request: str
    tools: list[dict[str, Any]]
    expected: dict[str, Any]

    def schema(self, name: str) -> dict[str, Any] | None:
        for tool in self.tools:
            if tool.get("name") == name:
                parameters: dict[str, Any] = tool.get("parameters") or {}
                return parameters
        return None


@dataclass(frozen=True)
class CaseScore:
    line: int
    output: str
    json_valid: bool
    name_ok: bool
    args_exact: bool
    args_valid: bool
    stopped: bool  # ended by itself (not cut off by the token cap)

    @property
    def passed(self) -> bool:
        return self.json_valid and self.name_ok and self.args_exact and self.args_valid


@dataclass
class LoadReport:
    cases: list[ToolCase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "line 7: ..." per bad line


def load_cases(path: Path, on_bad_lines: str = "refuse") -> LoadReport:
    """Read a JSONL file of cases. Bad lines are named by number; ``refuse`` raises on
    the first report, ``skip`` keeps the good ones and returns the problems."""
    if on_bad_lines not in ("refuse", "skip"):
        raise UsageError(f"on_bad_lines must be refuse or skip, not {on_bad_lines!r}")
    report = LoadReport()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read tool-calling cases {str(path)!r}: {exc}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            report.cases.append(_case(number, json.loads(text)))
        except (ValueError, KeyError, TypeError) as exc:
            report.problems.append(f"line {number}: {_why(exc)}")
    if report.problems and on_bad_lines == "refuse":
        raise UsageError(
            f"{path}: {len(report.problems)} malformed lines ({'; '.join(report.problems[:3])})",
            hint="fix them, or set on_bad_lines=skip to evaluate the rest",
        )
    if not report.cases:
        raise UsageError(f"{path} holds no tool-calling cases")
    check_schemas(report.cases)
    return report


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    return str(exc).splitlines()[0]


def _case(number: int, data: Any) -> ToolCase:
    if not isinstance(data, dict):
        raise TypeError("a case is a JSON object")
    tools = data["tools"]
    expected = data["expected"]
    if not isinstance(tools, list) or not all(isinstance(t, dict) and "name" in t for t in tools):
        raise TypeError("tools must be a list of objects with a name")
    if not isinstance(expected, dict) or "name" not in expected:
        raise TypeError("expected must be an object with a name and arguments")
    if expected["name"] not in {t["name"] for t in tools}:
        raise TypeError(f"expected tool {expected['name']!r} is not among the tools")
    return ToolCase(number, str(data["request"]), tools, expected)


def check_schemas(cases: Iterable[ToolCase]) -> None:
    """Refuse a tool whose ``parameters`` is not a valid JSON Schema (named by line)."""
    import jsonschema

    for case in cases:
        for tool in case.tools:
            schema = tool.get("parameters") or {}
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise UsageError(
                    f"line {case.line}: the parameters of tool {tool['name']!r} are not valid "
                    f"JSON Schema ({exc.message})",
                    hint="fix the schema (https://json-schema.org)",
                ) from None


def extract_call(text: str) -> Any:
    """The first complete JSON object in ``text``, or ``None``."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text[start:])
            return value
        except ValueError:
            start = text.find("{", start + 1)
    return None


def score(case: ToolCase, output: str, stopped: bool) -> CaseScore:
    """Score one generated answer against the expected call."""
    import jsonschema

    call = extract_call(output)
    valid = isinstance(call, dict) and stopped
    name = call.get("name") if isinstance(call, dict) else None
    arguments = call.get("arguments") if isinstance(call, dict) else None
    name_ok = valid and name == case.expected["name"]
    exact = name_ok and arguments == case.expected.get("arguments", {})
    schema = case.schema(str(name)) if name_ok else None
    args_valid = False
    if name_ok and isinstance(arguments, dict) and schema is not None:
        args_valid = jsonschema.validators.validator_for(schema)(schema).is_valid(arguments)
    return CaseScore(case.line, output, valid, name_ok, exact, args_valid, stopped)


def summarize(scores: Sequence[CaseScore]) -> dict[str, tuple[int, int]]:
    """``{metric: (passed, total)}`` for json_valid, tool_name, args_exact, args_schema."""
    total = len(scores)
    return {
        "tool_json_valid": (sum(s.json_valid for s in scores), total),
        "tool_name_accuracy": (sum(s.name_ok for s in scores), total),
        "tool_args_exact": (sum(s.args_exact for s in scores), total),
        "tool_args_schema_valid": (sum(s.args_valid for s in scores), total),
    }


def newly_failed(base: Sequence[CaseScore], variant: Sequence[CaseScore]) -> list[int]:
    """Lines the base passes and the variant fails."""
    passed = {s.line for s in base if s.passed}
    return sorted(s.line for s in variant if s.line in passed and not s.passed)
