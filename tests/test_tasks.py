"""Task evaluators on a tiny model trained to call tools: scores fall at 2 bits, in
PyTorch and in llama.cpp, and show as counts in the table, the cards and the Space."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import fails_with, quantforge
from quantforge.testing.tiny_model import TOOLCALL_MODEL, build_tiny_model

CHECKS = ("tool_json_valid", "tool_name_accuracy", "tool_args_exact", "tool_args_schema_valid")


@pytest.fixture(scope="module")
def toolcall_model(cache_dir: Path) -> Path:
    return build_tiny_model(TOOLCALL_MODEL, cache_dir=cache_dir / "tiny-models")


@pytest.fixture(scope="module")
def task_demo(toolcall_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("tasks") / "demo"
    # inline: the scores are what is tested here; the demo's worker processes are tested
    # by test_demo.py
    done = quantforge(
        "demo", "--tasks", "--executor", "inline", "--out", str(out), "--json", timeout=1500
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"out": out, "result": json.loads(done.stdout)}


def _rows(result: dict[str, Any], target: str) -> dict[str, dict[str, Any]]:
    (table,) = [t for t in result["tables"] if t["target"] == target]
    return {r["variant"]: r for r in table["rows"] if r["status"] == "ok"}


def _details(result: dict[str, Any], variant: str, target: str, metric: str) -> dict[str, Any]:
    (row,) = [
        m
        for m in result["measurements"]
        if (m["variant"], m["target"], m["metric"]) == (variant, target, metric)
    ]
    return dict(row["details"])


def test_tool_calling_falls_at_one_bit_and_holds_at_eight(task_demo: dict[str, Any]) -> None:
    result = task_demo["result"]
    cpu, gguf = _rows(result, "cpu"), _rows(result, "llama.cpp")
    assert {"base", "rtn-int8", "quanto-int2", "hqq-int1"} <= set(cpu)
    assert {"llamacpp-q8_0", "llamacpp-q2_k"} <= set(gguf)
    base = cpu["base"]["metrics"]
    # the base solves most held-out cases, so a drop means something
    assert base["tool_args_exact"] >= 0.7 and base["tool_json_valid"] >= 0.9
    # HQQ at 1 bit (groups of 16) loses cases that 8 bits keeps. At 2 bits this tiny
    # model's confident answers survive: quanto int2 and q2_k are measured, not ordered.
    low, high = cpu["hqq-int1"]["metrics"], cpu["rtn-int8"]["metrics"]
    assert low["tool_args_exact"] < high["tool_args_exact"]
    for rows, eight in ((cpu, "rtn-int8"), (gguf, "llamacpp-q8_0")):
        assert rows[eight]["metrics"]["tool_args_exact"] >= base["tool_args_exact"] - 0.1
    details = _details(result, "hqq-int1", "cpu", "tool_args_exact")
    assert details["total"] == 50 and details["cases"] == "built-in"
    assert details["passed"] == round(low["tool_args_exact"] * 50)
    # the cases the 1-bit variant newly fails are cases the base passes
    lost = details["newly_failed_lines"]
    assert lost and len(lost) >= details["base_passed"] - details["passed"]
    # the table reads as counts
    for rows in (cpu, gguf):
        for row in rows.values():
            for check in CHECKS:
                assert re.fullmatch(r"\d+/50", row["display"][check]), row["display"]


def test_lm_eval_tasks_run_on_every_runtime_with_stderr(task_demo: dict[str, Any]) -> None:
    result = task_demo["result"]
    for target, names in (("cpu", ("base", "quanto-int2")), ("llama.cpp", ("llamacpp-q8_0",))):
        rows = _rows(result, target)
        for name in names:
            metrics = rows[name]["metrics"]
            assert 0 <= metrics["toolcall_choice/acc"] <= 1
            assert 0 <= metrics["toolcall_generate/exact_match"] <= 1
            details = _details(result, name, target, "toolcall_choice/acc")
            assert details["samples"] == 50 and details["stderr"] is not None
            assert details["lm_eval"].startswith("0.4")
    base = _rows(result, "cpu")["base"]["metrics"]
    # the base picks the right tool by likelihood and writes most calls exactly
    assert base["toolcall_choice/acc"] >= 0.9
    assert base["toolcall_generate/exact_match"] >= 0.7
    int1 = _rows(result, "cpu")["hqq-int1"]["metrics"]
    assert int1["toolcall_generate/exact_match"] < base["toolcall_generate/exact_match"]


def test_counts_show_in_the_table_cards_and_space(
    task_demo: dict[str, Any], tmp_path: Path
) -> None:
    out = task_demo["out"]
    printed = quantforge("results", str(out))
    assert printed.returncode == 0, printed.stderr
    assert "exact args" in printed.stdout and re.search(r"\b\d+/50\b", printed.stdout)
    cards = quantforge("cards", str(out), "--out", str(tmp_path / "cards"))
    assert cards.returncode == 0, cards.stderr
    text = (tmp_path / "cards" / "hqq-int1" / "README.md").read_text()
    assert "exact args" in text and re.search(r"\| \d+/50 \|", text)
    from quantforge.space.build import tradeoff_table
    from quantforge.store.facts import RunFacts

    headers, rows = tradeoff_table(RunFacts.load(out), "cpu")
    column = headers.index("exact args")
    assert all(re.fullmatch(r"\d+/50", row[column]) for row in rows)


def test_exact_match_reads_answers_with_a_regex(
    toolcall_model: Path, task_demo: dict[str, Any], tmp_path: Path
) -> None:
    # the arguments of the built-in cases as short answers; one malformed line, skipped
    from quantforge_tasks.synthetic import BUILTIN_CASES

    rows = []
    for line in BUILTIN_CASES.read_text().splitlines():
        case = json.loads(line)
        value = next(iter(case["expected"]["arguments"].values()))
        rows.append(json.dumps({"question": case["request"], "answer": value}))
    rows.insert(3, '{"question": "no answer"}')
    path = tmp_path / "args.jsonl"
    path.write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "exact.toml"
    recipe.write_text(
        f'variants = ["rtn:int8", "hqq:int1"]\n[model]\nid = "{toolcall_model}"\n'
        f'[evaluators.exact-match]\ncases = "{path}"\non_bad_lines = "skip"\n'
        'prompt = "Tools: get_weather, set_timer, convert_currency\\nRequest: {question}\\nCall:"\n'
        'answer_regex = \'"(?:city|minutes|amount)": "?([A-Za-z0-9]+)\'\n'
        "max_new_tokens = 48\n"
        f'[run]\noutput = "{tmp_path / "run"}"\n'
    )
    done = quantforge("run", str(recipe), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    rows_ = _rows(result, "cpu")
    base = rows_["base"]["metrics"]["exact_match"]
    assert base >= 0.7
    assert rows_["hqq-int1"]["metrics"]["exact_match"] < rows_["rtn-int8"]["metrics"]["exact_match"]
    details = _details(result, "base", "cpu", "exact_match")
    assert details["total"] == 50 and details["skipped_lines"][0].startswith("line 4: missing key")


def test_answers_cut_off_by_the_token_cap_fail(toolcall_model: Path, tmp_path: Path) -> None:
    done = quantforge(
        "quantize", str(toolcall_model), "-v", "rtn:int8",
        "--evaluator", "toolcalls,max_new_tokens=3,limit=5", "--out", str(tmp_path / "run"), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    details = _details(json.loads(done.stdout), "base", "cpu", "tool_json_valid")
    assert (details["passed"], details["total"], details["cut_off"]) == (0, 5, 5)


def test_bad_task_inputs_get_one_line_and_no_run(toolcall_model: Path, tmp_path: Path) -> None:
    from quantforge_tasks.synthetic import BUILTIN_CASES, write_lmeval_tasks

    lines = BUILTIN_CASES.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], "{oops", lines[1], '{"request": 1}']) + "\n")
    bad_schema = json.loads(lines[0])
    bad_schema["tools"][0]["parameters"] = {"type": "objekt"}
    schema_file = tmp_path / "schema.jsonl"
    schema_file.write_text(json.dumps(bad_schema) + "\n")
    tasks = write_lmeval_tasks(tmp_path / "lmeval-tasks")
    out = tmp_path / "run"
    cases: list[tuple[str, tuple[str, ...], dict[str, str]]] = [
        (f"toolcalls,cases={broken}", ("2 malformed lines", "line 2", "line 4", "on_bad_lines=skip"), {}),
        (f"toolcalls,cases={schema_file}", ("line 1", "not valid JSON Schema"), {}),
        (f"toolcalls,cases={tmp_path / 'none.jsonl'}", ("cannot read tool-calling cases",), {}),
        ("exact-match,answer_regex=(", ("not a regular expression",), {}),
        ("toolcalls,on_bad_lines=maybe", ("on_bad_lines", "refuse"), {}),
        (f"lmeval,tasks=toolcall_choise,include_path={tasks}", ("no task 'toolcall_choise'", "did you mean toolcall_choice"), {}),
        ("lmeval", ("needs tasks",), {}),
        ("lmeval,tasks=arc_easy", ("'allenai/ai2_arc'", "offline"), {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}),
    ]  # fmt: skip
    for evaluator, fragments, env in cases:
        done = quantforge(
            "quantize", str(toolcall_model), "-v", "rtn:int8", "--evaluator", evaluator,
            "--out", str(out), env=env,
        )  # fmt: skip
        fails_with(done, *fragments)
        assert not out.exists(), evaluator
