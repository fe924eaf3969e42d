"""Runs with real workers: failures stay local, nothing half-written survives, reruns are free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from quantforge.running.planner import parse_variant
from quantforge.running.recipe import RunConfig, with_base
from quantforge.running.runner import Runner
from quantforge.store.results import ResultsStore


def _config(model: Path, out: Path, variants: list[str], timeout: float = 60) -> RunConfig:
    """A run with its own cold cache beside ``out``: every count below is exact."""
    return RunConfig(
        model=str(model),
        variants=with_base([parse_variant(v) for v in variants]),
        output=out,
        evaluators={"size": {}},
        step_timeout=timeout,
        cache_dir=out.parent / "cache",
    )


def test_failing_steps_are_reported_and_the_rest_go_on(
    faults_plugin: Path, tiny_model: Path, tmp_path: Path
) -> None:
    variants = [
        "rtn:int4,group_size=32",
        "faults-raise",
        "rtn:int8,group_size=32",
        "faults-crash",
        "faults-hang",
    ]
    # one job at a time: the five steps from the base share one worker (with more jobs
    # at once they are split over as many workers; see test_concurrency.py)
    config = replace(_config(tiny_model, tmp_path / "run", variants, timeout=20), jobs=1)
    summary = Runner(config).run()

    assert summary.variants["rtn-int4-group_size32"] == "ok"
    assert summary.variants["rtn-int8-group_size32"] == "ok"
    assert "raised RuntimeError: boom on purpose" in summary.variants["faults-raise"]
    assert "killed (SIGKILL" in summary.variants["faults-crash"]
    assert "timed out after 20s" in summary.variants["faults-hang"]
    assert summary.status == "partial"

    store = ResultsStore(tmp_path / "run")
    rows = {v["name"]: v for v in store.variants()}
    assert rows["faults-crash"]["status"] == "failed" and rows["faults-crash"]["path"] is None
    measured = {m.variant for m in store.measurements()}
    assert measured == {"base", "rtn-int4-group_size32", "rtn-int8-group_size32"}

    # Nothing half-written looks complete, and no temporary folder is left behind.
    artifacts = tmp_path / "cache" / "artifacts"
    leftovers = [p.name for p in artifacts.iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
    assert not list(artifacts.rglob("partial.bin"))
    assert not (tmp_path / "run" / "variants" / "faults-crash").exists()
    assert (tmp_path / "run" / "variants" / "rtn-int4-group_size32" / "quantforge.json").is_file()

    # The two RTN steps shared one worker, which loaded the base once.
    logs = sorted((tmp_path / "run" / "logs").rglob("*build-rtn+faults-raise+rtn*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert text.count("rtn: loading base model") == 1
    assert text.count("linear layers at") == 2


def test_a_rerun_with_nothing_changed_recomputes_nothing(tiny_model: Path, tmp_path: Path) -> None:
    first = Runner(_config(tiny_model, tmp_path / "a", ["rtn:int4,group_size=64"])).run()
    assert first.status == "ok"
    assert (first.steps_run, first.evaluations_run) == (1, 2)
    again = Runner(_config(tiny_model, tmp_path / "b", ["rtn:int4,group_size=64"])).run()
    assert (again.steps_run, again.evaluations_run) == (0, 0)
    assert again.steps_cached == 1 and again.evaluations_cached == 2
    a = {(m.variant, m.metric): m for m in ResultsStore(tmp_path / "a").measurements()}
    b = {(m.variant, m.metric): m for m in ResultsStore(tmp_path / "b").measurements()}
    assert {k: m.value for k, m in a.items()} == {k: m.value for k, m in b.items()}
    # Cached rows keep the provenance of the run that measured them.
    assert b[("base", "size_mb")].provenance["run_id"] == first.run_id

    changed = Runner(
        _config(tiny_model, tmp_path / "c", ["rtn:int4,group_size=64", "rtn:int4,group_size=128"])
    ).run()
    assert changed.steps_run == 1 and changed.steps_cached == 1
    assert changed.evaluations_run == 1 and changed.evaluations_cached == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_killed_host_leaves_no_worker_behind(
    tiny_model: Path, tmp_path: Path, faults_plugin: Path, sig: signal.Signals
) -> None:
    """SIGTERM and SIGINT unwind the host, which kills its worker's process group; after
    SIGKILL the kernel signals the worker (its parent-death signal), which kills its own
    group. The hanging step has started a child of its own: it goes too."""
    out = tmp_path / "run"
    marker = str(out / "logs")
    host = subprocess.Popen(
        [sys.executable, "-m", "quantforge", "quantize", str(tiny_model), "-v", "faults-hang",
         "--evaluator", "size", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "QUANTFORGE_CACHE_DIR": str(tmp_path / "cache"),
             "QF_CHILD_MARK": f"{marker}/grandchild"},
        # a suite started in the background inherits SIGINT ignored; a user's shell does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip

    def workers() -> list[str]:
        found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
        return found.stdout.split()

    deadline = time.monotonic() + 120
    while not any(p.name.endswith("build-faults-hang.job.json") for p in out.glob("logs/*/*")):
        assert time.monotonic() < deadline and host.poll() is None, "the step never started"
        time.sleep(0.2)
    while len(workers()) < 2:  # the worker and its child
        assert time.monotonic() < deadline, "no worker and child appeared"
        time.sleep(0.2)
    host.send_signal(sig)
    assert host.wait(timeout=30) != 0
    deadline = time.monotonic() + 10
    while workers():
        assert time.monotonic() < deadline, f"workers left after {sig.name}: {workers()}"
        time.sleep(0.2)
