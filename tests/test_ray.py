"""``--executor ray``: variant jobs as Ray tasks on a real local Ray instance."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fails_with, quantforge

pytestmark = pytest.mark.slow
DETERMINISTIC = ("size_mb", "perplexity", "kl_divergence", "top1_agreement")


def _values(run: Path) -> dict[tuple[str, str, str], float]:
    data = json.loads(quantforge("results", str(run), "--json").stdout)
    return {
        (m["variant"], m["target"], m["metric"]): m["value"]
        for m in data["measurements"]
        if m["metric"] in DETERMINISTIC
    }


def test_a_worker_dying_under_ray_fails_its_variant_and_the_run_completes(
    faults_plugin: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "faults-crash", "-v", "rtn:int8",
        "--target", "cpu", "--evaluator", "size", "--executor", "ray", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Failed: faults-crash" in done.stderr + done.stdout
    assert "killed" in done.stderr + done.stdout
    measured = {v for (v, _, _) in _values(out)}
    assert {"base", "rtn-int8"} <= measured and "faults-crash" not in measured


def test_an_unreachable_cluster_is_one_line_and_writes_nothing(
    tiny_model: Path, tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens
    out = tmp_path / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "rtn:int4", "--executor", "ray",
        "--ray-address", f"127.0.0.1:{port}", "--out", str(out), timeout=60,
    )  # fmt: skip
    fails_with(done, f"cannot reach the Ray cluster at 127.0.0.1:{port}", "--executor ray")
    assert not out.exists()
    fails_with(
        quantforge("quantize", str(tiny_model), "-v", "rtn:int4", "--ray-address", "x:1"),
        "--ray-address goes with --executor ray",
    )


def test_without_ray_installed_the_executor_names_the_extra_and_local_still_runs(
    tiny_model: Path, tmp_path: Path
) -> None:
    shadow = tmp_path / "no-ray"
    (shadow / "ray").mkdir(parents=True)
    (shadow / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    path = os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])
    args = ["quantize", str(tiny_model), "-v", "rtn:int4", "--evaluator", "size"]
    out = tmp_path / "run"
    done = quantforge(*args, "--executor", "ray", "--out", str(out), env={"PYTHONPATH": path})
    fails_with(done, "needs ray, which is not installed", "quantforge[ray]")
    assert not out.exists()
    done = quantforge(*args, "--out", str(out), env={"PYTHONPATH": path})
    assert done.returncode == 0, done.stderr


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[str]:
    """A Ray cluster of two nodes on this machine, started as a user would with
    ``ray start``: a head and a second node, one CPU each, each with a resource of its own."""
    import shutil
    import subprocess
    import sys

    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    assert ray is not None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    # Ray 2.60 may turn token authentication on for a head started by hand; a second
    # node then fails to join with InvalidAuthToken: this cluster on 127.0.0.1 goes without
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run(
            [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--include-dashboard", "false", "--resources", '{"head": 1}', *common],
            check=True, capture_output=True, env=env, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [ray, "start", "--address", address, "--node-ip-address", "127.0.0.1",
             "--resources", '{"second": 1}', *common],
            check=True, capture_output=True, env=env, timeout=120,
        )  # fmt: skip
        yield address
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["started"] < b["ended"] and b["started"] < a["ended"]


def test_a_run_on_a_two_node_cluster_uses_both_nodes_at_once_with_local_results(
    two_node_cluster: str, tiny_model: Path, tmp_path: Path
) -> None:
    """Ray and local processes give the same results table, both from cold caches (so every
    step and measurement really runs in each), and the Ray run used both nodes at once."""
    command = ["quantize", str(tiny_model), "--target", "cpu"]
    command += [x for v in ("rtn:int8", "rtn:int4", "hqq:int4", "rtn:int4,group_size=64")
                for x in ("-v", v)]  # fmt: skip
    command += [x for e in ("size", "perplexity", "kl") for x in ("--evaluator", e)]
    runs = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        env = {"QUANTFORGE_CACHE_DIR": str(tmp_path / f"cache-{executor}")}
        extra = ["--ray-address", two_node_cluster] if executor == "ray" else []
        done = quantforge(*command, "--out", str(out), "--executor", executor, *extra, env=env)
        assert done.returncode == 0, done.stderr
        assert "4 steps run, 0 cached" in done.stderr + done.stdout
        runs[executor] = out
    local, ray = _values(runs["local"]), _values(runs["ray"])
    assert set(local) == set(ray) and len(local) >= 4 * 5
    for key, value in local.items():
        assert ray[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key

    placements = [json.loads(p.read_text()) for p in runs["ray"].glob("logs/*/*.ray.json")]
    # every job asked Ray for what it needs: tokenize, build, reference, measure
    assert len(placements) >= 4 and all(p["requested"] is not None for p in placements)
    build = next(p for p in placements if "memory" in p["requested"])
    assert build["resources"]["CPU"] == 1.0 and build["node_id"]
    assert not list(runs["local"].glob("logs/*/*.ray.json"))
    config = json.loads(quantforge("results", str(runs["ray"]), "--json").stdout)["run"]
    assert json.loads(config["config"])["executor"] == "ray"
    nodes = {p["node_id"] for p in placements}
    assert len(nodes) == 2, nodes  # the head and the second node both ran jobs
    side_by_side = [
        (a, b)
        for a in placements
        for b in placements
        if a["node_id"] < b["node_id"] and _overlap(a, b)
    ]
    assert side_by_side  # at the same time, one on each node
    assert all(p["ended"] >= p["started"] for p in placements)
