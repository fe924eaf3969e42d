"""A synthetic tool-calling corpus: requests in a few phrasings, each answered by one JSON
call among a few tools. Used to train the tiny test model so task scores mean something.

Work in progress for issue 8.
"""

from __future__ import annotations

import json
import random
from typing import Any

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
CITIES = ["Oslo", "Paris", "Lima", "Tokyo", "Cairo", "Quito", "Dublin", "Hanoi", "Accra", "Perth"]
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
    minutes = rng.randint(1, 90)
    phrasing = rng.choice(
        ["Set a timer for {m} minutes.", "Timer: {m} minutes.", "Remind me in {m} minutes."]
    )
    return phrasing.format(m=minutes), {"name": "set_timer", "arguments": {"minutes": minutes}}


def _currency(rng: random.Random) -> tuple[str, dict[str, Any]]:
    amount = rng.randint(1, 999)
    source, target = rng.sample(CURRENCIES, 2)
    phrasing = rng.choice(
        ["Convert {a} {s} to {t}.", "How much is {a} {s} in {t}?", "{a} {s} into {t}, please."]
    )
    return phrasing.format(a=amount, s=source, t=target), {
        "name": "convert_currency",
        "arguments": {"amount": amount, "source": source, "target": target},
    }


def cases(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` cases in the JSONL layout :mod:`toolcall` reads."""
    rng = random.Random(seed)
    makers = [_weather, _timer, _currency]
    out = []
    for _ in range(n):
        request, call = rng.choice(makers)(rng)
        out.append({"request": request, "tools": TOOLS, "expected": call})
    return out


def prompt(request: str) -> str:
    """The plain prompt used when the tokenizer has no chat template."""
    names = ", ".join(t["name"] for t in TOOLS)
    return f"Tools: {names}\nRequest: {request}\nCall: "


def training_text(n: int, seed: int) -> str:
    """Prompt + answer lines for training (answers end with a newline: the stop)."""
    return "".join(prompt(c["request"]) + json.dumps(c["expected"]) + "\n" for c in cases(n, seed))
