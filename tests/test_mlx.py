"""MLX through mlx-lm, on MLX's CPU device (the mlx-cpu wheel): HF -> MLX export, mlx-lm's
quantizations (affine widths, floating-point modes, mixed recipes, AWQ, GPTQ, dynamic), measurement
on the ``mlx`` target, cards in mlx-community's shape, and refusals in preflight. The real
model runs the default presets on SmolLM2-135M."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Metrics, assert_missing_names_extra, fails_with, quantforge, reshaped_model
from conftest import quantize_and_measure as run_and_measure
from quantforge.model.texts import stdlib_calibration_text as calibration_text

pytestmark = pytest.mark.slow

SHORT = ["window=128", "stride=128", "max_tokens=256"]


@pytest.fixture(scope="module")
def mlx_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Metrics]:
    tmp = tmp_path_factory.mktemp("mlx")
    calibration = tmp / "calibration.txt"
    calibration.write_text(calibration_text(100_000), encoding="utf-8")
    out = tmp / "run"
    variants = ["mlx", "mlx-lm:4bit", "mlx-lm:8bit", "mlx-lm:3bit", "mlx-lm:mixed_3_6"]
    variants += ["mlx-lm:mxfp4", "mlx-lm:awq", "mlx-lm:gptq", "mlx-lm:dynamic"]
    args = ["--target", "cpu", "--target", "mlx", "--calibration", str(calibration)]
    args += ["--calibration-samples", "8", "--calibration-seq-len", "128"]
    evaluators = {"size": [], "speed": ["prompt_tokens=32", "new_tokens=8"], "kl": SHORT}
    return out, run_and_measure(tiny_model, out, variants, *args, evaluators=evaluators)


def test_the_mlx_export_scores_the_same_tokens_as_the_hf_base(mlx_run) -> None:  # type: ignore[no-untyped-def]
    _, metrics = mlx_run
    f32 = metrics[("mlx", "mlx")]
    assert f32["kl_divergence"] < 1e-6 and f32["top1_agreement"] > 0.999
    assert f32["decode_tps"] > 0 and f32["prefill_tps"] > 0
    assert abs(f32["size_mb"] - metrics[("base", "cpu")]["size_mb"]) < 0.5


def test_fewer_bits_are_smaller_and_diverge_more(mlx_run) -> None:  # type: ignore[no-untyped-def]
    _, metrics = mlx_run
    m = {v: metrics[(v, "mlx")] for v in ("mlx", "mlx-lm-8bit", "mlx-lm-4bit", "mlx-lm-3bit")}
    sizes = [m[v]["size_mb"] for v in m]
    assert sizes == sorted(sizes, reverse=True), sizes
    kls = [m[v]["kl_divergence"] for v in ("mlx-lm-8bit", "mlx-lm-4bit", "mlx-lm-3bit")]
    assert kls == sorted(kls) and kls[0] < kls[2] / 10, kls
    for name in ("mlx-lm-mxfp4", "mlx-lm-awq", "mlx-lm-gptq", "mlx-lm-mixed_3_6"):
        assert 0 < metrics[(name, "mlx")]["kl_divergence"] < 1, name


def test_each_layer_is_recorded_as_mlx_lm_saved_it(mlx_run) -> None:  # type: ignore[no-untyped-def]
    out, _ = mlx_run
    variants = out / "variants"
    mixed = json.loads((variants / "mlx-lm-mixed_3_6" / "quantforge-precision.json").read_text())
    config = json.loads((variants / "mlx-lm-mixed_3_6" / "config.json").read_text())
    widths = set(mixed["modules"].values())
    assert widths == {3, 6}, widths
    assert mixed["default_bits"] == 3 and mixed["bits_per_weight"] < 6
    # what mlx-lm reads back: every layer that differs from the default is named
    for path, bits in mixed["modules"].items():
        assert config["quantization"].get(path, {"bits": 3})["bits"] == bits
    mxfp4 = json.loads((variants / "mlx-lm-mxfp4" / "config.json").read_text())
    assert mxfp4["quantization"]["mode"] == "mxfp4" and mxfp4["quantization"]["group_size"] == 32
    # no file the base ships as code, and the tokenizer came along
    assert not list((variants / "mlx-lm-4bit").glob("*.py"))
    assert (variants / "mlx-lm-4bit" / "tokenizer.json").exists()


def test_dynamic_quantization_lands_at_its_bits_per_weight_between_4_and_8(mlx_run) -> None:  # type: ignore[no-untyped-def]
    out, metrics = mlx_run
    precision = json.loads(
        (out / "variants" / "mlx-lm-dynamic" / "quantforge-precision.json").read_text()
    )
    assert set(precision["modules"].values()) == {4, 8}, precision["modules"]
    # float32 scales and biases: 4 bits everywhere is 5.0 bits per weight here
    assert 5.0 < precision["bits_per_weight"] <= 5.5, precision["bits_per_weight"]
    four, eight = metrics[("mlx-lm-4bit", "mlx")], metrics[("mlx-lm-8bit", "mlx")]
    dynamic = metrics[("mlx-lm-dynamic", "mlx")]
    assert four["size_mb"] < dynamic["size_mb"] < eight["size_mb"]
    assert eight["kl_divergence"] < dynamic["kl_divergence"] < four["kl_divergence"]


def test_the_card_is_in_mlx_communitys_shape(mlx_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = mlx_run
    cards = tmp_path / "cards"
    done = quantforge(
        "cards", str(out), "--out", str(cards), "--variant", "mlx-lm-4bit",
        "--namespace", "someone", "--no-plot",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    card = (cards / "mlx-lm-4bit" / "README.md").read_text(encoding="utf-8")
    header = card.split("---")[1]
    assert "library_name: mlx" in header and "- mlx" in header
    assert "from mlx_lm import load, generate" in card
    assert 'load("someone/' in card and "mlx_lm.generate --model someone/" in card
    assert "from transformers import" not in card  # not the HF snippet


def test_a_width_the_group_does_not_divide_falls_back_per_weight(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Hidden 96 (64 does not divide it: 32 does) and an MLP 200 wide (no MLX group divides
    it: those weights stay in float, named in the record)."""
    model = reshaped_model(
        tiny_model, tmp_path / "odd", hidden_size=96, intermediate_size=200,
        num_attention_heads=3, num_key_value_heads=3, head_dim=32, num_hidden_layers=2,
    )  # fmt: skip
    out = tmp_path / "run"
    metrics = run_and_measure(
        model, out, ["mlx-lm:4bit"], "--target", "mlx", evaluators={"size": [], "kl": SHORT}
    )
    assert metrics[("mlx-lm-4bit", "mlx")]["kl_divergence"] >= 0
    precision = json.loads(
        (out / "variants" / "mlx-lm-4bit" / "quantforge-precision.json").read_text()
    )
    assert set(precision["group_sizes"].values()) == {32}
    assert any(k.endswith("q_proj") for k in precision["group_sizes"])
    floats = [k for k, v in precision["modules"].items() if v == "float"]
    assert floats and all(k.endswith("down_proj") for k in floats), floats
    assert "stay in float" in precision["fallback"]
    # a group size the user writes is checked before any compute
    refused = quantforge(
        "quantize", str(model), "-v", "mlx-lm:4bit,group_size=64", "--out", str(tmp_path / "r")
    )
    fails_with(refused, "group_size 64 does not divide", "leave group_size unset")


