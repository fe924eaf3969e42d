"""ONNX: export with a KV cache (onnxruntime-genai's builder), ONNX Runtime quantization, and
measurement on onnxruntime-genai."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_missing_names_extra, fails_with, quantforge, quantize_and_measure
from quantforge import Artifact

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("onnx") / "run"
    variants = ["onnx", "ort:int8", "ort:int4", "ort:int4,embeddings=true", "ort:int2"]
    variants.append("ort:int8-dynamic")
    return out, quantize_and_measure(tiny_model, out, variants, "--target", "onnxruntime")


def test_the_onnx_export_scores_the_same_tokens_as_the_hf_base(onnx_run) -> None:  # type: ignore[no-untyped-def]
    _, metrics = onnx_run
    # no --target cpu: the base's reference logits come from the local cpu target anyway
    fp32 = metrics[("onnx", "onnxruntime")]
    assert fp32["kl_divergence"] < 1e-6 and fp32["top1_agreement"] > 0.999
    assert fp32["decode_tps"] > 0 and fp32["prefill_tps"] > 0


def test_fewer_bits_mean_smaller_files_and_more_divergence(onnx_run) -> None:  # type: ignore[no-untyped-def]
    _, metrics = onnx_run
    order = ["onnx", "ort-int8", "ort-int4", "ort-int4-embeddingstrue"]
    sizes = [metrics[(v, "onnxruntime")]["size_mb"] for v in order]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 4
    kls = [
        metrics[(v, "onnxruntime")]["kl_divergence"] for v in ("ort-int8", "ort-int4", "ort-int2")
    ]
    assert kls == sorted(kls) and kls[0] < 1e-4
    tops = [
        metrics[(v, "onnxruntime")]["top1_agreement"] for v in ("ort-int8", "ort-int4", "ort-int2")
    ]
    assert tops == sorted(tops, reverse=True)
    dynamic = metrics[("ort-int8-dynamic", "onnxruntime")]
    assert dynamic["kl_divergence"] < metrics[("ort-int2", "onnxruntime")]["kl_divergence"]


def test_quantized_graphs_hold_the_ops_the_options_asked_for(onnx_run) -> None:  # type: ignore[no-untyped-def]
    out, _ = onnx_run
    variants = out / "variants"
    int4 = json.loads((variants / "ort-int4" / "quantforge-precision.json").read_text())
    assert set(int4["ops"]) == {"MatMulNBits"}
    # 4 layers x (qkv, o, gate, up, down) + lm_head
    assert int4["ops"]["MatMulNBits"] == 21 and set(int4["modules"].values()) == {4.0}
    emb = json.loads(
        (variants / "ort-int4-embeddingstrue" / "quantforge-precision.json").read_text()
    )
    assert emb["ops"].get("GatherBlockQuantized") == 1
    assert set(emb["modules"].values()) == {4.0}
    dyn = json.loads((variants / "ort-int8-dynamic" / "quantforge-precision.json").read_text())
    assert "MatMulNBits" not in dyn["ops"] and dyn["ops"]
    for v in ("onnx", "ort-int4"):
        names = {p.name for p in (variants / v).iterdir()}
        assert {"model.onnx", "model.onnx.data", "genai_config.json", "config.json"} <= names
    fit = quantforge("fit", str(variants / "ort-int4"), "--target", "rpi5", "--json")
    assert json.loads(fit.stdout)[0]["runtime"] == "onnxruntime"


def test_generation_runs_with_the_kv_cache_and_matches_hf_greedy(
    onnx_run, tiny_model: Path
) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime_genai as og
    import torch
    from quantforge.testing import check_target
    from quantforge_onnx import OnnxRuntimeTarget
    from transformers import AutoModelForCausalLM

    out, _ = onnx_run
    folder = out / "variants" / "onnx"
    check_target(OnnxRuntimeTarget(), Artifact(folder, "onnx"))
    prompt = list(range(40, 90))
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 24, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    ours = [int(t) for t in generator.get_sequence(0)][len(prompt) :]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    expected = ref[0, len(prompt) :].tolist()
    assert ours[: len(expected)] == expected


def test_embedding_quantization_at_eight_bits_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    out = quantforge(
        "quantize", str(tiny_model), "-v", "ort:int8,embeddings=true", "--target", "onnxruntime",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    fails_with(out, "embeddings=true", "4 bits only", "bits=8")
    assert not (tmp_path / "run").exists()


def test_an_architecture_the_builder_does_not_know_fails_before_compute(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "odd"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["QuantforgeOddForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    out = quantforge(
        "quantize", str(model), "-v", "ort:int4", "--target", "onnxruntime",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    fails_with(out, "model builder", "does not support 'QuantforgeOddForCausalLM'")
    assert not (tmp_path / "run").exists()


def test_a_missing_onnxruntime_genai_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantforge_onnx import OnnxExporter, OnnxRuntimeTarget

    assert_missing_names_extra(
        monkeypatch, {"onnxruntime_genai"}, [OnnxExporter(), OnnxRuntimeTarget()], "onnx"
    )
