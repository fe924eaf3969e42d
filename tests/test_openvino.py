"""OpenVINO: stateful IR export with OpenVINO's PyTorch frontend, NNCF weight compression
(int8, int4 with group size and ratio, AWQ + scale estimation from calibration rows), and
measurement on the OpenVINO runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_missing_names_extra, fails_with, quantforge, quantize_and_measure
from quantforge import Artifact
from quantforge.model.texts import stdlib_calibration_text as calibration_text

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def openvino_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("openvino")
    calibration = tmp / "calibration.txt"
    calibration.write_text(calibration_text(200_000), encoding="utf-8")
    out = tmp / "run"
    variants = ["openvino", "openvino:f16", "nncf:int8", "nncf:int4", "nncf:int4-awq"]
    variants.append("nncf:int4-asym,group_size=64,ratio=0.8")
    args = ["--target", "openvino", "--calibration", str(calibration)]
    args += ["--calibration-samples", "16", "--calibration-seq-len", "128"]
    return out, quantize_and_measure(tiny_model, out, variants, *args)


def test_the_openvino_export_scores_the_same_tokens_as_the_hf_base(openvino_run) -> None:  # type: ignore[no-untyped-def]
    _, metrics = openvino_run
    f32 = metrics[("openvino", "openvino")]
    assert f32["kl_divergence"] < 1e-6 and f32["top1_agreement"] > 0.999
    assert f32["decode_tps"] > 0 and f32["prefill_tps"] > 0
    f16 = metrics[("openvino-f16", "openvino")]
    assert f16["size_mb"] < f32["size_mb"] * 0.6 and f16["kl_divergence"] < 1e-4


def test_int4_is_smaller_and_diverges_more_than_int8(openvino_run) -> None:  # type: ignore[no-untyped-def]
    _, metrics = openvino_run
    f32, int8, int4 = (metrics[(v, "openvino")] for v in ("openvino", "nncf-int8", "nncf-int4"))
    assert f32["size_mb"] > int8["size_mb"] > int4["size_mb"]
    assert int8["kl_divergence"] < int4["kl_divergence"] < 0.01
    assert int8["top1_agreement"] >= int4["top1_agreement"]
    # ratio 0.8 keeps a fifth of the layers in int8: bigger than all-int4 at the same group size
    mixed = metrics[("nncf-int4-asym-group_size64-ratio0.8", "openvino")]
    assert mixed["size_mb"] > int4["size_mb"]


def test_nncf_records_what_it_stored_and_which_algorithms_ran(openvino_run) -> None:  # type: ignore[no-untyped-def]
    out, _ = openvino_run
    variants = out / "variants"
    int4 = json.loads((variants / "nncf-int4" / "quantforge-precision.json").read_text())
    # 4 layers x 7 projections in int4; NNCF keeps the embeddings and lm_head in int8
    assert int4["element_types"] == {"i4": 28, "u8": 2}
    mixed = json.loads(
        (
            variants / "nncf-int4-asym-group_size64-ratio0.8" / "quantforge-precision.json"
        ).read_text()
    )
    assert mixed["element_types"]["u8"] > 2 and "u4" in mixed["element_types"]
    log = "\n".join(p.read_text() for p in (out / "logs").rglob("*build*.log"))
    assert "with awq, scale_estimation over 16 rows" in log
    fit = quantforge("fit", str(variants / "nncf-int4"), "--target", "x86-edge", "--json")
    assert json.loads(fit.stdout)[0]["runtime"] == "openvino"


def test_the_ir_keeps_its_kv_cache_as_state_and_decodes_like_hf(
    openvino_run, tiny_model: Path
) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import openvino as ov
    import torch
    from quantforge.testing import check_target
    from quantforge_openvino import OpenVINOTarget
    from transformers import AutoModelForCausalLM

    out, _ = openvino_run
    folder = out / "variants" / "openvino"
    model = ov.Core().read_model(folder / "openvino_model.xml")
    assert [p.get_any_name() for p in model.inputs] == ["input_ids", "attention_mask"]
    assert len(model.get_sinks()) == 2 * 4  # a key and a value state per layer
    runtime = check_target(OpenVINOTarget(), Artifact(folder, "openvino"))
    prompt = list(range(40, 90))
    hf = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    # step by step on the runtime's infer request: each step sees only the new token
    request = runtime.request  # type: ignore[attr-defined]
    request.reset_state()
    ids, tokens = prompt, []
    total = 0
    for _ in range(24):
        total += len(ids)
        logits = request.infer(
            {"input_ids": np.asarray([ids]), "attention_mask": np.ones((1, total), dtype=np.int64)}
        )["logits"]
        tokens.append(int(logits[0, -1].argmax()))
        ids = [tokens[-1]]
    assert tokens == ref[0, len(prompt) :].tolist()


def test_data_aware_options_on_int8_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    calibration = tmp_path / "calibration.txt"
    calibration.write_text(calibration_text(20_000), encoding="utf-8")
    out = quantforge(
        "quantize", str(tiny_model), "-v", "nncf:int8,awq=true", "--target", "openvino",
        "--calibration", str(calibration), "--out", str(tmp_path / "run"),
    )  # fmt: skip
    fails_with(out, "int8_asym compresses every layer per channel", "awq")
    assert not (tmp_path / "run").exists()


def test_a_group_size_that_does_not_divide_the_widths_is_refused(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = quantforge(
        "quantize", str(tiny_model), "-v", "nncf:int4,group_size=96", "--target", "openvino",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    fails_with(out, "group_size 96 does not divide")
    assert not (tmp_path / "run").exists()


def test_only_data_aware_options_make_nncf_read_calibration_rows() -> None:
    from quantforge_openvino import NNCFQuantizer

    quantizer = NNCFQuantizer()
    options = quantizer.options.resolve("nncf", {"mode": "int4_sym", "awq": True})
    assert quantizer.calibrates(options)
    assert not quantizer.calibrates(quantizer.options.resolve("nncf", {"mode": "int4_sym"}))


def test_a_missing_openvino_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantforge_openvino import NNCFQuantizer, OpenVINOExporter, OpenVINOTarget

    assert_missing_names_extra(
        monkeypatch,
        {"openvino", "nncf"},
        [OpenVINOExporter(), NNCFQuantizer(), OpenVINOTarget()],
        "openvino",
    )
