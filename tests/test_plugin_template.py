"""`quantforge plugin new`: one package of each kind, pip-installed, passes its own tests
and runs in `quantforge quantize` beside the first-party plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import quantforge, with_pythonpath

KINDS = {"quantizer": "tq", "exporter": "tx", "target": "tt", "evaluator": "te"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The four packages as `plugin new` writes them, and a folder they are installed in."""
    work = tmp_path_factory.mktemp("plugins")
    for kind, name in KINDS.items():
        out = quantforge("plugin", "new", name, "--kind", kind, "--out", str(work / name))
        assert out.returncode == 0, out.stderr
        assert f"pip install -e {work / name}" in out.stdout
    site = work / "site"
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
            str(site),
            *(str(work / name) for name in KINDS.values()),
        ],
        check=True,
        capture_output=True,
    )
    return work, site


def test_a_package_has_entry_point_module_tests_and_readme(generated: tuple[Path, Path]) -> None:
    work, _ = generated
    folder = work / "tq"
    written = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert {
        "README.md",
        "pyproject.toml",
        "quantforge_tq/__init__.py",
        "tests/test_quantforge_tq.py",
    } <= written  # with what pip's build left beside them
    pyproject = (folder / "pyproject.toml").read_text()
    assert '[project.entry-points.quantforge]\ntq = "quantforge_tq"' in pyproject
    module = (folder / "quantforge_tq" / "__init__.py").read_text()
    assert "class TqQuantizer(Quantizer):" in module and "@hookimpl" in module
    assert "import torch" not in module.split("class TqQuantizer")[0]  # light at import


def test_installed_packages_register_through_the_entry_point(generated: tuple[Path, Path]) -> None:
    _, site = generated
    out = quantforge("plugins", "--json", "--third-party", env=with_pythonpath(site))
    assert out.returncode == 0, out.stderr
    registered = {p["name"]: p["registered"] for p in json.loads(out.stdout)}
    assert registered["tq"] == {"methods": ["tq"]}
    assert registered["tx"] == {"methods": ["tx"]}
    assert registered["tt"] == {"targets": ["tt"]}
    assert registered["te"] == {"evaluators": ["te"]}


@pytest.mark.slow
def test_the_generated_conformance_tests_pass(generated: tuple[Path, Path]) -> None:
    work, site = generated
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + [str(work / name / "tests") for name in KINDS.values()],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, **with_pythonpath(site)},
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "8 passed" in out.stdout


@pytest.mark.slow
def test_the_four_kinds_run_in_quantize(
    generated: tuple[Path, Path], tiny_model: Path, tmp_path: Path
) -> None:
    """The quantizer and exporter build variants, the target measures them and the
    evaluator scores them. Inline, for CI time: that worker processes find pip-installed
    plugins too is test_example_plugin's."""
    _, site = generated
    out = quantforge(
        "quantize",
        str(tiny_model),
        "-v",
        "tq:int4",
        "-v",
        "tx:small-shards",
        "--target",
        "tt,threads=1",
        "--evaluator",
        "size",
        "--evaluator",
        "perplexity",
        "--evaluator",
        "te,max_tokens=128",
        "--out",
        str(tmp_path / "run"),
        "--executor",
        "inline",
        "--json",
        env=with_pythonpath(site),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (table,) = json.loads(out.stdout)["tables"]
    assert table["target"] == "tt"
    rows = {r["variant"]: r for r in table["rows"]}
    assert {name: r["status"] for name, r in rows.items()} == {
        "base": "ok",
        "tq-int4": "ok",
        "tx-small-shards": "ok",
    }
    base, int4, shards = (rows[n]["metrics"] for n in ("base", "tq-int4", "tx-small-shards"))
    assert rows["tq-int4"]["bits"] == 4
    # the exporter changes files, not numbers; 4-bit rounding costs perplexity
    assert shards["perplexity"] == pytest.approx(base["perplexity"], rel=1e-4)
    assert int4["perplexity"] > base["perplexity"]
    assert 0 < base["te_entropy"] < 10 and int4["te_entropy"] != base["te_entropy"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad Name", "--kind", "target"], "plugin name 'Bad Name' must be lowercase"),
        (["rtn", "--kind", "quantizer"], "a quantizer named 'rtn' is already registered"),
        (["perplexity", "--kind", "evaluator"], "an evaluator named 'perplexity'"),
    ],
)
def test_bad_names_are_refused_and_nothing_is_written(
    args: list[str], message: str, tmp_path: Path
) -> None:
    out = quantforge("plugin", "new", *args, "--out", str(tmp_path / "p"))
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert message in line
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    out = quantforge("plugin", "new", "ok", "--kind", "quantizer", "--out", str(folder))
    assert out.returncode == 2 and "already exists" in out.stderr
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging left behind
