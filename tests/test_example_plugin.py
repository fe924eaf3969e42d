"""A third-party plugin installed with pip is found through the entry-point group and used in a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, quantforge, with_pythonpath


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT / "tests" / "example_plugin"),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "quantforge_example").is_dir()
    return target


def test_pip_installed_plugin_is_listed(installed: Path) -> None:
    out = quantforge("plugins", "--json", env=with_pythonpath(installed))
    assert out.returncode == 0, out.stderr
    (info,) = [p for p in json.loads(out.stdout) if p["name"] == "example"]
    assert info["distribution"] == "quantforge-example" and info["version"] == "0.3.0"
    assert info["first_party"] is False and info["errors"] == []
    assert info["registered"] == {"methods": ["half"], "evaluators": ["param-count"]}
    assert sorted(info["hooks"]) == ["register_evaluators", "register_quantizers"]


def test_pip_installed_plugin_runs_in_a_run(
    installed: Path, tiny_model: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'variants = ["half:bf16"]\nevaluators = ["size", "param-count", "perplexity"]\n'
        f'[model]\nid = "{tiny_model}"\n[run]\noutput = "out"\n'
    )
    out = quantforge("run", str(recipe), "--json", env=with_pythonpath(installed))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    rows = {r["variant"]: r for r in result["tables"][0]["rows"]}
    assert rows["half-bf16"]["status"] == "ok" and rows["half-bf16"]["bits"] == 16
    half, base = rows["half-bf16"]["metrics"], rows["base"]["metrics"]
    assert half["stored_elements_m"] == pytest.approx(base["stored_elements_m"])
    assert half["size_mb"] < 0.6 * base["size_mb"]
    assert half["perplexity"] == pytest.approx(base["perplexity"], rel=0.05)
