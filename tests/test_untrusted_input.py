"""Input a user did not make: pickle weights, code a model ships, files cut short, numbers
out of range. Each is refused in preflight with one line, exit 2 and no run folder, unless
the user says they trust it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import fails_with, quantforge
from quantforge.errors import ModelSourceError, RecipeError
from quantforge.model.checks import check_safetensors, is_pickle
from quantforge.running.recipe import load_recipe
from quantforge.store.results import ResultsStore

# what a model-shipped module would do if anything imported it
SHIPPED_CODE = "from pathlib import Path\nPath(__file__).with_name('RAN').write_text('ran')\n"


def _copy(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest


def _quantize(model: Path, out: Path, *args: str) -> list[str]:
    return ["quantize", str(model), "-v", "rtn:int8", "--evaluator", "size", "--out", str(out),
            *args]  # fmt: skip


@pytest.fixture(scope="module")
def pickled(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its weights in pytorch_model.bin (torch.save) instead."""
    import torch
    from safetensors.torch import load_file

    folder = _copy(tiny_model, tmp_path_factory.mktemp("pickle") / "model")
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_weights_are_refused_unless_allowed(pickled: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    refused = quantforge(*_quantize(pickled, out))
    fails_with(refused, "holds pickle weights only (pytorch_model.bin)", "--allow-pickle")
    assert refused.returncode == 2 and not out.exists()
    allowed = quantforge(*_quantize(pickled, out, "--allow-pickle"))
    assert allowed.returncode == 0, allowed.stderr
    run = ResultsStore(out).latest_run()
    assert run is not None and json.loads(run["config"])["allow_pickle"] is True  # on record


def test_an_imported_pickle_checkpoint_is_refused_too(
    tiny_model: Path, pickled: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = quantforge(*_quantize(tiny_model, out, "--import", f"theirs={pickled}"))
    fails_with(done, "imported checkpoint", "holds pickle weights only")
    assert not out.exists()


def test_pickle_is_recognised_by_content(pickled: Path, tmp_path: Path) -> None:
    assert is_pickle(pickled / "pytorch_model.bin")
    raw = tmp_path / "openvino_model.bin"  # OpenVINO's weights: raw bytes, not pickle
    raw.write_bytes(b"\x00\x01" * 64)
    assert not is_pickle(raw)


def _ships_code(model: Path, dest: Path, model_type: str) -> Path:
    folder = _copy(model, dest)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (folder / name).write_text(SHIPPED_CODE)
    return folder


def test_shipped_code_of_a_known_model_type_is_ignored_and_said(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = _ships_code(tiny_model, tmp_path / "model", "llama")
    done = quantforge(*_quantize(model, tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    said = " ".join(done.stderr.split())
    assert "ships its own code (configuration_custom.py, modeling_custom.py)" in said
    assert "never runs a model's code" in said
    assert not (model / "RAN").exists()


def test_a_model_type_only_its_shipped_code_defines_is_refused(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = _ships_code(tiny_model, tmp_path / "model", "customlm")
    out = tmp_path / "run"
    done = quantforge(*_quantize(model, out))
    fails_with(done, "needs the code it ships", "'customlm'", "never runs code")
    assert done.returncode == 2 and not out.exists()
    assert not (model / "RAN").exists()


def test_a_safetensors_file_cut_short_is_refused_before_the_run(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = _copy(tiny_model, tmp_path / "model")
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as fh:
        fh.truncate(size // 2)
    out = tmp_path / "run"
    done = quantforge(*_quantize(model, out))
    fails_with(done, "model.safetensors is cut short", f"{size:,} its header promises")
    assert done.returncode == 2 and not out.exists()

    weights.write_bytes(b"\xff" * 64)  # a header length that cannot be
    with pytest.raises(ModelSourceError, match="cut short or is not a safetensors file"):
        check_safetensors(model)


def test_a_shard_the_index_names_must_be_there(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path / "model")
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelSourceError, match="names 1 shard.*model-00002-of-00002"):
        check_safetensors(model)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["quantize", "M", "-v", "rtn:int8", "--step-timeout", "-5"], "--step-timeout: must be above 0"),
        (["quantize", "M", "-v", "rtn:int8", "--step-timeout", "nan"], "is not a finite number"),
        (["quantize", "M", "-v", "rtn:int8", "--calibration-samples", "0"], "must be at least 1"),
        (["quantize", "M", "-v", "rtn:int8", "--calibration-seq-len", "x"], "'x' is not an integer"),
        (["quantize", "M", "-v", "rtn:int8", "--worker-memory", "0GB"], "must be above 0"),
        (["quantize", "M", "-v", "rtn:int8", "--worker-memory", "lots"], "'lots' is not a size"),
        (["search", "M", "--target", "rpi5", "--max-kld", "inf"], "--max-kld: 'inf' is not a finite"),
        (["search", "M", "--target", "rpi5", "--budget-minutes", "0"], "must be above 0"),
        (["fit", "M", "--context", "0"], "--context: must be at least 1"),
        (["space", "serve", "R", "--port", "70000"], "--port: must be at most 65535"),
        (["space", "serve", "R", "--memory-budget-mb", "-1"], "must be above 0"),
        (["space", "serve", "R", "--max-new-tokens", "0"], "must be at least 1"),
    ],
)  # fmt: skip
def test_every_numeric_flag_is_checked_in_one_line(args: list[str], fragment: str) -> None:
    done = quantforge(*args)
    fails_with(done, fragment, "--help")
    assert done.returncode == 2


def test_a_worker_memory_cap_needs_a_worker(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = quantforge(*_quantize(tiny_model, out, "--executor", "inline", "--worker-memory", "4GB"))
    fails_with(done, "--worker-memory caps worker processes")
    assert not out.exists()


def test_recipe_values_are_checked(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    for run, message in (
        ('worker_memory = "none"', "run.worker_memory: 'none' is not a size"),
        ("allow_pickle = 1", "run.allow_pickle must be true or false"),
        ("step_timeout = -5", "run.step_timeout must be > 0"),
    ):
        recipe.write_text(f'variants = ["rtn:int8"]\n[model]\nid = "m"\n[run]\n{run}\n')
        with pytest.raises(RecipeError, match=message):
            load_recipe(recipe)
    recipe.write_text(
        'variants = ["rtn:int8"]\n[model]\nid = "m"\n[run]\nworker_memory = "1.5GB"\n'
    )
    assert load_recipe(recipe).worker_memory == int(1.5 * 2**30)


def test_calibration_too_short_is_refused_before_the_run_folder(
    tiny_model: Path, tmp_path: Path
) -> None:
    text = tmp_path / "short.txt"
    text.write_text("just a few words")
    out, cache = tmp_path / "run", tmp_path / "cache"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "gptq:int4", "--calibration", str(text),
        "--evaluator", "size", "--out", str(out), env={"QUANTFORGE_CACHE_DIR": str(cache)},
    )  # fmt: skip
    fails_with(done, "calibration text gives", "samples of 512 tokens need", after_progress=True)
    assert done.returncode == 2 and not out.exists()
    assert not list((cache / "staging").iterdir())  # no logs kept for a refusal
