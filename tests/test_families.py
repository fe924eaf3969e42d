"""Every method on every architecture family: each cell works, or preflight refuses it.

The tiny model of each family (``quantforge.testing.families``) goes through the variants
of :data:`MATRIX`, measured on every runtime that runs their format, in this process (the
inline executor: one set of imports for all families). A cell *works* when the variant was
built, reloaded and measured with a finite KL divergence (small at 8 bits); it is
*refused* when preflight refused it with one line, before any compute, while the other
variants of the run went on.

``QUANTFORGE_FAMILIES=all`` (or ``=gemma2,phi3``) runs the whole matrix on those families
(all: about half an hour) and writes their rows into ``support-matrix.json`` in the test
cache; ``docs/support-matrix.json`` is that file and ``docs/support-matrix.md`` its
rendering (``scripts/support-matrix`` copies and renders it). CI runs the cells of
:data:`CI_CELLS`, and each must still be what the committed matrix says.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, quantforge
from quantforge.model import texts
from quantforge.model.calibration import CalibrationSpec
from quantforge.running.planner import parse_variant
from quantforge.running.recipe import RunConfig
from quantforge.running.runner import default_cache_dir
from quantforge.running.runner import run as run_config
from quantforge.store.results import ResultsStore
from quantforge.testing.families import FAMILIES, family_model
from quantforge.testing.support_matrix import FAILED, REFUSED, WORKS, render

pytestmark = pytest.mark.families

# One variant per method and precision people ship; the 8-bit ones must stay close to the base.
MATRIX = [
    "rtn:int8",
    "rtn:int4",
    "bnb:int8",
    "bnb:nf4",
    "gptq:int8",
    "gptq:int4",
    "awq:int4",
    "quanto:int8",
    "hqq:int8",
    "torchao:int8",
    "qlora:nf4,steps=4",
    "llamacpp:q8_0",
    "llamacpp:q4_k_m",
    "ort:int8",
    "ort:int4",
    "nncf:int8",
    "mlx-lm:8bit",
    "mlx-lm:4bit",
    "xnnpack:8da8w",
    "xnnpack:8da4w",
    "llm-compressor:w8a8",
    "llm-compressor:w4a16",
]
EIGHT_BIT = {"rtn:int8", "bnb:int8", "gptq:int8", "quanto:int8", "hqq:int8", "torchao:int8"}
EIGHT_BIT |= {"llamacpp:q8_0", "ort:int8", "nncf:int8", "mlx-lm:8bit", "xnnpack:8da8w"}
EIGHT_BIT |= {"llm-compressor:w8a8"}
KL_LIMIT_8BIT = 0.05
TARGETS = ["cpu", "llama.cpp", "onnxruntime", "openvino", "mlx", "executorch"]
# QUANTFORGE_FAMILIES=all (or a comma-separated list of families): the whole matrix on them
CHOSEN = os.environ.get("QUANTFORGE_FAMILIES", "")
FULL_ON = set(FAMILIES) if CHOSEN == "all" else {f for f in CHOSEN.split(",") if f}
# What CI runs (the whole matrix takes about half an hour on two cores): RTN on every
# family (a load, a quantize, a reload and a measurement each), bitsandbytes on one family
# per block layout and on the fused, soft-capped and MoE ones; HQQ and
# torchao on one family per block layout (Llama, GPT-NeoX, whose blocks are elsewhere, and
# the MoE, which both refuse); llama.cpp on one family per converter path and tokenizer
# kind; the cells that broke before this matrix existed (sliding windows and
# soft-capping, fused projections, an exporter that lacks a family, mixture-of-experts);
# and MLX where transformers 5's configs differ from what mlx-lm reads (GPT-NeoX's rotary
# keys, Qwen3-MoE's expert count; Gemma 3's layer pattern is tested in test_mlx.py);
# llm-compressor's refusal of the MoE (its tiny Llama runs in test_llmcompressor.py).
EVERY_FAMILY = ["rtn:int8"]
SOME_FAMILIES = {
    "llama": ["bnb:nf4", "hqq:int8", "torchao:int8", "llamacpp:q8_0"],
    "qwen2": ["llamacpp:q8_0"],
    "gemma2": ["bnb:nf4", "llamacpp:q8_0", "awq:int4", "ort:int8", "nncf:int8"],
    "phi3": ["bnb:nf4", "llamacpp:q8_0", "gptq:int4", "awq:int4", "ort:int8"],
    "gpt_neox": [
        "bnb:nf4",
        "hqq:int8",
        "torchao:int8",
        "llamacpp:q8_0",
        "ort:int8",
        "nncf:int8",
        "mlx-lm:8bit",
    ],
    "qwen3_moe": [
        "bnb:nf4",
        "hqq:int8",
        "torchao:int8",
        "llamacpp:q8_0",
        "gptq:int4",
        "nncf:int8",
        "mlx-lm:8bit",
        "llm-compressor:w8a8",
    ],
}
CI_CELLS = {
    name: MATRIX if name in FULL_ON else EVERY_FAMILY + SOME_FAMILIES.get(name, [])
    for name in FAMILIES
}
COMMITTED = ROOT / "docs" / "support-matrix.json"


def _run_family(family: str, variants: list[str], out: Path) -> dict[str, Any]:
    """Run ``variants`` on one family's tiny model; return what each cell did."""
    model = family_model(family)
    calibration = out.parent / "calibration.txt"
    if not calibration.exists():
        calibration.write_text(texts.prose_calibration_text(60_000), encoding="utf-8")
    specs = {v: parse_variant(v) for v in variants}
    config = RunConfig(
        model=str(model),
        variants=[parse_variant("base"), *specs.values()],
        output=out,
        targets={t: {} for t in TARGETS},
        evaluators={"size": {}, "kl": {"window": 128, "stride": 128, "max_tokens": 256}},
        calibration=CalibrationSpec(str(calibration), samples=8, seq_len=128),
        executor="inline",
    )
    summary = run_config(config)
    store = ResultsStore(out)
    try:
        rows = {v["name"]: v for v in store.variants()}
        kls: dict[str, dict[str, float]] = {}
        for m in store.measurements():
            if m.metric == "kl_divergence":
                kls.setdefault(m.variant, {})[m.target] = m.value
    finally:
        store.close()
    cells: dict[str, Any] = {}
    for variant, spec in specs.items():
        row = rows.get(spec.name)
        if row is None:
            cells[variant] = {"status": FAILED, "reason": "not recorded"}
        elif row["status"] == "refused":
            cells[variant] = {"status": REFUSED, "reason": row["error"]}
        elif row["status"] == "ok" and kls.get(spec.name):
            measured = kls[spec.name]
            cells[variant] = {"status": WORKS, "runtimes": sorted(measured), "kl": measured}
        else:
            cells[variant] = {"status": FAILED, "reason": row.get("error") or "not measured"}
    return {"summary": summary, "cells": cells}


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("families")
    runs = {name: _run_family(name, CI_CELLS[name], root / name) for name in FAMILIES}
    results = {
        "variants": MATRIX,
        "kl_limit_8bit": KL_LIMIT_8BIT,
        "families": {
            name: {
                "title": f.title,
                "model_type": f.model_type,
                "tokenizer": f.tokenizer,
                "note": f.note,
            }
            for name, f in FAMILIES.items()
        },
        "cells": {
            name: {
                v: {k: c[k] for k in ("status", "reason", "runtimes") if k in c}
                for v, c in run["cells"].items()
            }
            for name, run in runs.items()
        },
    }
    if FULL_ON:  # whole rows, merged into what earlier whole-matrix runs found
        path = default_cache_dir() / "support-matrix.json"
        merged = json.loads(path.read_text(encoding="utf-8")) if path.exists() else results
        merged.update({k: v for k, v in results.items() if k != "cells"})
        merged["cells"] = {
            name: results["cells"][name] if name in FULL_ON else merged["cells"].get(name, {})
            for name in FAMILIES
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2), encoding="utf-8")
    return {"results": results, "runs": runs}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_cell_works_or_is_refused_in_preflight(family: str, matrix: dict[str, Any]) -> None:
    run = matrix["runs"][family]
    cells = run["cells"]
    failed = {v: c["reason"] for v, c in cells.items() if c["status"] == FAILED}
    assert not failed, f"{family}: {failed}"
    for variant, cell in cells.items():
        if cell["status"] == REFUSED:
            assert cell["reason"] and "\n" not in cell["reason"], (variant, cell)
            continue
        for target, kl in cell["kl"].items():
            assert math.isfinite(kl) and kl >= -1e-6, (variant, target, kl)
            if variant in EIGHT_BIT:
                assert kl < KL_LIMIT_8BIT, (family, variant, target, kl)
    # a refused variant refuses nothing else: the summary names it, the others were measured
    summary = run["summary"]
    refused = {parse_variant(v).name for v, c in cells.items() if c["status"] == REFUSED}
    assert set(summary.refused) == refused
    assert summary.status == ("partial" if refused else "ok")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_cell_is_what_the_committed_matrix_says(family: str, matrix: dict[str, Any]) -> None:
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))["cells"][family]
    found = matrix["results"]["cells"][family]
    for variant, cell in found.items():
        assert committed[variant] == cell, (
            f"{family} {variant}: the matrix in docs/ says {committed[variant]}, this run found "
            f"{cell}; run the whole matrix (QUANTFORGE_FAMILIES=all) and scripts/support-matrix"
        )


