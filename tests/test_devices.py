"""Device profiles: fit checks and roofline estimates, by hand-computed cases and through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fails_with, quantforge
from quantforge.devices.footprint import Footprint, footprint_of
from quantforge.errors import PlanError, UsageError
from quantforge.plugins.manager import load_plugins

# A Llama-3.1-8B-shaped model at about 4 bits: 32 layers, 8 KV heads of 128 dims (GQA).
LLAMA_8B_Q4 = Footprint(
    name="llama-8b-q4",
    family="gguf",
    weights_bytes=4_000_000_000,
    layers=32,
    kv_heads=8,
    head_dim=128,
    hidden_size=4096,
    vocab_size=128256,
    max_context=131072,
)


def _profile(name: str):
    return load_plugins().targets.get(name)


def test_an_8b_q4_model_on_a_raspberry_pi_5_by_hand() -> None:
    report = _profile("rpi5").fit(LLAMA_8B_Q4, 4096)

    # KV: 2 (K and V) x 32 layers x 8 heads x 128 dims x 4096 tokens x 2 bytes (f16 cache)
    assert report.kv_bytes == 536_870_912
    # llama.cpp 40 MiB + scratch 512 tokens x (128256 + 4 x 4096) x 4 bytes
    assert report.overhead_bytes == 41_943_040 + 296_222_720
    assert report.needed_bytes == 4_875_036_672
    assert report.available_bytes == 7 * 2**30  # 8 GiB less 1 GiB for the system
    assert report.fits
    # decode reads all weights and the whole cache per token: 17.1e9 / 4_536_870_912
    assert report.decode_tps_bound == pytest.approx(3.76912, rel=1e-5)
    assert report.decode_tps == pytest.approx(3.76912 * 0.6, rel=1e-5)
    assert report.runtime == "llama.cpp"
    shown = {what: (value, how) for what, value, how in report.lines}
    assert "2 x 32 layers x 8 kv heads x 128 dims x 4096 tokens x 2 B" in shown["KV cache"][1]
    assert shown["fits"][0] == "yes"
    assert "estimate" in next(w for w in shown if w.startswith("decode"))


def test_an_f16_8b_model_does_not_fit_in_8_gb_and_says_by_how_much() -> None:
    f16 = Footprint(**{**LLAMA_8B_Q4.__dict__, "weights_bytes": 16_000_000_000})
    report = _profile("rpi5").fit(f16, 8192)

    assert report.kv_bytes == 1_073_741_824  # twice the 4096-token cache
    assert report.needed_bytes == 16_000_000_000 + 1_073_741_824 + 338_165_760
    assert not report.fits
    assert report.headroom_bytes == pytest.approx(7 * 2**30 - 17_411_907_584)
    assert dict((w, v) for w, v, _ in report.lines)["fits"] == "NO"
    assert report.decode_tps_bound == pytest.approx(17.1e9 / 17_073_741_824)


def test_each_profile_states_memory_bandwidth_runtimes_and_a_source() -> None:
    plugins = load_plugins()
    wanted = {"rpi5", "jetson-orin-nano", "flagship-phone", "x86-edge", "cpu-space"}
    assert wanted <= set(plugins.targets.names())
    for name in wanted:
        profile = plugins.targets.get(name)
        assert not profile.measured
        assert 0 < profile.reserved_gib < profile.memory_gib
        assert profile.bandwidth_gbs > 0 and 0 < profile.efficiency <= 1
        assert profile.source and profile.runtimes
        assert profile.formats == {r.family for r in profile.runtimes}
        assert profile.unavailable_reason()  # a profile never runs models here
    assert plugins.targets.get("cpu-space").memory_gib == 16


def test_grouped_query_attention_shrinks_the_cache_and_context_bounds_are_checked() -> None:
    mha = Footprint(**{**LLAMA_8B_Q4.__dict__, "kv_heads": 32})
    rpi = _profile("rpi5")
    assert rpi.fit(mha, 4096).kv_bytes == 4 * rpi.fit(LLAMA_8B_Q4, 4096).kv_bytes
    with pytest.raises(UsageError, match="longer than llama-8b-q4 supports"):
        rpi.fit(LLAMA_8B_Q4, 131073)
    with pytest.raises(PlanError, match="flagship-phone does not run hf models"):
        _profile("flagship-phone").fit(Footprint(**{**LLAMA_8B_Q4.__dict__, "family": "hf"}), 10)


def _fake_model(folder: Path, weights: int, max_positions: int = 2048) -> Path:
    folder.mkdir()
    config = {
        "model_type": "llama",
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 256,
        "vocab_size": 1000,
        "max_position_embeddings": max_positions,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * weights)
    (folder / "tokenizer.json").write_text("{}" * 5000)  # not weights
    return folder


def test_footprint_of_a_folder_counts_only_weight_files(tmp_path: Path) -> None:
    fp = footprint_of(_fake_model(tmp_path / "m", 123_456))
    assert fp.weights_bytes == 123_456
    assert (fp.kv_heads, fp.head_dim, fp.family, fp.max_context) == (2, 64, "hf", 2048)


def test_fit_command_shows_the_arithmetic_for_one_device(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "m", 1_000_000)
    out = quantforge("fit", str(model), "--target", "rpi5", "--context", "1024")
    assert out.returncode == 0, out.stderr
    assert "estimates from device profiles, not measurements" in out.stdout
    # KV: 2 x 2 layers x 2 heads x 64 dims x 1024 tokens x 4 B (transformers keeps fp32 on CPU)
    assert "2 x 2 layers x 2 kv heads x 64 dims x 1024 tokens x 4 B" in out.stdout
    assert "raspberrypi.com" in out.stdout

    data = json.loads(quantforge("fit", str(model), "--target", "rpi5", "--json").stdout)
    assert data[0]["context"] == 2048  # the model's maximum, under the 4096 default
    assert data[0]["kv_cache_bytes"] == 2 * 2 * 2 * 64 * 2048 * 4
    assert data[0]["estimate"] is True and data[0]["fits"] is True


def test_fit_command_compares_every_profile(tmp_path: Path) -> None:
    out = quantforge("fit", str(_fake_model(tmp_path / "m", 1000)))
    assert out.returncode == 0, out.stderr
    for name in ("rpi5", "jetson-orin-n", "x86-edge", "cpu-space"):
        assert name in out.stdout
    assert "runs gguf, onnx, not hf" in out.stdout  # the phone runs no transformers


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--target", "rpi"], ["unknown target 'rpi'", "did you mean: rpi5"]),
        (["--target", "cpu"], ["'cpu' is measured on this machine, not a device profile"]),
        (["--target", "rpi5", "--context", "4096"], ["context 4096 is longer", "(2048 tokens"]),
        (["--target", "flagship-phone"], ["flagship-phone does not run hf models"]),
    ],
)
def test_fit_command_refuses_bad_input_in_one_line(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    fails_with(quantforge("fit", str(_fake_model(tmp_path / "m", 1000)), *args), *fragments)


def test_fit_command_refuses_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    fails_with(quantforge("fit", str(tmp_path), "--target", "rpi5"), "has no config.json")
    fails_with(quantforge("fit", str(tmp_path / "nope")), "does not exist")


def test_a_run_records_fit_and_estimated_speed_per_profile(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run = quantforge(
        "quantize",
        str(tiny_model),
        "-v",
        "rtn:int4",
        "--target",
        "rpi5,context=256",
        "--target",
        "flagship-phone",
        "--evaluator",
        "size",
        "--out",
        str(out),
    )
    assert run.returncode == 0, run.stderr  # the phone runs no hf models: shown, not failed
    assert "estimates from a device profile" in " ".join(run.stdout.split())  # wrapped at 80
    data = json.loads(quantforge("results", str(out), "--json").stdout)
    tables = {t["target"]: t for t in data["tables"]}
    rpi = tables["rpi5"]
    assert rpi["estimated"] is True
    assert rpi["columns"] == ["fits", "needed_mb", "est_decode_tps"]
    rows = {r["variant"]: r for r in rpi["rows"]}
    assert rows["base"]["metrics"]["fits"] == 1.0
    # 4-bit weights are read faster than fp32 ones: the roofline estimate says so
    assert rows["rtn-int4"]["metrics"]["est_decode_tps"] > rows["base"]["metrics"]["est_decode_tps"]
    estimates = [m for m in data["measurements"] if m["target"] == "rpi5"]
    assert {m["kind"] for m in estimates} == {"estimated"}
    assert all(m["details"]["context"] == 256 for m in estimates)
    assert {r["status"] for r in tables["flagship-phone"]["rows"]} == {"not runnable"}


def test_a_run_refuses_a_context_longer_than_the_model_before_any_compute(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = quantforge(
        "quantize",
        str(tiny_model),
        "-v",
        "rtn:int4",
        "--target",
        "rpi5,context=100000",
        "--out",
        str(tmp_path / "run"),
    )
    fails_with(out, "target rpi5: context 100000 is longer than the model supports (512 tokens")
    assert not (tmp_path / "run").exists()
