"""Fast start and the one-line error contract, through the real CLI in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, fails_with, quantforge

HEAVY = ("torch", "transformers", "bitsandbytes", "safetensors", "accelerate")


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["plugins"], ["plugins", "--json"], ["plugins", "--third-party"], ["methods"]],
)
def test_startup_commands_import_no_heavy_library(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from quantforge.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout, out.stdout[-500:]


def test_help_names_the_commands() -> None:
    out = quantforge("--help")
    for command in (
        "plugins",
        "methods",
        "targets",
        "evaluators",
        "run",
        "quantize",
        "results",
        "demo",
        "fit",
    ):
        assert command in out.stdout


def test_methods_targets_evaluators_list_first_party_objects() -> None:
    methods = {m["name"]: m for m in json.loads(quantforge("methods", "--json").stdout)}
    assert methods["rtn"]["presets"] == ["int4", "int8"]
    assert methods["bnb"]["output_format"] == "hf+bnb"
    assert {o["name"] for o in methods["rtn"]["options"]} >= {"bits", "group_size", "symmetric"}
    targets = {t["name"]: t for t in json.loads(quantforge("targets", "--json").stdout)}
    assert targets["cpu"]["measured"] is True and targets["cpu"]["unavailable"] is None
    assert targets["rpi5"]["measured"] is False and targets["rpi5"]["bandwidth_gbs"] == 17.1
    assert targets["rpi5"]["runtimes"]["gguf"] == "llama.cpp"
    # the CUDA target is listed everywhere and says why it cannot run on a machine without a GPU
    if not Path("/dev/nvidia0").exists():
        assert "no CUDA GPU" in targets["cuda"]["unavailable"]
    evaluators = {e["name"]: e for e in json.loads(quantforge("evaluators", "--json").stdout)}
    by_default = {name for name, e in evaluators.items() if e["by_default"]}
    assert by_default == {"size", "speed", "memory", "perplexity", "kl"}
    assert set(evaluators) - by_default == {"toolcalls", "exact-match", "lmeval"}


def test_unknown_method_suggests(tiny_model: Path, tmp_path: Path) -> None:
    fails_with(
        quantforge("quantize", str(tiny_model), "-v", "rtm:int4", "--out", str(tmp_path / "r")),
        "unknown method 'rtm'",
        "did you mean: rtn",
    )
    assert not (tmp_path / "r").exists(), "nothing is written before preflight passes"


def test_unknown_target_suggests(tiny_model: Path, tmp_path: Path) -> None:
    fails_with(
        quantforge(
            "quantize",
            str(tiny_model),
            "-v",
            "rtn:int4",
            "--target",
            "cpuu",
            "--out",
            str(tmp_path),
        ),
        "unknown target 'cpuu'",
        "did you mean: cpu",
    )


@pytest.mark.parametrize(
    ("variant", "fragment"),
    [
        ("rtn:int4,group_size=3", "rtn: option 'group_size' must be >= 16, got 3"),
        ("rtn,bits=four", "rtn: option 'bits' must be int, got 'four'"),
        ("rtn:int3", "unknown preset of rtn 'int3'"),
        ("rtn,group=64", "did you mean 'group_size'?"),
        ("bnb:nf4,compute_dtype=float8", "must be one of float32, bfloat16, float16"),
        ("rtn:int4,=3", "bad option '=3'"),
    ],
)
def test_bad_options_fail_before_compute(
    tiny_model: Path, tmp_path: Path, variant: str, fragment: str
) -> None:
    fails_with(
        quantforge("quantize", str(tiny_model), "-v", variant, "--out", str(tmp_path / "r")),
        fragment,
    )
    assert not (tmp_path / "r").exists()


def test_missing_model_path(tmp_path: Path) -> None:
    fails_with(
        quantforge(
            "quantize", str(tmp_path / "nope"), "-v", "rtn:int4", "--out", str(tmp_path / "r")
        ),
        "does not exist",
    )


def test_model_folder_without_weights(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    fails_with(
        quantforge("quantize", str(model), "-v", "rtn:int4", "--out", str(tmp_path / "r")),
        "has no weights",
    )


def test_file_instead_of_model_folder(tmp_path: Path) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"x")
    fails_with(quantforge("quantize", str(file), "-v", "rtn:int4"), "is a file, not a model folder")


def test_unreadable_evaluation_text(tiny_model: Path, tmp_path: Path) -> None:
    fails_with(
        quantforge(
            "quantize", str(tiny_model), "-v", "rtn:int4", "--eval-text", str(tmp_path / "none.txt")
        ),
        "evaluation text file",
        "does not exist",
    )


@pytest.mark.parametrize(
    ("recipe", "fragment"),
    [
        (
            'variants = ["rtn:int4"]\ncolour = 1\n[model]\nid = "m"\n',
            "unknown key 'colour' in the recipe",
        ),
        ('variants = "rtn:int4"\n[model]\nid = "m"\n', "variants must be a list, got str"),
        (
            'variants = ["rtn:int4"]\n[model]\nid = "m"\n[run]\nseed = "one"\n',
            "run.seed must be an integer",
        ),
        (
            'variants = ["rtn:int4"]\n[model]\nid = "m"\n[data]\neval_txt = "x"\n',
            "did you mean 'eval_text'?",
        ),
        (
            'variants = [{method = "rtn", bitz = 4}]\n[model]\nid = "m"\n',
            "unknown key 'bitz' in variants[0]",
        ),
        ('variants = ["rtn:int4", "rtn:int4"]\n[model]\nid = "m"\n', "appears twice"),
        (
            '[model]\nid = "m"\nvariants = ["rtn:int4"]\n',
            "top-level keys such as 'variants' must come before",
        ),
        ('variants = ["rtn:int4"]\n', "has no [model] table"),
        ("[model\n", "is not valid TOML"),
    ],
)
def test_bad_recipes(tmp_path: Path, recipe: str, fragment: str) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(recipe)
    fails_with(quantforge("run", str(path)), fragment)


def test_missing_recipe(tmp_path: Path) -> None:
    fails_with(quantforge("run", str(tmp_path / "nope.toml")), "does not exist")


def test_missing_optional_library_names_the_extra(
    faults_plugin: Path, tiny_model: Path, tmp_path: Path
) -> None:
    fails_with(
        quantforge(
            "quantize", str(tiny_model), "-v", "faults-missing", "--out", str(tmp_path / "r")
        ),
        "faults-missing needs surely_not_installed_pkg",
        "pip install 'quantforge[missingextra]'",
    )
    listed = {m["name"]: m for m in json.loads(quantforge("methods", "--json").stdout)}
    assert listed["faults-missing"]["missing_packages"] == ["surely_not_installed_pkg"]


def test_results_without_a_store(tmp_path: Path) -> None:
    fails_with(quantforge("results", str(tmp_path)), "no results store in", "quantforge run")


def test_debug_variable_shows_the_traceback(tmp_path: Path) -> None:
    out = quantforge("results", str(tmp_path), env={"QUANTFORGE_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_hub_id_that_cannot_be_fetched_offline(tmp_path: Path) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    fails_with(
        quantforge(
            "quantize",
            "some-org/some-model",
            "-v",
            "rtn:int4",
            "--out",
            str(tmp_path / "r"),
            env=env,
        ),
        "model 'some-org/some-model' is not a local folder and could not be fetched from the Hub",
    )
    assert not (tmp_path / "r").exists()


def test_cli_reference_is_current() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "quantforge.cli.reference"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert out.stdout == (ROOT / "docs" / "cli.md").read_text(), (
        "docs/cli.md is stale: run COLUMNS=100 python -m quantforge.cli.reference > docs/cli.md"
    )
