"""Fault injection: each fault gets one line and a non-zero exit, leaves nothing half-written,
and a rerun completes with nothing lost or duplicated and the cache intact.

(A push killed mid-upload and the Hub going down mid-push are in tests/test_push.py.)
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import ROOT, fails_with, quantforge
from quantforge.model.artifacts import is_complete
from quantforge.store.results import ResultsStore

pytestmark = pytest.mark.slow


def _start(args: list[str], env: dict[str, str], stderr: IO[Any] | int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "quantforge", *args],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def _wait_for(condition: Callable[[], object], proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _workers(marker: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", str(marker)], capture_output=True, text=True)
    return found.stdout.split()


def _half_written(cache: Path) -> list[Path]:
    return list((cache / "artifacts").glob(".tmp-*/partial.bin"))


def _built(cache: Path) -> list[Path]:
    """Finished artifacts (their manifest is written last, at the atomic rename)."""
    return [p for p in (cache / "artifacts").glob("*") if is_complete(p)]


def _leftovers(cache: Path) -> list[str]:
    """Temporary files and folders in the cache: a write that never finished."""
    return [p.name for p in cache.rglob("*") if p.name.startswith(".") and "tmp" in p.name]


def _check_store(out: Path, variants: set[str]) -> ResultsStore:
    """The store is sound, every variant is there and ok, each measured once per metric."""
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = ResultsStore(out)
    rows = {v["name"]: v["status"] for v in store.variants()}
    assert rows == dict.fromkeys(variants, "ok")
    measured = Counter((m.variant, m.target, m.metric) for m in store.measurements())
    assert {v for v, _, _ in measured} == variants
    assert set(measured.values()) == {1}
    return store


def test_kill_9_of_the_host_mid_step_then_a_rerun_builds_only_what_was_lost(
    tiny_model: Path, tmp_path: Path, faults_plugin: Path
) -> None:
    out, cache, release = tmp_path / "run", tmp_path / "cache", tmp_path / "release"
    args = ["quantize", str(tiny_model), "-v", "rtn:int8", "-v", "faults-slow",
            "--evaluator", "size", "--out", str(out)]  # fmt: skip
    env = {"QUANTFORGE_CACHE_DIR": str(cache), "QF_RELEASE": str(release)}
    host = _start(args, env, subprocess.DEVNULL)
    # rtn:int8 is built (in its own worker beside the slow one, or before it in the same
    # worker when there is one core); faults-slow is half-written
    _wait_for(lambda: _half_written(cache), host, "the slow step started")
    _wait_for(lambda: _built(cache), host, "rtn:int8 was built")
    assert _workers(out / "logs")
    host.send_signal(signal.SIGKILL)
    host.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _workers(out / "logs"):
        assert time.monotonic() < deadline, "the worker outlived its host"
        time.sleep(0.2)
    assert _half_written(cache), "the killed worker's folder should still be there"

    release.touch()
    done = quantforge(*args, env=env)
    assert done.returncode == 0, done.stderr
    assert "1 steps run, 1 cached" in done.stderr  # rtn:int8 came from the killed run
    assert _leftovers(cache) == []
    store = _check_store(out, {"base", "rtn-int8", "faults-slow"})
    assert [r["status"] for r in store.runs()] == ["killed", "ok"]


def test_an_evaluator_that_raises_on_one_variant_fails_only_that_and_a_rerun_measures_only_it(
    tiny_model: Path, tmp_path: Path, faults_plugin: Path
) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["quantize", str(tiny_model), "-v", "rtn:int8", "--evaluator", "size",
            "--evaluator", "faults-eval", "--out", str(out)]  # fmt: skip
    first = quantforge(*args, env={"QUANTFORGE_CACHE_DIR": str(cache), "QF_EVAL_FAIL": "1"})
    assert first.returncode == 1
    assert "Failed: rtn-int8 on cpu" in first.stderr
    assert "evaluate failed on purpose" in first.stderr
    store = ResultsStore(out)
    assert {m.variant for m in store.measurements()} == {"base", "rtn-int8"}  # size still kept
    assert {(e["variant"], e["status"]) for e in store.evaluations()} == {
        ("base", "ok"),
        ("rtn-int8", "partial"),
    }
    store.close()

    again = quantforge(*args, env={"QUANTFORGE_CACHE_DIR": str(cache)})
    assert again.returncode == 0, again.stderr
    assert "0 steps run, 1 cached; 1 measurements run, 1 cached" in again.stderr
    store = _check_store(out, {"base", "rtn-int8"})
    assert {m.metric for m in store.measurements("rtn-int8")} >= {"files", "size_mb"}
    assert _leftovers(cache) == []


def test_a_worker_over_its_memory_limit_fails_alone_and_says_so(
    tiny_model: Path, tmp_path: Path, faults_plugin: Path
) -> None:
    """A real RLIMIT_AS (--worker-memory): the step that asks for more fails in the
    worker; the step before it in the same worker is kept; the host is untouched."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["quantize", str(tiny_model), "-v", "rtn:int8", "-v", "faults-hog",
            "--evaluator", "size", "--worker-memory", "3GB", "--out", str(out)]  # fmt: skip
    env = {"QUANTFORGE_CACHE_DIR": str(cache), "QF_HOG_BYTES": str(8 * 2**30)}
    first = quantforge(*args, env=env)
    assert first.returncode == 1
    assert "ran out of memory within the worker limit of 3.00 GB" in first.stderr
    assert "MemoryError" in first.stderr
    store = ResultsStore(out)
    statuses = {v["name"]: v["status"] for v in store.variants()}
    assert statuses == {"base": "ok", "rtn-int8": "ok", "faults-hog": "failed"}
    store.close()
    assert _leftovers(cache) == []

    again = quantforge(*args, env={**env, "QF_HOG_BYTES": "0"})
    assert again.returncode == 0, again.stderr
    assert "1 steps run, 1 cached" in again.stderr
    _check_store(out, {"base", "rtn-int8", "faults-hog"})