def test_options_that_do_not_combine_are_refused_before_any_compute(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    for spec, fragments in [
        ("mlx-lm:mxfp4,bits=3", ("mode mxfp4 fixes its own bits", "bits")),
        ("mlx-lm:mixed_3_6,algorithm=gptq", ("does not combine with gptq",)),
        ("mlx-lm:4bit,group_size=48", ("group_size",)),
        ("mlx-lm:4bit,bpw=5", ("bpw is the budget of algorithm=dynamic",)),
        ("mlx-lm:dynamic,bpw=9.5", ("outside what 4 and 8 bits",)),
    ]:
        done = quantforge("quantize", str(tiny_model), "-v", spec, "--out", str(out))
        fails_with(done, *fragments)
        assert not (out / "variants").exists() or not any((out / "variants").iterdir())


def test_models_mlx_lm_cannot_take_are_refused_and_the_rest_run(tmp_path: Path) -> None:
    """GPT-NeoX has no down projection for the mixed recipes, and no AWQ recipe; a config
    of a type mlx-lm has no model for is refused by the exporter."""
    from quantforge.testing.families import family_model

    neox = family_model("gpt_neox")
    out = tmp_path / "run"
    done = quantforge(
        "quantize", str(neox), "-v", "mlx-lm:mixed_3_6", "-v", "mlx-lm:awq", "-v", "mlx-lm:8bit",
        "--target", "mlx", "--evaluator", "size", "--evaluator", "kl," + ",".join(SHORT),
        "--out", str(out), "--executor", "inline",
    )  # fmt: skip
    text = done.stdout + done.stderr
    assert "has none" in text and "no AWQ recipe for 'gpt_neox'" in text, text
    data = json.loads(quantforge("results", str(out), "--json").stdout)
    measured = {m["variant"] for m in data["measurements"] if m["metric"] == "kl_divergence"}
    assert measured == {"mlx-lm-8bit"}, measured

    from quantforge.errors import UnsupportedModelError
    from quantforge_mlx import MLXExporter

    with pytest.raises(UnsupportedModelError, match="has no model for 'no_such_type'"):
        MLXExporter().check_model(
            {"dtype": "float32"},
            {"model_type": "no_such_type", "architectures": ["NoSuchForCausalLM"]},
        )
    with pytest.raises(UnsupportedModelError, match="causal LMs"):
        MLXExporter().check_model(
            {"dtype": "float32"}, {"model_type": "bert", "architectures": ["BertModel"]}
        )


def test_a_missing_mlx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantforge_mlx import MLXExporter, MLXQuantizer, MLXTarget

    assert_missing_names_extra(
        monkeypatch, {"mlx", "mlx_lm"}, [MLXExporter(), MLXQuantizer(), MLXTarget()], "mlx"
    )


def test_mlx_runs_its_float_products_on_openblas_after_torch_when_the_system_has_it() -> None:
    """Checked in a fresh interpreter: transformers imports mlx.core by itself (when a
    tokenizer converts its output), and the plugin's hook must still come first."""
    import subprocess
    import sys

    from quantforge_mlx.library import _openblas

    code = (
        "import quantforge_mlx, sys\n"
        "from transformers.utils.generic import is_mlx_array\n"
        "is_mlx_array(0)\n"  # transformers' own import of mlx.core
        "from quantforge_mlx.library import load_blas\n"
        "print(load_blas()); print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    label, torch_first = done.stdout.split("\n")[:2]
    if _openblas() is None:
        assert label == "the reference BLAS bundled with mlx-cpu"
    else:
        assert label.startswith("OpenBLAS") and torch_first == "True", done.stdout


@pytest.mark.real_model
def test_the_real_model_converts_quantizes_and_measures_on_mlx(
    real_model: Path, tmp_path: Path
) -> None:
    """SmolLM2-135M (tied embeddings, 576 wide, 9 heads, rope_theta 100,000): the float
    export scores the same tokens as the HF base, and mlx-community's default 4 bits stays
    near it. (MLX's quantized kernels run at about 2 GFLOP/s on this CPU: one window.)"""
    out = tmp_path / "run"
    metrics = run_and_measure(
        real_model, out, ["mlx", "mlx-lm:4bit"], "--target", "cpu", "--target", "mlx",
        evaluators={"size": [], "kl": ["window=128", "stride=128", "max_tokens=128"]},
        timeout=1500,
    )  # fmt: skip
    base, f32, q4 = (
        metrics[("base", "cpu")],
        metrics[("mlx", "mlx")],
        metrics[("mlx-lm-4bit", "mlx")],
    )
    assert f32["kl_divergence"] < 1e-5 and f32["top1_agreement"] > 0.999
    assert 0.01 < q4["kl_divergence"] < 1.0, q4
    assert q4["size_mb"] < base["size_mb"] / 5
    config = json.loads((out / "variants" / "mlx-lm-4bit" / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["quantization"]["group_size"] == 64
    assert config["rope_theta"] == 100000.0


def test_a_gemma3_with_full_attention_every_third_layer_matches_the_hf_base(
    tmp_path: Path,
) -> None:
    """transformers 5 writes Gemma 3's layer pattern as ``layer_types``; mlx-lm's class
    reads ``sliding_window_pattern`` (default 6) and the export writes it. Here the pattern
    is 3, so a default would put full attention on the wrong layers; the window (32) is
    shorter than the scored windows (128), so sliding attention is exercised."""
    from quantforge.testing.families import family_model

    model = reshaped_model(
        family_model("gemma3"), tmp_path / "gemma3-6", num_hidden_layers=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        sliding_window=32,
    )  # fmt: skip
    out = tmp_path / "run"
    metrics = run_and_measure(
        model, out, ["mlx"], "--target", "cpu", "--target", "mlx",
        evaluators={"size": [], "kl": SHORT},
    )  # fmt: skip
    assert metrics[("mlx", "mlx")]["kl_divergence"] < 1e-5
    written = json.loads((out / "variants" / "mlx" / "config.json").read_text())
    assert written["sliding_window_pattern"] == 3
