"""Accuracy-budget search and per-target recommendations on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import fails_with, quantforge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def searched(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("search") / "run"
    done = quantforge(
        "search", str(tiny_model), "--target", "rpi5", "--context", "256",
        "--max-kld", "0.001", "--method", "llamacpp", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def _search(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "search.json").read_text())
    return data


def test_search_finds_the_smallest_variant_under_a_kl_budget(searched: tuple[Path, str]) -> None:
    out, stdout = searched
    data = _search(out)
    by_spec = {c["spec"]: c for c in data["candidates"]}
    winner = by_spec[data["winner"]]
    assert winner["state"] == "passed" and winner["measured"]["kl"] <= 0.001
    assert f"Answer: {data['winner']}" in stdout and "Why the others lost:" in stdout
    trials = [c for c in data["candidates"] if c["state"] in ("passed", "failed")]
    assert 2 <= len(trials) < len(data["candidates"])  # it tried some, not all
    for c in trials:  # every trial smaller than the answer lost on KL
        if c["measured"].get("size_mb", 1e9) < winner["measured"]["size_mb"]:
            assert c["state"] == "failed" and c["measured"]["kl"] > 0.001, c
    # every trial is a variant in the results store, measured on llama.cpp and rpi5
    stored = json.loads(quantforge("results", str(out), "--json").stdout)
    names = {m["variant"] for m in stored["measurements"]}
    assert {c["spec"].replace(":", "-") for c in trials} <= names
    kl = {
        (m["variant"], m["target"]): m["value"]
        for m in stored["measurements"]
        if m["metric"] == "kl_divergence"
    }
    assert kl[(data["winner"].replace(":", "-"), "llama.cpp")] == winner["measured"]["kl"]
    # types llama.cpp refuses without an importance matrix are pruned before any compute
    assert "importance matrix" in by_spec["llamacpp:iq2_xs"]["reason"]
    assert by_spec["llamacpp:iq2_xs"]["state"] == "pruned"
    assert any("not smaller than" in c["reason"] for c in data["candidates"])


def test_recommend_names_the_smallest_passing_variant_per_target(
    searched: tuple[Path, str],
) -> None:
    out, _ = searched
    winner = _search(out)["winner"].replace(":", "-")
    done = quantforge("recommend", str(out), "--max-kld", "0.001", "--json")
    assert done.returncode == 0, done.stderr
    found = {r["target"]: r for r in json.loads(done.stdout)}
    assert found["rpi5"]["variant"] == winner and found["rpi5"]["measured"] is False
    assert found["llama.cpp"]["variant"] == winner
    strict = json.loads(
        quantforge("recommend", str(out), "--max-kld", "1e-9", "--target", "rpi5", "--json").stdout
    )
    assert strict[0]["variant"] == "base" and "KL" in strict[0]["why_not"][winner]
    none = json.loads(
        quantforge(
            "recommend", str(out), "--max-kld", "1e-9", "--min-decode-tps", "1e9", "--json"
        ).stdout
    )
    assert all(r["variant"] is None for r in none)
    text = quantforge("recommend", str(out), "--max-kld", "0.001").stdout
    assert f"rpi5 (estimate from a device profile): {winner}" in text
    fails_with(quantforge("recommend", str(out), "--target", "rpi6"), "did you mean: rpi5")


def test_an_impossible_budget_is_proven_and_names_the_closest(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = quantforge(
        "search", str(tiny_model), "--target", "rpi5", "--context", "256",
        "--max-kld", "1e-9", "--method", "rtn", "--out", str(out),
    )  # fmt: skip
    fails_with(
        done, "no installed method meets KL <= 1e-09 on rpi5", "closest: rtn:", after_progress=True
    )
    data = _search(out)
    assert data["winner"] is None
    states = {c["spec"]: c["state"] for c in data["candidates"]}
    assert "pending" not in states.values() and "failed" in states.values()
    assert all(c["reason"] for c in data["candidates"])


def test_a_decode_floor_beyond_the_device_is_refused_before_any_compute(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = quantforge(
        "search", str(tiny_model), "--target", "rpi5", "--min-decode-tps", "1e12",
        "--method", "rtn", "--method", "llamacpp", "--out", str(out),
    )  # fmt: skip
    fails_with(done, "no installed method meets decode >= 1e+12 tok/s", after_progress=True)
    assert not (out / "results.sqlite").exists()  # nothing was built or measured
    reasons = [c["reason"] for c in _search(out)["candidates"]]
    assert any("cannot decode it faster than" in r for r in reasons)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no constraint given"),
        (["--max-kld", "-1"], "KL divergence is above 0"),
        (["--max-kld", "0.1", "--max-ppl-increase=-2%"], "asks quantization to lower"),
        (["--max-ppl-increase", "lots"], "is not a percentage"),
        (["--max-kld", "0.1", "--target", "rpi6"], "did you mean: rpi5"),
        (["--max-kld", "0.1", "--method", "rnt"], "did you mean: rtn"),
        (["--max-kld", "0.1", "--budget-minutes", "0"], "--budget-minutes: must be above 0"),
        (["--max-kld", "0.1", "--context", "100000000"], "longer than the model supports"),
    ],
)
def test_bad_constraints_are_one_line(
    tiny_model: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    if "--target" not in args:
        args = [*args, "--target", "rpi5"]
    out = tmp_path / "run"
    fails_with(quantforge("search", str(tiny_model), *args, "--out", str(out)), message)
    assert not out.exists()


def test_a_recipe_with_a_search_table_runs_the_same_search(
    searched: tuple[Path, str], tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "recipe-run"
    recipe = tmp_path / "search.toml"
    recipe.write_text(
        f'[model]\nid = "{tiny_model}"\n\n'
        '[search]\ntarget = "rpi5"\nmax_kld = 0.001\ncontext = 256\nmethods = ["llamacpp"]\n\n'
        f'[run]\noutput = "{out}"\n'
    )
    done = quantforge("run", str(recipe))
    assert done.returncode == 0, done.stderr
    assert _search(out)["winner"] == _search(searched[0])["winner"]
    recipe.write_text('variants = ["rtn:int4"]\n' + recipe.read_text())
    fails_with(quantforge("run", str(recipe)), "lists no variants: the search chooses them")


def test_the_time_budget_stops_new_trials_and_marks_the_rest_untried(
    searched: tuple[Path, str], tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = quantforge(
        "search", str(tiny_model), "--target", "rpi5", "--context", "256",
        "--max-kld", "0.001", "--method", "llamacpp", "--budget-minutes", "0.0001",
        "--out", str(out),
    )  # fmt: skip
    data = _search(out)
    states = [c["state"] for c in data["candidates"]]
    assert data["budget_spent"] is True and states.count("untried") >= 1
    assert states.count("passed") + states.count("failed") == 1  # the first trial only
    if data["winner"] is None:
        fails_with(done, "the --budget-minutes ran out meets", after_progress=True)
    else:
        assert done.returncode == 0 and "untried" in done.stdout