def test_two_runs_on_one_store_and_one_cache_build_each_step_once(
    tiny_model: Path, tmp_path: Path, faults_plugin: Path
) -> None:
    """Run B needs the step that run A is in the middle of building: B waits for A's lock,
    then takes the step from the cache; both runs' rows are in the one store, which stays
    sound."""
    out, cache, release = tmp_path / "run", tmp_path / "cache", tmp_path / "release"
    env = {"QUANTFORGE_CACHE_DIR": str(cache), "QF_RELEASE": str(release)}
    common = ["--evaluator", "size", "--out", str(out)]
    a_err, b_err = tmp_path / "a.err", tmp_path / "b.err"
    with a_err.open("w") as a_log, b_err.open("w") as b_log:
        a = _start(["quantize", str(tiny_model), "-v", "rtn:int8", "-v", "faults-slow", *common],
                   env, a_log)  # fmt: skip
        _wait_for(lambda: _half_written(cache), a, "run A's slow step started")
        b = _start(["quantize", str(tiny_model), "-v", "faults-slow", "-v", "rtn:int4", *common],
                   env, b_log)  # fmt: skip
        _wait_for(lambda: "another run is building" in b_err.read_text(), b, "run B waited")
        release.touch()
        assert a.wait(timeout=300) == 0, a_err.read_text()
        assert b.wait(timeout=300) == 0, b_err.read_text()
    assert "2 steps run, 0 cached" in a_err.read_text()
    assert "1 steps run, 1 cached" in b_err.read_text()  # faults-slow was A's
    store = _check_store(out, {"base", "rtn-int8", "faults-slow", "rtn-int4"})
    assert [r["status"] for r in store.runs()] == ["ok", "ok"]
    assert _leftovers(cache) == []


ON_DISK = ["-v", "rtn:int8", "-v", "llamacpp:q8_0", "--evaluator", "size"]


@pytest.fixture
def small_disk(tiny_model: Path, tmp_path: Path) -> Any:
    """A tmpfs that holds the tiny model's RTN int8 and not the f16 GGUF export after it
    (sized from the same variants in the session's cache: the f16 file is about twice the
    Q8_0 one). Mounting needs root; CI runs as root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    probe = quantforge("quantize", str(tiny_model), *ON_DISK, "--out", str(tmp_path / "probe"))
    assert probe.returncode == 0, probe.stderr

    def size(variant: str) -> int:
        folder = (tmp_path / "probe" / "variants" / variant).resolve()
        return sum(p.stat().st_size for p in folder.iterdir())

    room = size("rtn-int8") + 0.9 * size("llamacpp-q8_0") + 2**20
    disk = tmp_path / "disk"
    disk.mkdir()
    options = f"size={int(room / 1024)}k"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_during_an_export_stops_in_one_line_and_a_rerun_completes(
    tiny_model: Path, small_disk: Path
) -> None:
    from quantforge_llamacpp.converter import converter_dir

    out, cache = small_disk / "run", small_disk / "cache"
    # one job at a time: the disk is sized to fill at the export, after RTN int8 is whole
    args = ["quantize", str(tiny_model), *ON_DISK, "--out", str(out), "--jobs", "1"]
    # llama.cpp's converter (a download) stays in the session's cache, off the small disk
    env = {"QUANTFORGE_CACHE_DIR": str(cache), "QUANTFORGE_LLAMA_CPP_DIR": str(converter_dir())}
    first = quantforge(*args, env=env)
    fails_with(first, "the disk is full", "rerun the same command", after_progress=True)
    assert _leftovers(cache) == []
    built = [p for p in (cache / "artifacts").iterdir() if (p / "quantforge.json").is_file()]
    assert len(built) == 1  # RTN int8, whole; nothing of the export
    assert ResultsStore(out).runs()[-1]["status"] == "aborted"

    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    again = quantforge(*args, env=env)
    assert again.returncode == 0, again.stderr
    assert "2 steps run, 1 cached" in again.stderr
    assert _leftovers(cache) == []
    store = ResultsStore(out)
    assert {v["name"]: v["status"] for v in store.variants()} == dict.fromkeys(
        ("base", "rtn-int8", "llamacpp-q8_0"), "ok"
    )
