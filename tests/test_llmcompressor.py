"""llm-compressor: compressed-tensors checkpoints for vLLM, made by ``oneshot`` in the worker
environment (``python -m quantforge_llmcompressor.environment``; ``scripts/bootstrap test``
makes it) and measured here through transformers' compressed-tensors loader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import Metrics, fails_with, quantforge
from conftest import quantize_and_measure as run_and_measure

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lc_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Metrics]:
    out = tmp_path_factory.mktemp("llmcompressor") / "run"
    variants = ["llm-compressor:w4a16", "llm-compressor:w4a16-gptq", "llm-compressor:w8a8"]
    metrics = run_and_measure(
        tiny_model, out, variants, "--target", "cpu", evaluators={"size": [], "kl": []}
    )
    return out, metrics


def _config(out: Path, variant: str) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "variants" / variant / "config.json").read_text(encoding="utf-8"))


def test_the_checkpoints_are_compressed_tensors_that_load_back(lc_run) -> None:  # type: ignore[no-untyped-def]
    out, metrics = lc_run
    w4 = _config(out, "llm-compressor-w4a16")["quantization_config"]
    assert w4["quant_method"] == "compressed-tensors" and w4["format"] == "pack-quantized"
    assert w4["ignore"] == ["lm_head"]
    (group,) = w4["config_groups"].values()
    assert group["weights"]["num_bits"] == 4 and group["weights"]["group_size"] == 128
    w8 = _config(out, "llm-compressor-w8a8")["quantization_config"]
    (group,) = w8["config_groups"].values()
    assert group["input_activations"]["dynamic"] and group["input_activations"]["num_bits"] == 8
    base = metrics[("base", "cpu")]["size_mb"]
    for name in ("llm-compressor-w4a16", "llm-compressor-w4a16-gptq", "llm-compressor-w8a8"):
        measured = metrics[(name, "cpu")]
        assert 0 < measured["kl_divergence"] < 0.01, (name, measured)
        assert measured["size_mb"] < 0.6 * base, (name, measured)
    assert (
        metrics[("llm-compressor-w4a16", "cpu")]["size_mb"]
        < (metrics[("llm-compressor-w8a8", "cpu")]["size_mb"])
    )


def test_gptq_on_the_calibration_rows_beats_round_to_nearest(lc_run) -> None:  # type: ignore[no-untyped-def]
    out, metrics = lc_run
    rtn = metrics[("llm-compressor-w4a16", "cpu")]["kl_divergence"]
    gptq = metrics[("llm-compressor-w4a16-gptq", "cpu")]["kl_divergence"]
    assert gptq < 0.7 * rtn, (gptq, rtn)
    recipe = (out / "variants" / "llm-compressor-w4a16-gptq" / "recipe.yaml").read_text()
    assert "GPTQModifier" in recipe
    precision = json.loads(
        (out / "variants" / "llm-compressor-w4a16-gptq" / "quantforge-precision.json").read_text()
    )
    assert precision["algorithm"] == "gptq" and precision["group_size"] == 128
    assert "group_sizes" not in precision  # 128 divides every width of the tiny model


def test_the_card_gives_the_vllm_serve_line(lc_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = lc_run
    cards = tmp_path / "cards"
    done = quantforge(
        "cards", str(out), "--out", str(cards), "--variant", "llm-compressor-w8a8",
        "--namespace", "someone", "--no-plot",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    card = (cards / "llm-compressor-w8a8" / "README.md").read_text(encoding="utf-8")
    assert "library_name: vllm" in card.split("---")[1]
    assert "vllm serve someone/" in card and "from vllm import LLM" in card


def test_bad_options_and_models_are_refused_before_any_compute(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = quantforge("quantize", str(tiny_model), "-v", "llm-compressor:fp8,group_size=64")
    fails_with(done, "one scale per output channel")
    done = quantforge("quantize", str(tiny_model), "-v", "llm-compressor:w4a16,group_size=96")
    fails_with(done, "group_size")
    from quantforge.testing.families import family_model

    moe = family_model("qwen3_moe")
    fails_with(quantforge("quantize", str(moe), "-v", "llm-compressor", "--out", str(out)))
    assert not out.exists()


def test_a_missing_worker_environment_is_one_line_naming_the_command(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    env = {  # a cache of its own: a variant built before would be reused, with no worker
        "QUANTFORGE_LLMCOMPRESSOR_PYTHON": str(tmp_path / "no-such-python"),
        "QUANTFORGE_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = quantforge(
        "quantize", str(tiny_model), "-v", "llm-compressor", "--out", str(out), env=env
    )
    fails_with(done, "names no file", "python -m quantforge_llmcompressor.environment")
    assert not out.exists()


def test_a_failing_oneshot_reports_its_last_error_and_leaves_no_variant(
    tiny_model: Path, tmp_path: Path
) -> None:
    """This interpreter has no llm-compressor: the worker fails at its import."""
    out = tmp_path / "run"
    env = {
        "QUANTFORGE_LLMCOMPRESSOR_PYTHON": sys.executable,
        "QUANTFORGE_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = quantforge(
        "quantize", str(tiny_model), "-v", "llm-compressor", "--out", str(out),
        "--evaluator", "size", env=env,
    )  # fmt: skip
    assert done.returncode != 0
    failed = [ln for ln in done.stderr.splitlines() if ln.startswith("Failed llm-compressor")]
    assert "oneshot failed" in failed[0] and "No module named 'llmcompressor'" in failed[0]
    assert not (out / "variants" / "llm-compressor-w4a16").exists()
