"""GGUF through llama.cpp: export with its converter, k-/i-quants, and measurement on llama.cpp."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_missing_names_extra, fails_with, quantforge, quantize_and_measure
from quantforge.model.texts import stdlib_calibration_text as calibration_text
from quantforge.testing import TinyModelSpec, build_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calibration.txt"
    path.write_text(calibration_text(200_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gguf_run(tiny_model: Path, calibration_file: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("gguf") / "run"
    variants = ["gguf", "llamacpp:q8_0", "llamacpp:q4_k_m", "llamacpp:q2_k"]
    variants.append("llamacpp:iq2_xs,imatrix=true")
    args = ["--target", "llama.cpp", "--target", "cpu", "--calibration", str(calibration_file)]
    args += ["--calibration-samples", "16", "--calibration-seq-len", "128"]
    return out, quantize_and_measure(tiny_model, out, variants, *args)


def test_f16_gguf_scores_the_same_tokens_as_the_hf_base(gguf_run) -> None:  # type: ignore[no-untyped-def]
    _, metrics = gguf_run
    base, f16 = metrics[("base", "cpu")], metrics[("gguf", "llama.cpp")]
    assert f16["perplexity"] == pytest.approx(base["perplexity"], rel=2e-3)
    assert f16["kl_divergence"] < 1e-4 and f16["top1_agreement"] > 0.99
    assert f16["decode_tps"] > 0 and f16["prefill_tps"] > 0


def test_fewer_bits_mean_smaller_files_and_more_divergence(gguf_run) -> None:  # type: ignore[no-untyped-def]
    _, metrics = gguf_run
    order = ["gguf", "llamacpp-q8_0", "llamacpp-q4_k_m", "llamacpp-q2_k"]
    rows = [metrics[(v, "llama.cpp")] for v in order]
    sizes = [r["size_mb"] for r in rows]
    assert sizes == sorted(sizes, reverse=True)
    kls = [r["kl_divergence"] for r in rows[1:]]
    assert kls == sorted(kls) and kls[0] < 1e-4
    tops = [r["top1_agreement"] for r in rows[1:]]
    assert tops == sorted(tops, reverse=True)


def test_iq2_xs_with_an_importance_matrix_builds_and_records_it(gguf_run) -> None:  # type: ignore[no-untyped-def]
    out, metrics = gguf_run
    iq2 = metrics[("llamacpp-iq2_xs-imatrixtrue", "llama.cpp")]
    assert iq2["size_mb"] < metrics[("llamacpp-q2_k", "llama.cpp")]["size_mb"] + 0.5
    assert iq2["kl_divergence"] > metrics[("llamacpp-q8_0", "llama.cpp")]["kl_divergence"]
    folder = out / "variants" / "llamacpp-iq2_xs-imatrixtrue"
    precision = json.loads((folder / "quantforge-precision.json").read_text())
    assert precision["imatrix"] is True and precision["type"] == "IQ2_XS"
    assert "IQ2_XS" in {str(v) for v in precision["modules"].values()} or any(
        v == 2.3125 for v in precision["modules"].values()
    )
    assert (folder / "config.json").exists()  # kept for fit checks
    fit = quantforge("fit", str(folder), "--target", "rpi5", "--json")
    assert json.loads(fit.stdout)[0]["runtime"] == "llama.cpp"


def test_a_quant_type_that_needs_an_imatrix_is_refused_without_one(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = quantforge(
        "quantize", str(tiny_model), "-v", "llamacpp:iq2_xs", "--target", "llama.cpp",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    fails_with(out, "IQ2_XS needs an importance matrix", "imatrix=true")
    assert not (tmp_path / "run").exists()


def test_an_architecture_llama_cpp_cannot_convert_fails_before_compute(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "odd"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["QuantforgeOddForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    out = quantforge(
        "quantize", str(model), "-v", "llamacpp:q4_k_m", "--target", "llama.cpp",
        "--out", str(tmp_path / "run"),
    )  # fmt: skip
    fails_with(
        out, "llama.cpp's converter", "Architecture 'QuantforgeOddForCausalLM' not supported"
    )
    assert not (tmp_path / "run").exists()


def test_widths_a_k_quant_cannot_take_fall_back_and_are_reported(tmp_path: Path) -> None:
    # 320 columns in ffn_down: not a multiple of the 256-wide k-quant super-block
    odd = build_tiny_model(TinyModelSpec(intermediate_size=320, train_steps=2), tmp_path / "models")
    from quantforge_llamacpp.converter import converter_dir

    out = tmp_path / "run"
    # a cache of its own, so that the step runs (and logs) every time; the converter is shared
    env = {"QUANTFORGE_CACHE_DIR": str(tmp_path / "cache"),
           "QUANTFORGE_LLAMA_CPP_DIR": str(converter_dir())}  # fmt: skip
    done = quantforge(
        "quantize", str(odd), "-v", "llamacpp:q4_k_m", "--target", "llama.cpp",
        "--evaluator", "size", "--out", str(out), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    precision = json.loads(
        (out / "variants" / "llamacpp-q4_k_m" / "quantforge-precision.json").read_text()
    )
    fallbacks = precision["fallbacks"]
    assert fallbacks and all(f["columns"] == 320 and f["block"] == 256 for f in fallbacks)
    assert {f["tensor"] for f in fallbacks} >= {"blk.0.ffn_down.weight"}
    assert all(f["used"] != f["wanted"] for f in fallbacks)
    log = "\n".join(p.read_text() for p in (out / "logs").rglob("*.log"))
    assert "blk.0.ffn_down.weight has 320 columns, not a multiple of 256" in log
    # the tensor types read from llama.cpp's log are those of the file read back
    from quantforge_llamacpp.quantize import gguf_facts, tensor_types_said

    written = out / "variants" / "llamacpp-q4_k_m" / "model.gguf"
    in_file = gguf_facts(written, converter_dir() / "gguf-py")["tensor_types"]
    assert tensor_types_said(log.splitlines()) == in_file
    assert in_file["blk.0.ffn_down.weight"] == fallbacks[0]["used"].upper()
    assert set(precision["modules"]) == {
        n for n, t in in_file.items() if t != "F32" and not n.endswith("norm.weight")
    }


def test_a_missing_llama_cpp_build_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantforge_llamacpp import GGUFExporter, LlamaCppTarget

    assert_missing_names_extra(
        monkeypatch, {"llama_cpp"}, [GGUFExporter(), LlamaCppTarget()], "gguf"
    )


def test_the_vocabulary_check_is_kept_by_the_content_of_config_and_tokenizer(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantforge_llamacpp import converter

    monkeypatch.setenv("QUANTFORGE_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    checked: list[Path] = []

    def check(folder: Path) -> str | None:
        checked.append(folder)
        return "llama.cpp cannot load the converted vocabulary: x" if len(checked) > 1 else None

    monkeypatch.setattr(converter, "_check_vocab", check)
    assert converter.vocab_problem(model) is None
    assert converter.vocab_problem(model) is None  # kept: the converter does not run again
    shutil.copytree(model, tmp_path / "copy")  # the same bytes elsewhere: kept too
    assert converter.vocab_problem(tmp_path / "copy") is None and len(checked) == 1
    (model / "tokenizer_config.json").write_text(
        (model / "tokenizer_config.json").read_text() + "\n"
    )
    assert converter.vocab_problem(model) == "llama.cpp cannot load the converted vocabulary: x"
    assert len(checked) == 2 and len(list((tmp_path / "cache").rglob("vocab-checks/*.json"))) == 2


def test_an_export_and_its_only_quantization_run_in_one_worker(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "llamacpp:q4_k_m", "--target", "llama.cpp",
        "--evaluator", "size", "--out", str(out),
        env={"QUANTFORGE_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 steps run, 0 cached" in done.stdout + done.stderr
    (timeline,) = out.glob("logs/*/jobs.jsonl")
    labels = [json.loads(line)["label"] for line in timeline.read_text().splitlines()]
    builds = [label for label in labels if label.startswith("build ")]
    assert builds == ["build llamacpp-q4_k_m: gguf, then llamacpp-q4_k_m: llamacpp"]
    assert not any("tokenizing" in label for label in labels)  # size reads no tokens
    data = json.loads(quantforge("results", str(out), "--json").stdout)
    sizes = [m for m in data["measurements"] if m["metric"] == "size_mb"]
    assert len(sizes) == 1 and 0 < sizes[0]["value"] < 10
    assert sizes[0]["provenance"]["dataset_fingerprint"] == ""
