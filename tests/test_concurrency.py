"""Jobs side by side on this machine (``--jobs``), and catalogues of several models in one
run: real runs on the tiny model, from cold caches, against the same run one job at a
time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fails_with, quantforge

pytestmark = pytest.mark.slow

DETERMINISTIC = ("size_mb", "perplexity", "kl_divergence", "top1_agreement")
# two methods are enough to overlap two builds and three measurements on two cores
VARIANTS = ["rtn:int4,group_size=64", "hqq:int4"]
EVALUATORS = ["size", "perplexity", "kl", "speed,prompt_tokens=16,new_tokens=8,repeats=1"]


def _values(run: Path) -> dict[tuple[str, str, str], float]:
    data = json.loads(quantforge("results", str(run), "--json").stdout)
    return {
        (m["variant"], m["target"], m["metric"]): m["value"]
        for m in data["measurements"]
        if m["metric"] in DETERMINISTIC
    }


def _timeline(run: Path) -> list[dict[str, object]]:
    (log,) = run.glob("logs/*/jobs.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def _overlap(a: dict[str, object], b: dict[str, object]) -> bool:
    return float(a["started"]) < float(b["ended"]) and float(b["started"]) < float(a["ended"])  # type: ignore[arg-type]


def test_independent_variants_run_side_by_side_with_the_results_of_a_serial_run(
    tiny_model: Path, tmp_path: Path
) -> None:
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs-{jobs}"
        command = ["quantize", str(tiny_model), "--target", "cpu", "--out", str(out)]
        command += [x for v in VARIANTS for x in ("-v", v)]
        command += [x for e in EVALUATORS for x in ("--evaluator", e)]
        env = {"QUANTFORGE_CACHE_DIR": str(tmp_path / f"cache-{jobs}")}
        done = quantforge(*command, "--jobs", jobs, env=env)
        assert done.returncode == 0, done.stderr
        assert "2 steps run, 0 cached" in done.stderr + done.stdout
        runs[jobs] = out
    serial, concurrent = _values(runs["1"]), _values(runs["2"])
    assert set(serial) == set(concurrent) and len(serial) >= 3 * 4
    for key, value in serial.items():
        assert concurrent[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

    spans = _timeline(runs["2"])
    builds = [s for s in spans if str(s["label"]).startswith("build ")]
    assert len(builds) == 2  # two steps from the base, one on each core
    overlapping = [(a, b) for a in builds for b in builds if a is not b and _overlap(a, b)]
    assert overlapping, builds  # the builds' lifetimes overlap
    for a, b in overlapping:  # each on a core of its own
        assert set(a["cores"]).isdisjoint(b["cores"])  # type: ignore[arg-type]
    parts = [s for s in spans if str(s["label"]).endswith(": timed part")]
    measures = [s for s in spans if str(s["label"]).startswith("measure ") and s not in parts]
    assert len(measures) == 3 and len(parts) == 3  # the base too
    for part in parts:  # speed was timed on every core with nothing else at work
        assert part["alone"] is True and part["cores"] == sorted(
            {c for s in builds for c in s["cores"]}
        )
        own = str(part["label"]).removesuffix(": timed part")
        beside = [s for s in spans if s is not part and _overlap(part, s) and s["label"] != own]
        # only measurements waiting for the machine themselves were in flight
        assert all(s in measures for s in beside), (part, beside)
    assert not any(_overlap(a, b) for a in parts for b in parts if a is not b)
    # the rest of each measurement (starting, loading, perplexity, KL) ran beside others
    assert any(_overlap(a, b) for a in measures for b in measures if a is not b)
    one_at_a_time = _timeline(runs["1"])
    assert not any(_overlap(a, b) for a in one_at_a_time for b in one_at_a_time if a is not b)

    cards = quantforge(
        "cards", str(runs["2"]), "--base-model", "quantforge-tests/tiny-llama", "--namespace", "me"
    )
    assert cards.returncode == 0, cards.stderr
    card = (runs["2"] / "cards" / "hqq-int4" / "README.md").read_text()
    assert "with no other job running" in card
    assert "% of the memory-bandwidth roofline" in card

    # decode as a share of the roofline, from one bandwidth figure per machine, which
    # every measurement's provenance carries
    data = json.loads(quantforge("results", str(runs["2"]), "--json").stdout)
    (table,) = data["tables"]  # in the order asked for, whichever job finished first
    order = ["base", "rtn-int4-group_size64", "hqq-int4"]
    assert [r["variant"] for r in table["rows"]] == order
    roofs = [m for m in data["measurements"] if m["metric"] == "roofline_pct"]
    assert len(roofs) == 3 and all(0 < m["value"] < 100 for m in roofs)
    bandwidths = {m["provenance"]["memory_bandwidth_gbs"] for m in data["measurements"]}
    assert len(bandwidths) == 1 and next(iter(bandwidths)) > 0.1
    assert "roofline" in quantforge("results", str(runs["2"])).stdout
    config = json.loads(quantforge("results", str(runs["2"]), "--json").stdout)["run"]
    assert json.loads(config["config"])["jobs"] == 2


def test_a_catalogue_recipe_runs_every_models_variants_as_one_run(
    tiny_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "models.txt").write_text(f"# the catalogue\n{tiny_model}\n\n{tmp_path / 'b'}\n")
    import shutil

    shutil.copytree(tiny_model, tmp_path / "b")
    recipe = tmp_path / "catalogue.toml"
    recipe.write_text(
        'variants = ["rtn:int8"]\n'
        'evaluators = ["size", "perplexity"]\n'
        '[model]\nlist = "models.txt"\n'
        "[targets.cpu]\n"
        f'[run]\noutput = "{tmp_path / "out"}"\n'
    )
    done = quantforge("run", str(recipe), env={"QUANTFORGE_CACHE_DIR": str(tmp_path / "c")})
    assert done.returncode == 0, done.stderr
    assert "2 models: 1 steps run, 1 cached" in done.stdout + done.stderr  # the same weights
    names = {tiny_model.name, "b"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == names | {"logs"}
    values = {name: _values(tmp_path / "out" / name) for name in names}
    assert len(values[tiny_model.name]) == 4  # base and rtn-int8: size and perplexity
    assert values[tiny_model.name] == values["b"]  # the same weights, measured alike
    spans = _timeline(tmp_path / "out")
    assert sum(str(s["label"]).startswith("measure ") for s in spans) == 4


@pytest.mark.parametrize(
    ("recipe", "fragments"),
    [
        ("[model]\nids = []\n", ["the catalogue names no models"]),
        ('[model]\nids = ["a/x", "b/x"]\n', ["would share the output folder 'x'"]),
        ('[model]\nids = ["a"]\nlist = "m.txt"\n', ["[model] has both ids and list"]),
        ('[model]\nlist = "missing.txt"\n', ["cannot read the model list"]),
        ('[model]\nid = "a"\n[run]\njobs = 0\n', ["run.jobs must be 1 or more"]),
    ],
)
def test_a_bad_catalogue_or_jobs_is_refused_in_one_line(
    tmp_path: Path, recipe: str, fragments: list[str]
) -> None:
    path = tmp_path / "r.toml"
    path.write_text('variants = ["rtn:int8"]\n' + recipe)
    fails_with(quantforge("run", str(path), "--out", str(tmp_path / "out")), *fragments)
    assert not (tmp_path / "out").exists()


def test_jobs_on_the_command_line_are_checked(tiny_model: Path, tmp_path: Path) -> None:
    base = ["quantize", str(tiny_model), "-v", "rtn:int8", "--out", str(tmp_path / "o")]
    done = quantforge(*base, "--jobs", "0")
    assert done.returncode == 2 and "--jobs: must be at least 1, not 0" in done.stderr
    fails_with(
        quantforge(*base, "--jobs", "2", "--executor", "inline"),
        "--executor inline runs one job at a time",
    )
    assert not (tmp_path / "o").exists()


# A worker started on one core and later handed two (a timed part): short parallel
# regions between serial work, as in decoding. It prints CPU seconds per wall second.
GROWN = """
import os, time
from quantforge.running.worker import start_on, use_cores
cores = sorted(os.sched_getaffinity(0))[:2]
start_on(cores[:1])
import torch
x, w, v = torch.randn(4, 576), torch.randn(1536, 576), torch.randn(1, 576)
torch.nn.functional.linear(x, w)
use_cores(cores)
began, cpu = time.perf_counter(), time.process_time()
for _ in range(3000):
    torch.nn.functional.linear(x, w)
    v.exp()
print((time.process_time() - cpu) / (time.perf_counter() - began))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_a_worker_handed_more_cores_later_runs_on_all_of_them() -> None:
    # GNU OpenMP sizes itself by the cores a process may use when it loads: pinned to
    # one core first, the second thread sleeps between regions (about 1.0 here, 1.6x
    # slower) instead of working beside the first (about 1.97)
    out = subprocess.run([sys.executable, "-c", GROWN], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) > 1.5
