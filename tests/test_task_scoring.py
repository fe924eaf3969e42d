"""Scoring of task evaluators without a model: tool calls, exact answers, case files,
lm-eval's result layout, and how counts show in tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from quantforge.errors import UsageError
from quantforge.store.table import format_value
from quantforge_tasks import synthetic
from quantforge_tasks.cases import newly_failed, summarize
from quantforge_tasks.exact_match import compile_regex, same_answer
from quantforge_tasks.exact_match import load_cases as load_questions
from quantforge_tasks.exact_match import score as score_answer
from quantforge_tasks.lmeval import measurements
from quantforge_tasks.toolcall import extract_call, load_cases, score


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_tool_calls_score_json_name_arguments_and_schema(tmp_path: Path) -> None:
    case = load_cases(_write(tmp_path / "c.jsonl", synthetic.cases(1, seed=3)))[0][0]
    right = json.dumps(case.expected)
    assert score(case, "<tool_call>" + right + "</tool_call>\ntrailing", stopped=True).passed
    assert not score(case, right, stopped=False).checks["tool_json_valid"]  # hit the cap
    assert not score(case, "{not json", stopped=True).checks["tool_json_valid"]
    wrong_name = score(case, json.dumps({"name": "nope", "arguments": {}}), stopped=True)
    assert wrong_name.checks["tool_json_valid"] and not wrong_name.checks["tool_name_accuracy"]
    args = dict(case.expected["arguments"])
    key = next(iter(args))
    args[key] = 12345 if isinstance(args[key], str) else "x"
    bad = score(case, json.dumps({"name": case.expected["name"], "arguments": args}), True)
    assert bad.checks["tool_name_accuracy"]
    assert not bad.checks["tool_args_exact"] and not bad.checks["tool_args_schema_valid"]
    # Llama 3 spells arguments "parameters"
    llama = {"name": case.expected["name"], "parameters": case.expected["arguments"]}
    assert score(case, json.dumps(llama), True).passed
    assert extract_call('junk {"a": 1} {"b": 2}') == {"a": 1}


def test_rates_count_and_new_failures_compare_with_the_base(tmp_path: Path) -> None:
    cases = load_cases(_write(tmp_path / "c.jsonl", synthetic.cases(4, seed=1)))[0]
    base = [score(c, json.dumps(c.expected), True) for c in cases]
    variant = [*base[:2], *(score(c, "{}", True) for c in cases[2:])]
    assert summarize(variant)["tool_name_accuracy"] == (2, 4)
    assert summarize(variant)["tool_json_valid"] == (4, 4)
    assert newly_failed(base, variant, "tool_name_accuracy") == [3, 4]
    assert newly_failed(base, variant, "tool_json_valid") == []


def test_bad_lines_are_named_skippable_and_bad_schemas_refused(tmp_path: Path) -> None:
    good = synthetic.cases(2, seed=2)
    path = _write(tmp_path / "c.jsonl", [good[0], "{oops", {"request": "x"}, good[1]])
    with pytest.raises(UsageError, match="2 malformed lines.*line 2.*line 3"):
        load_cases(path)
    cases, problems = load_cases(path, on_bad_lines="skip")
    assert [c.line for c in cases] == [1, 4]
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3"]
    broken = dict(good[0])
    broken["tools"] = [{"name": good[0]["expected"]["name"], "parameters": {"type": "objekt"}}]
    with pytest.raises(UsageError, match="line 1: the parameters of tool .* not valid JSON Schema"):
        load_cases(_write(tmp_path / "s.jsonl", [broken]))
    off_schema = json.loads(json.dumps(good[0]))
    off_schema["expected"]["arguments"]["surprise"] = 1
    with pytest.raises(UsageError, match="line 1: the expected arguments break the schema"):
        load_cases(_write(tmp_path / "o.jsonl", [off_schema]))


def test_exact_answers_are_read_by_regex_and_compared_as_numbers(tmp_path: Path) -> None:
    rows = synthetic.word_problems(3, seed=5)
    cases = load_questions(_write(tmp_path / "q.jsonl", rows))[0]
    number = compile_regex(r"-?\d[\d,]*(?:\.\d+)?")
    answer = rows[0]["answer"]
    assert score_answer(cases[0], f" {answer}.0 apples", True, number).passed
    assert not score_answer(cases[0], f" {answer + 1}", True, number).passed
    assert not score_answer(cases[0], f" {answer}", False, number).passed  # hit the cap
    assert not score_answer(cases[0], " none", True, number).passed
    assert same_answer("1,000", "1000") and same_answer(" Paris.", "paris")
    tagged = compile_regex(r"#### (\S+)")
    assert score_answer(cases[1], f"12 then #### {rows[1]['answer']}", True, tagged).passed
    with pytest.raises(UsageError, match="not a regular expression"):
        compile_regex("(")
    with pytest.raises(UsageError, match="2 groups"):
        compile_regex("(a)(b)")
    with pytest.raises(UsageError, match="line 2: answer must be a string or a number"):
        load_questions(_write(tmp_path / "b.jsonl", [rows[0], {"question": "q", "answer": [1]}]))


def test_lm_eval_results_become_measurements_with_stderr_and_counts() -> None:
    results = {
        "results": {
            "toolname": {"alias": "toolname", "acc,none": 0.94, "acc_stderr,none": 0.034},
            "toolgen": {"exact_match,strict": 0.5, "exact_match_stderr,strict": "N/A"},
        },
        "higher_is_better": {"toolname": {"acc": True}, "toolgen": {"exact_match": True}},
        "n-samples": {"toolname": {"effective": 50}, "toolgen": {"effective": 4}},
        "n-shot": {"toolname": 0, "toolgen": 0},
    }
    found = {m.metric: m for m in measurements(results, "0.4.13")}
    assert set(found) == {"toolname/acc", "toolgen/exact_match[strict]"}
    acc = found["toolname/acc"]
    assert acc.details["stderr"] == 0.034 and (acc.details["passed"], acc.details["total"]) == (
        47,
        50,
    )
    assert format_value(acc.metric, acc.value, acc.details) == "47/50"
    assert found["toolgen/exact_match[strict]"].details["stderr"] is None
    assert format_value("x/f1", 0.61, {"stderr": 0.02}) == "0.61 ± 0.02"
    assert re.fullmatch(r"\d+", format_value("size_mb", 12.0, {}).split(".")[0])


def test_tool_prompts_use_a_chat_template_that_renders_tools(tiny_model: Path) -> None:
    from quantforge_tasks.toolcall import plain_prompt, prompt_ids
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    case = load_cases(Path(synthetic.BUILTIN_CASES))[0][0]
    plain = tokenizer(plain_prompt(case.tools, case.request))["input_ids"]
    assert prompt_ids(tokenizer, case) == plain  # no chat template: the plain prompt
    tokenizer.chat_template = (
        "{% for t in tools %}<tool>{{ t.function.name }}</tool>{% endfor %}"
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}[assistant]"
    )
    text = tokenizer.decode(prompt_ids(tokenizer, case))
    assert "<tool>convert_currency</tool>" in text and f"[user] {case.request}" in text
    # a template that ignores tools gets the plain prompt as the user message
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}"
    text = tokenizer.decode(prompt_ids(tokenizer, case))
    assert "[user] Tools: get_weather, set_timer, convert_currency" in text
