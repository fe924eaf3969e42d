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
