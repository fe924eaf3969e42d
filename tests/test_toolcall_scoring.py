"""Tool-calling scoring (work in progress for issue 8): pure functions, no model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from quantforge.errors import UsageError
from quantforge.testing import toolcalls as synthetic
from quantforge_tasks.toolcall import extract_call, load_cases, newly_failed, score, summarize


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_scores_separate_json_name_arguments_and_schema(tmp_path: Path) -> None:
    case = load_cases(_write(tmp_path / "c.jsonl", synthetic.cases(1, seed=3))).cases[0]
    right = json.dumps(case.expected)
    assert score(case, "Call: " + right + "\ntrailing", stopped=True).passed
    assert not score(case, right, stopped=False).json_valid  # cut off by the token cap
    assert not score(case, "{not json", stopped=True).json_valid
    wrong_name = score(case, json.dumps({"name": "nope", "arguments": {}}), stopped=True)
    assert wrong_name.json_valid and not wrong_name.name_ok
    args = dict(case.expected["arguments"])
    key = next(iter(args))
    args[key] = 12345 if isinstance(args[key], str) else "x"
    bad = score(case, json.dumps({"name": case.expected["name"], "arguments": args}), True)
    assert bad.name_ok and not bad.args_exact and not bad.args_valid
    assert extract_call('junk {"a": 1} {"b": 2}') == {"a": 1}


def test_summaries_count_and_new_failures_compare_with_the_base(tmp_path: Path) -> None:
    cases = load_cases(_write(tmp_path / "c.jsonl", synthetic.cases(4, seed=1))).cases
    base = [score(c, json.dumps(c.expected), True) for c in cases]
    variant = [*base[:2], *(score(c, "{}", True) for c in cases[2:])]
    assert summarize(variant)["tool_name_accuracy"] == (2, 4)
    assert newly_failed(base, variant) == [3, 4]


def test_bad_lines_are_named_and_skippable_and_bad_schemas_refused(tmp_path: Path) -> None:
    good = synthetic.cases(2, seed=2)
    path = _write(tmp_path / "c.jsonl", [good[0], "{oops", {"request": "x"}, good[1]])
    with pytest.raises(UsageError, match="2 malformed lines.*line 2.*line 3"):
        load_cases(path)
    report = load_cases(path, on_bad_lines="skip")
    assert [c.line for c in report.cases] == [1, 4] and len(report.problems) == 2
    broken = dict(good[0])
    broken["tools"] = [{"name": good[0]["expected"]["name"], "parameters": {"type": "objekt"}}]
    with pytest.raises(UsageError, match="line 1: the parameters of tool .* not valid JSON Schema"):
        load_cases(_write(tmp_path / "s.jsonl", [broken]))
