"""ExecuTorch: HF -> ``model.pte`` (torch.export with a static KV cache, lowered to XNNPACK),
torchao's 8da4w and 8da8w before the export, and measurement with ExecuTorch's own runtime.

Lowering runs ExecuTorch's Python passes over every node (about 20 s per decoder layer on
two cores), so these runs use the family matrix's Llama (SmolLM2's tokenizer and tied
49,152-token embedding) cut to one layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Metrics, assert_missing_names_extra, fails_with, quantforge, reshaped_model
from conftest import quantize_and_measure as run_and_measure

pytestmark = pytest.mark.slow

SHORT = ["window=128", "stride=128", "max_tokens=256"]


@pytest.fixture(scope="module")
def llama2() -> Path:
    from quantforge.testing.families import family_model

    return family_model("llama")


@pytest.fixture(scope="module")
def llama1(llama2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The family Llama cut to one decoder layer (lowering time grows with the layers)."""
    out = tmp_path_factory.mktemp("llama1") / "model"
    return reshaped_model(llama2, out, num_hidden_layers=1)


@pytest.fixture(scope="module")
def et_run(llama1: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Metrics]:
    out = tmp_path_factory.mktemp("executorch") / "run"
    variants = ["executorch,max_seq_len=512", "xnnpack:8da4w", "xnnpack:8da8w"]
    evaluators = {"size": [], "speed": ["prompt_tokens=32", "new_tokens=8"], "kl": SHORT}
    metrics = run_and_measure(
        llama1, out, variants, "--target", "cpu", "--target", "executorch", evaluators=evaluators
    )
    return out, metrics


def test_the_float_program_scores_the_same_tokens_as_the_hf_base(et_run) -> None:  # type: ignore[no-untyped-def]
    out, metrics = et_run
    (name,) = [v for (v, t) in metrics if v.startswith("executorch") and t == "executorch"]
    f32 = metrics[(name, "executorch")]
    assert f32["kl_divergence"] < 1e-5 and f32["top1_agreement"] > 0.999
    assert f32["decode_tps"] > 0 and f32["prefill_tps"] > 0
    meta = json.loads((out / "variants" / name / "executorch.json").read_text())
    assert meta == {"max_seq_len": 512, "scheme": "float32", "backend": "xnnpack"}


def test_int4_weights_are_smaller_and_diverge_more_than_int8(et_run) -> None:  # type: ignore[no-untyped-def]
    out, metrics = et_run
    (f32,) = [m for (v, t), m in metrics.items() if v.startswith("executorch") and t != "cpu"]
    q4, q8 = metrics[("xnnpack-8da4w", "executorch")], metrics[("xnnpack-8da8w", "executorch")]
    # this model ties its LM head to its 49,152 x 256 embedding: the float program holds it
    # twice (the embedding's table and XNNPACK's packed head), the quantized ones hold the
    # float table and an int4 / int8 head
    assert q4["size_mb"] < q8["size_mb"] < f32["size_mb"]
    assert f32["size_mb"] > 1.7 * metrics[("base", "cpu")]["size_mb"]
    assert 0 < q8["kl_divergence"] < q4["kl_divergence"] < 1, (q8, q4)
    precision = json.loads(
        (out / "variants" / "xnnpack-8da4w" / "quantforge-precision.json").read_text()
    )
    assert precision["group_size"] == 32 and set(precision["modules"].values()) == {4}
    assert precision["activations"].startswith("int8")
    assert (out / "variants" / "xnnpack-8da4w" / "tokenizer.json").exists()


def test_the_card_says_how_executorch_runs_the_program(et_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = et_run
    cards = tmp_path / "cards"
    done = quantforge(
        "cards", str(out), "--out", str(cards), "--variant", "xnnpack-8da4w",
        "--namespace", "someone", "--no-plot",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    card = (cards / "xnnpack-8da4w" / "README.md").read_text(encoding="utf-8")
    assert "library_name: executorch" in card.split("---")[1]
    assert (
        "from executorch.runtime import Runtime" in card and 'snapshot_download("someone/' in card
    )


def test_options_and_models_it_cannot_take_are_refused_before_any_compute(
    llama2: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    for spec, fragments in [
        ("xnnpack:8da8w,group_size=64", ("8da8w has one scale per output channel",)),
        ("xnnpack:8da4w,group_size=48", ("group_size",)),
    ]:
        fails_with(quantforge("quantize", str(llama2), "-v", spec, "--out", str(out)), *fragments)
    from quantforge.errors import UnsupportedModelError
    from quantforge_executorch import ExecuTorchExporter

    with pytest.raises(UnsupportedModelError, match="causal LMs"):
        ExecuTorchExporter().check_model({"max_seq_len": 0}, {"architectures": ["BertModel"]})
    # torchao replaces nn.Linear weights only: mixture-of-experts models are refused
    from quantforge.testing.families import family_model

    moe = family_model("qwen3_moe")
    fails_with(
        quantforge("quantize", str(moe), "-v", "xnnpack:8da4w", "--out", str(out)),
        "xnnpack",
    )


def test_core_ml_and_tensorrt_llm_name_the_plugin_that_would_build_them(
    llama2: Path, tmp_path: Path
) -> None:
    for name, library in (("coreml", "coremltools"), ("trtllm", "tensorrt_llm")):
        done = quantforge("quantize", str(llama2), "-v", name, "--out", str(tmp_path / name))
        fails_with(done, library, "not bundled")


def test_a_missing_executorch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantforge_executorch import ExecuTorchExporter, ExecuTorchTarget, XNNPACKQuantizer

    assert_missing_names_extra(
        monkeypatch,
        {"executorch"},
        [ExecuTorchExporter(), XNNPACKQuantizer(), ExecuTorchTarget()],
        "executorch",
    )
