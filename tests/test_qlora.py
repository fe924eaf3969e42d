"""QLoRA recovery on the tiny model: a real adapter, trained on local text, that lowers perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from quantforge.testing import calibration_text, check_quantizer, tiny_calibration
from quantforge_qlora import ADAPTER_DIR, REPORT_FILE, QLoRARecovery
from quantforge_transformers import LocalCPU


def _perplexity(model, ids: list[int]) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        x = torch.tensor([ids])
        return math.exp(model(input_ids=x, labels=x).loss.item())


def test_adapter_trains_reloads_exactly_and_recovers_quality(
    tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantizer = QLoRARecovery()
    calibration = tiny_calibration(tiny_model, samples=64, seq_len=128)
    artifact = check_quantizer(
        quantizer,
        tiny_model,
        tmp_path,
        preset="nf4",
        options={"steps": 30},
        target=LocalCPU(),
        calibration=calibration,
    )
    report = json.loads((artifact.path / REPORT_FILE).read_text())
    assert report["steps"] == 30 and report["trainable_parameters"] > 0
    assert math.isfinite(report["first_loss"]) and math.isfinite(report["last_loss"])
    assert (artifact.path / ADAPTER_DIR / "adapter_config.json").is_file()

    with_adapter = quantizer.load_model(artifact)
    again = quantizer.load_model(artifact)
    # Recovery is measured on held-out text of the fine-tuning domain: the same source,
    # right after the rows the adapter trained on.
    stream = AutoTokenizer.from_pretrained(tiny_model)(calibration_text(64 * 128 * 8))["input_ids"]
    ids = stream[64 * 128 : 64 * 128 + 512]
    with torch.no_grad():
        x = torch.tensor([ids])
        assert torch.equal(with_adapter(input_ids=x).logits, again(input_ids=x).logits)
    # The same 4-bit weights without the adapter: the adapter is what lowers perplexity.
    plain = AutoModelForCausalLM.from_pretrained(artifact.path, device_map="cpu")
    assert _perplexity(with_adapter, ids) < 0.9 * _perplexity(plain, ids)
