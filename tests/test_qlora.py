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
    assert _perplexity(with_adapter, ids) < 0.97 * _perplexity(plain, ids)  # measured: -4.5 %


def test_qlora_beside_nf4_in_a_run(tiny_model: Path, tmp_path: Path) -> None:
    """A user's run: the adapter's effect on in-domain held-out text is recorded beside bnb:nf4."""
    from conftest import quantforge
    from transformers import AutoTokenizer

    text = calibration_text(64 * 128 * 8)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer(text)["input_ids"]
    (tmp_path / "train.txt").write_text(tokenizer.decode(ids[: 64 * 128]))
    (tmp_path / "heldout.txt").write_text(tokenizer.decode(ids[64 * 128 : 64 * 128 + 1200]))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        'variants = ["bnb:nf4", {name = "qlora-nf4", method = "qlora", preset = "nf4", options = {steps = 30}}]\n'
        'evaluators = ["size", "perplexity", "kl"]\n'
        f'[model]\nid = "{tiny_model}"\n[data]\neval_text = "heldout.txt"\n'
        '[calibration]\nsource = "train.txt"\nsamples = 64\nseq_len = 128\n[run]\noutput = "out"\n'
    )
    out = quantforge("run", str(recipe), "--executor", "inline", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    import json as _json

    rows = {r["variant"]: r for r in _json.loads(out.stdout)["tables"][0]["rows"]}
    assert rows["qlora-nf4"]["status"] == "ok", rows["qlora-nf4"]["error"]
    assert rows["qlora-nf4"]["metrics"]["perplexity"] < rows["bnb-nf4"]["metrics"]["perplexity"]
