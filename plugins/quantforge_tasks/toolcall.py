"""Tool-calling cases and their scoring: JSON validity, the tool chosen, exact arguments,
and arguments valid against the tool's JSON Schema (jsonschema).

A case is one JSONL line::

    {"request": "Weather in Oslo in celsius?",
     "tools": [{"name": "get_weather", "parameters": {...JSON Schema...}}, ...],
     "expected": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}}

A model may answer with ``arguments`` or ``parameters`` (Llama 3's spelling), inside any
text (``<tool_call>...</tool_call>``): the first complete JSON object is the call.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantforge.errors import UsageError

from quantforge_tasks.cases import CaseResult, read_jsonl

PLAIN_PROMPT = "Tools: {tools}\nRequest: {request}\nCall:"


def plain_prompt(tools: Sequence[dict[str, Any]], request: str) -> str:
    """The prompt for a tokenizer without a chat template: tool names, request, "Call: "."""
    return PLAIN_PROMPT.format(tools=", ".join(t["name"] for t in tools), request=request)


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


def load_cases(path: Path, on_bad_lines: str = "refuse") -> tuple[list[ToolCase], list[str]]:
    """The cases of a JSONL file and the problems of skipped lines; tool schemas that are
    not JSON Schema are refused, named by line."""
    cases, problems = read_jsonl(path, _case, on_bad_lines, "tool-calling cases")
    check_schemas(cases)
    return cases, problems


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
        schema = case.schema(case.expected["name"]) or {}
        arguments = case.expected.get("arguments", {})
        error = jsonschema.exceptions.best_match(
            jsonschema.validators.validator_for(schema)(schema).iter_errors(arguments)
        )
        if error is not None:
            raise UsageError(
                f"line {case.line}: the expected arguments break the schema of tool "
                f"{case.expected['name']!r} ({error.message})",
                hint="fix the expected call or the schema",
            )


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


CHECKS = ("tool_json_valid", "tool_name_accuracy", "tool_args_exact", "tool_args_schema_valid")


def score(case: ToolCase, output: str, stopped: bool) -> CaseResult:
    """Score one generated answer against the expected call. An answer cut off by the
    token cap is not valid JSON, whatever it holds."""
    import jsonschema

    call = extract_call(output)
    valid = isinstance(call, dict) and stopped
    name = call.get("name") if isinstance(call, dict) else None
    arguments = None
    if isinstance(call, dict):
        arguments = call.get("arguments", call.get("parameters"))
    name_ok = valid and name == case.expected["name"]
    exact = name_ok and arguments == case.expected.get("arguments", {})
    schema = case.schema(str(name)) if name_ok else None
    args_valid = False
    if name_ok and isinstance(arguments, dict) and schema is not None:
        args_valid = jsonschema.validators.validator_for(schema)(schema).is_valid(arguments)
    checks = dict(zip(CHECKS, (valid, name_ok, exact, args_valid), strict=True))
    return CaseResult(case.line, output, stopped, checks)


def prompt_ids(tokenizer: Any, case: ToolCase) -> list[int]:
    """The request through the chat template with the tools (OpenAI function layout) when
    the tokenizer has one that renders them; else the plain prompt (tool names, request)."""
    from quantforge.space.generation import prompt_tokens

    if getattr(tokenizer, "chat_template", None):
        tools = [{"type": "function", "function": tool} for tool in case.tools]
        ids = prompt_tokens(tokenizer, case.request, tools)
        rendered = tokenizer.decode(ids)
        if all(tool["name"] in rendered for tool in case.tools):
            return ids
    return prompt_tokens(tokenizer, plain_prompt(case.tools, case.request))
