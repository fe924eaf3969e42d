"""A synthetic tool-calling corpus: requests in a few phrasings, each answered by one JSON
call among a few tools. The built-in cases (``data/toolcalls.jsonl``) are 50 of them, and
the tiny test model trains on others, so that its task scores mean something.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from quantforge_tasks.toolcall import plain_prompt

TOOLS: list[dict[str, Any]] = [
    {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
    {
        "name": "set_timer",
        "parameters": {
            "type": "object",
            "properties": {"minutes": {"type": "integer", "minimum": 1, "maximum": 120}},
            "required": ["minutes"],
            "additionalProperties": False,
        },
    },
    {
        "name": "convert_currency",
        "parameters": {
            "type": "object",
            "properties": {
                "amount": {"type": "integer", "minimum": 1},
                "source": {"type": "string", "enum": ["EUR", "USD", "GBP", "JPY"]},
                "target": {"type": "string", "enum": ["EUR", "USD", "GBP", "JPY"]},
            },
            "required": ["amount", "source", "target"],
            "additionalProperties": False,
        },
    },
]
BUILTIN_CASES = Path(__file__).parent / "data" / "toolcalls.jsonl"
# Few values, each seen often: a tiny model trained for a minute learns to carry them over
CITIES = ["Oslo", "Paris", "Lima", "Tokyo", "Cairo"]
MINUTES = [5, 10, 15, 20, 30, 45, 60, 90]
AMOUNTS = [10, 20, 50, 100, 200, 500]
CURRENCIES = ["EUR", "USD", "GBP", "JPY"]


def _weather(rng: random.Random) -> tuple[str, dict[str, Any]]:
    city, unit = rng.choice(CITIES), rng.choice(["celsius", "fahrenheit"])
    phrasing = rng.choice(
        [
            "What is the weather in {c} in {u}?",
            "Weather for {c}, {u} please.",
            "How warm is it in {c}? Use {u}.",
        ]
    )
    return phrasing.format(c=city, u=unit), {
        "name": "get_weather",
        "arguments": {"city": city, "unit": unit},
    }


def _timer(rng: random.Random) -> tuple[str, dict[str, Any]]:
    minutes = rng.choice(MINUTES)
    phrasing = rng.choice(
        ["Set a timer for {m} minutes.", "Timer: {m} minutes.", "Remind me in {m} minutes."]
    )
    return phrasing.format(m=minutes), {"name": "set_timer", "arguments": {"minutes": minutes}}


def _currency(rng: random.Random) -> tuple[str, dict[str, Any]]:
    amount = rng.choice(AMOUNTS)
    source, target = rng.sample(CURRENCIES, 2)
    phrasing = rng.choice(
        ["Convert {a} {s} to {t}.", "How much is {a} {s} in {t}?", "{a} {s} into {t}, please."]
    )
    return phrasing.format(a=amount, s=source, t=target), {
        "name": "convert_currency",
        "arguments": {"amount": amount, "source": source, "target": target},
    }


def cases(n: int, seed: int, unique: bool = False) -> list[dict[str, Any]]:
    """``n`` cases in the JSONL layout :mod:`toolcall` reads (``unique``: no request twice)."""
    rng = random.Random(seed)
    makers = [_weather, _timer, _currency]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(out) < n:
        request, call = rng.choice(makers)(rng)
        if unique and request in seen:
            continue
        seen.add(request)
        out.append({"request": request, "tools": TOOLS, "expected": call})
    return out


def training_text(n: int, seed: int, held_out: Path = BUILTIN_CASES) -> str:
    """The evaluator's plain prompt + the expected call, per case (a newline ends each).
    Requests in ``held_out`` (the built-in cases) never appear."""
    unseen = {json.loads(line)["request"] for line in held_out.read_text("utf-8").splitlines()}
    return "".join(
        plain_prompt(TOOLS, c["request"]) + " " + json.dumps(c["expected"]) + "\n"
        for c in cases(n, seed)
        if c["request"] not in unseen
    )


NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
THINGS = ["apples", "stamps", "marbles", "books", "shells", "pencils"]


def word_problems(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` two- and three-step arithmetic word problems with their answers, in the JSONL
    layout of the exact-match evaluator."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        who, thing = rng.choice(NAMES), rng.choice(THINGS)
        start, bags, per_bag, given = (
            rng.randint(5, 40),
            rng.randint(2, 6),
            rng.randint(2, 9),
            rng.randint(1, 9),
        )
        kind = rng.randrange(3)
        if kind == 0:
            question = (
                f"{who} has {start} {thing}. {who} buys {bags} bags with {per_bag} {thing} "
                f"each, then gives away {given}. How many {thing} does {who} have now?"
            )
            answer = start + bags * per_bag - given
        elif kind == 1:
            friends = rng.randint(2, 5)
            total = friends * rng.randint(3, 12)
            question = (
                f"{who} shares {total} {thing} equally among {friends} friends, and each "
                f"friend then finds {given} more. How many {thing} does each friend have?"
            )
            answer = total // friends + given
        else:
            days = rng.randint(2, 7)
            question = (
                f"{who} collects {per_bag} {thing} a day for {days} days and already had "
                f"{start}. How many {thing} are there in all?"
            )
            answer = start + per_bag * days
        out.append({"question": question, "answer": answer})
    return out


def answer_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the answers in :func:`training_text` (the call and its newline)."""
    return [
        (a - 1, b - 1)
        for a, b in (m.span(1) for m in re.finditer(r"\nCall:( [^\n]*\n)", "\n" + text))
    ]


LMEVAL_TASKS = ("toolcall_choice", "toolcall_generate")


def write_lmeval_tasks(folder: Path, cases_file: Path = BUILTIN_CASES) -> Path:
    """Write two lm-evaluation-harness tasks over the tool-calling cases into ``folder``
    (YAML reading a local JSONL, so they run offline): ``toolcall_choice`` scores the tool
    name as a multiple choice by log-likelihood, ``toolcall_generate`` generates the call
    and matches it exactly. Returns ``folder``, the ``include_path`` to give lm-eval."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for line in cases_file.read_text("utf-8").splitlines():
        case = json.loads(line)
        names = [t["name"] for t in case["tools"]]
        prompt = plain_prompt(case["tools"], case["request"])
        rows.append(
            {
                "choice_prompt": prompt + ' {"name":',
                "prompt": prompt,
                "choices": [f' "{n}",' for n in names],
                "label": names.index(case["expected"]["name"]),
                "call": json.dumps(case["expected"]),
            }
        )
    data = folder / "toolcalls.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = (
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
        "test_split: test\n"
    )
    (folder / "toolcall_choice.yaml").write_text(
        "task: toolcall_choice\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "{{choice_prompt}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\ntarget_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    (folder / "toolcall_generate.yaml").write_text(
        "task: toolcall_generate\n" + common + "output_type: generate_until\n"
        'doc_to_text: "{{prompt}}"\ndoc_to_target: "{{call}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 64\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return folder
