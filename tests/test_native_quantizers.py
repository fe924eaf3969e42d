"""quanto, HQQ and torchao on the tiny model: conformance, exact reloads, real quantization."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from quantforge.testing import check_quantizer
from quantforge_hqq import HQQQuantizer
from quantforge_quanto import QuantoQuantizer
from quantforge_torchao import TorchAOQuantizer
from quantforge_transformers import LocalCPU

IDS = list(range(5, 69))

CASES = [
    (QuantoQuantizer(), "int8"),
    (QuantoQuantizer(), "int4"),
    (QuantoQuantizer(), "int2"),
    (HQQQuantizer(), "int4"),
    (HQQQuantizer(), "int3"),
    (TorchAOQuantizer(), "int8"),
    (TorchAOQuantizer(), "int8-dyn"),
    (TorchAOQuantizer(), "int4"),
]


def _logits(quantizer, artifact) -> torch.Tensor:  # type: ignore[no-untyped-def]
    runtime = LocalCPU().load(artifact, {}, quantizer.load_model)
    return runtime.logits(IDS)


@pytest.fixture(scope="module")
def base_logits(tiny_model: Path) -> torch.Tensor:
    from quantforge.interfaces import Artifact

    return LocalCPU().load(Artifact(tiny_model, "hf"), {}, lambda a: None).logits(IDS)


@pytest.mark.parametrize(("quantizer", "preset"), CASES, ids=[f"{q.name}-{p}" for q, p in CASES])
def test_quantizes_and_reloads_exactly(
    quantizer, preset: str, tiny_model: Path, tmp_path: Path, base_logits: torch.Tensor
) -> None:  # type: ignore[no-untyped-def]
    artifact = check_quantizer(quantizer, tiny_model, tmp_path, preset=preset, target=LocalCPU())
    first = _logits(quantizer, artifact)
    second = _logits(quantizer, artifact)
    assert torch.equal(first, second), "two reloads must give identical logits"
    assert not torch.equal(first, base_logits), "the weights must really be quantized"
    agreement = (first.argmax(-1) == base_logits.argmax(-1)).float().mean().item()
    assert agreement > (0.5 if preset in ("int2", "int3") else 0.8), agreement


def test_every_calibration_free_method_is_measured_in_one_run(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Through the runner, as a user runs a recipe (inline: one import for all jobs; worker
    processes are tested in test_runner.py): quality is recorded for each."""
    import json

    from conftest import quantforge

    variants = [
        "quanto:int4",
        "quanto:int2",
        "hqq:int4",
        "hqq:int2",
        "torchao:int8",
        "torchao:int4",
        "bnb:fp4",
        "rtn:int8",
    ]
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f"variants = {json.dumps(variants)}\n"
        'evaluators = ["size", "perplexity", "kl"]\n'
        f'[model]\nid = "{tiny_model}"\n[run]\noutput = "out"\n'
    )
    out = quantforge("run", str(recipe), "--executor", "inline", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.stdout)["tables"][0]["rows"]}
    for name in [
        "quanto-int4",
        "quanto-int2",
        "hqq-int4",
        "hqq-int2",
        "torchao-int8",
        "torchao-int4",
        "bnb-fp4",
        "rtn-int8",
    ]:
        metrics = rows[name]["metrics"]
        assert rows[name]["status"] == "ok", rows[name]["error"]
        assert {"perplexity", "kl_divergence", "top1_agreement"} <= set(metrics), name
        assert metrics["kl_divergence"] > 0 or name in ("torchao-int8", "rtn-int8")
    m = {name: row["metrics"] for name, row in rows.items()}
    # Fewer bits lose more: 2-bit variants sit clearly further from the base than 4-bit ones.
    assert m["quanto-int2"]["kl_divergence"] > 5 * m["quanto-int4"]["kl_divergence"]
    assert m["hqq-int2"]["kl_divergence"] > 5 * m["hqq-int4"]["kl_divergence"]
    assert m["rtn-int8"]["kl_divergence"] < m["bnb-fp4"]["kl_divergence"]
