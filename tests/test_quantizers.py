"""The first-party quantizers on the tiny model, with the real libraries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import fails_with, quantforge
from quantforge.errors import OptionError
from quantforge.testing import check_quantizer
from quantforge_bnb import BitsAndBytesQuantizer
from quantforge_rtn import RTNQuantizer
from quantforge_rtn.kernels import dequantize, quantize_weight
from quantforge_transformers import LocalCPU

IDS = list(range(5, 69))


@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_round_trip_error_shrinks_with_bits(symmetric: bool) -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    errors = {}
    for bits in (4, 8):
        packed = quantize_weight(weight, bits, 64, symmetric)
        assert packed["qweight"].dtype == torch.uint8
        assert packed["qweight"].shape == (64, 128 if bits == 4 else 256)
        restored = dequantize(packed["qweight"], packed["scales"], packed["zeros"], bits, 64)
        errors[bits] = (restored - weight).abs().max().item()
        # Round-to-nearest: never off by more than half a step (plus fp16 scale rounding).
        step = (
            (weight.abs().amax() / (2 ** (bits - 1) - 1)).item()
            if symmetric
            else 2 * weight.abs().max().item() / (2**bits - 1)
        )
        assert errors[bits] <= 0.51 * step + 1e-3
    assert errors[8] < errors[4] / 8


def test_rtn_variant_reloads_and_runs(tiny_model: Path, tmp_path: Path) -> None:
    quantizer = RTNQuantizer()
    artifact = check_quantizer(
        quantizer,
        tiny_model,
        tmp_path,
        preset="int4",
        options={"group_size": 64},
        target=LocalCPU(),
    )
    weights = artifact.path / "model.safetensors"
    assert weights.stat().st_size < 0.55 * (tiny_model / "model.safetensors").stat().st_size
    model = quantizer.load_model(artifact)
    first = model(torch.tensor([IDS])).logits
    again = quantizer.load_model(artifact)(torch.tensor([IDS])).logits
    assert torch.equal(first, again)
    base = LocalCPU().load(type(artifact)(tiny_model, "hf"), {}, lambda a: None).logits(IDS)
    assert not torch.equal(first[0], base)  # really quantized
    assert (first[0].argmax(-1) == base.argmax(-1)).float().mean() > 0.8  # and still the same model


def test_rtn_group_size_a_user_chose_must_divide_the_layers(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = quantforge(
        "quantize", str(tiny_model), "-v", "rtn:int4,group_size=96", "--out", str(tmp_path / "r")
    )
    fails_with(out, "rtn: group_size 96 does not divide the model's hidden_size (256)", "64")
    assert out.returncode == 2 and not (tmp_path / "r").exists()
    # the quantizer itself (given 96 by the host as a default would be) falls back per layer
    artifact = check_quantizer(RTNQuantizer(), tiny_model, tmp_path, options={"group_size": 96})
    precision = json.loads((artifact.path / "quantforge-precision.json").read_text())
    assert set(precision["group_sizes"].values()) == {64} and precision["group_size"] == 96


@pytest.mark.parametrize("preset", ["nf4", "int8"])
def test_bnb_checkpoint_reloads_to_identical_logits(
    tiny_model: Path, tmp_path: Path, preset: str
) -> None:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    artifact = check_quantizer(
        BitsAndBytesQuantizer(), tiny_model, tmp_path, preset=preset, target=LocalCPU()
    )
    config = (artifact.path / "config.json").read_text()
    assert '"quant_method": "bitsandbytes"' in config
    # Quantizing in memory and reloading the saved checkpoint give the same model.
    if preset == "nf4":
        qconfig = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
    else:
        qconfig = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
    fresh = AutoModelForCausalLM.from_pretrained(
        tiny_model, quantization_config=qconfig, device_map="cpu"
    )
    reloaded = LocalCPU().load(artifact, {}, lambda a: None)
    with torch.inference_mode():
        expected = fresh(torch.tensor([IDS])).logits[0]
    assert torch.equal(reloaded.logits(IDS), expected)
    assert torch.equal(reloaded.logits(IDS), expected), (
        "a second forward must not change the weights"
    )


def test_rtn_mixed_precision_keeps_chosen_blocks_at_8_bits(
    tiny_model: Path, tmp_path: Path
) -> None:
    import json

    from quantforge.store.table import bits_label

    quantizer = RTNQuantizer()
    artifact = check_quantizer(
        quantizer,
        tiny_model,
        tmp_path,
        preset="int4",
        options={"overrides": r"layers\.0\.=8;layers\.3\.mlp=skip"},
        target=LocalCPU(),
    )
    precision = json.loads((artifact.path / "quantforge-precision.json").read_text())
    modules = precision["modules"]
    assert (
        modules["model.layers.0.mlp.down_proj"] == 8
        and modules["model.layers.0.self_attn.q_proj"] == 8
    )
    assert modules["model.layers.1.mlp.down_proj"] == 4
    assert (
        modules["model.layers.3.mlp.up_proj"] == "unquantized"
        and modules["model.layers.3.self_attn.q_proj"] == 4
    )
    assert modules["lm_head"] == "unquantized" and modules["model.embed_tokens"] == "unquantized"
    assert bits_label(4.0, precision) == "4/8"
    model = quantizer.load_model(artifact)
    assert (
        model.model.layers[0].mlp.down_proj.bits == 8
        and model.model.layers[1].mlp.down_proj.bits == 4
    )
    assert isinstance(model.model.layers[3].mlp.up_proj, torch.nn.Linear)
    again = quantizer.load_model(artifact)
    assert torch.equal(model(torch.tensor([IDS])).logits, again(torch.tensor([IDS])).logits)


def test_rtn_overrides_are_validated() -> None:

    options = RTNQuantizer.options.resolve("rtn", {"overrides": "layers=3"})
    with pytest.raises(OptionError, match="'3' in 'layers=3' must be 4, 8 or skip"):
        RTNQuantizer().check_model(options, {"hidden_size": 256, "intermediate_size": 768})