def test_the_support_matrix_page_renders_the_committed_results() -> None:
    page = (ROOT / "docs" / "support-matrix.md").read_text(encoding="utf-8")
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed["variants"] == MATRIX and set(committed["cells"]) == set(FAMILIES)
    assert page == render(committed), "docs/support-matrix.md is stale: run scripts/support-matrix"


def test_a_refused_variant_leaves_the_rest_running_and_exits_3(tmp_path: Path) -> None:
    """Through the CLI: GPT-NeoX has no ONNX builder, so ``ort:int8`` is refused in preflight;
    ``rtn:int8`` is built and measured, and the exit status says something was refused."""
    out = tmp_path / "run"
    done = quantforge(
        "quantize",
        str(family_model("gpt_neox")),
        "--out",
        str(out),
        "--executor",
        "inline",
        "-v",
        "rtn:int8",
        "-v",
        "ort:int8",
        "--evaluator",
        "kl,window=128,stride=128,max_tokens=256",
        timeout=900,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    said = done.stdout + done.stderr
    assert "Refused ort-int8" in said and "GPTNeoXForCausalLM" in said
    assert "Traceback" not in done.stderr
    store = ResultsStore(out)
    try:
        status = {v["name"]: v["status"] for v in store.variants()}
        measured = {m.variant for m in store.measurements()}
    finally:
        store.close()
    assert status == {"base": "ok", "rtn-int8": "ok", "ort-int8": "refused"}
    assert "rtn-int8" in measured and "ort-int8" not in measured


@pytest.mark.parametrize("family", ["gemma2", "gpt_neox", "qwen3_moe"])
def test_methods_model_names_what_preflight_refuses(family: str, matrix: dict[str, Any]) -> None:
    """``quantforge methods --model`` runs the same checks, before any compute."""
    done = quantforge("methods", "--model", str(family_model(family)), "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["variant"]: r for r in json.loads(done.stdout)}
    for variant, cell in matrix["runs"][family]["cells"].items():
        name = variant.split(",")[0]
        expected = "refused" if cell["status"] == REFUSED else "supported"
        assert rows[name]["status"] == expected, (variant, rows[name], cell)


def test_methods_model_refuses_a_folder_without_config(tmp_path: Path) -> None:
    done = quantforge("methods", "--model", str(tmp_path))
    assert done.returncode == 2
    assert "no config.json" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_has_a_tokenizer_of_its_kind(family: str) -> None:
    """Byte-level BPE families carry SmolLM2's tokenizer; SentencePiece families a
    ``tokenizer.model`` that SentencePiece itself loads, with byte fallback."""
    from quantforge.testing.families import BPE
    from transformers import AutoConfig, AutoTokenizer

    folder = family_model(family)
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == FAMILIES[family].model_type
    assert config.num_hidden_layers == 2 and config.hidden_size == 256
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert config.vocab_size >= len(tokenizer)
    text = "Quantize a model, then measure it: 42 ünïcode  words."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["model"]["type"] == "BPE"
    if FAMILIES[family].tokenizer == BPE:
        assert not (folder / "tokenizer.model").exists()
        assert "ByteLevel" in json.dumps(spec["pre_tokenizer"])
    else:
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        assert processor.vocab_size() == len(spec["model"]["vocab"])
        assert processor.decode(processor.encode(text)) == text
        assert spec["model"]["byte_fallback"] is True


def test_linear_only_methods_refuse_fused_experts_and_say_what_does() -> None:
    from quantforge.interfaces import expert_count
    from quantforge.plugins.manager import load_plugins
    from quantforge.running.planner import plan_variant
    from quantforge.running.support import refusal

    plugins = load_plugins()
    moe = {"model_type": "qwen3_moe", "num_experts": 8, "hidden_size": 256}
    assert expert_count(moe) == 8 and expert_count({"model_type": "llama"}) == 0
    for variant in ("rtn:int8", "bnb:nf4", "hqq:int8", "quanto:int8", "torchao:int8"):
        plan = plan_variant(plugins, parse_variant(variant), "key")
        why = refusal(plugins, plan, moe)
        assert why is not None and "8 experts" in why and "llamacpp or gptq" in why, variant
        assert refusal(plugins, plan, {**moe, "num_experts": 0}) is None


def test_the_inline_executor_reports_a_failing_job_and_goes_on(tmp_path: Path) -> None:
    from quantforge.running.executors import make_executor

    executor = make_executor("inline", tmp_path)
    bad = executor.run({"kind": "nonsense"}, "bad", timeout=10)
    assert bad.returncode and bad.failure and "nonsense" in bad.failure
    assert "unknown job kind" in bad.log_path.read_text(encoding="utf-8")
    assert executor.name == "inline"
