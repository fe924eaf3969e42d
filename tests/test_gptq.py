"""GPTQ and AWQ through GPTQModel on the tiny model: conformance, exact reloads, a calibrated run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import fails_with, quantforge
from quantforge.testing import check_quantizer, tiny_calibration
from quantforge_gptq import AWQQuantizer, GPTQQuantizer
from quantforge_transformers import LocalCPU

IDS = list(range(5, 69))


@pytest.fixture(scope="module")
def calibration(tiny_model: Path):  # type: ignore[no-untyped-def]
    return tiny_calibration(tiny_model, samples=16, seq_len=128)


def _reloaded_logits(path: Path) -> list[torch.Tensor]:
    from transformers import AutoModelForCausalLM

    out = []
    for _ in range(2):
        model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu")
        with torch.inference_mode():
            out.append(model(torch.tensor([IDS])).logits)
    return out


QUANTIZERS = {"gptq": GPTQQuantizer(), "awq": AWQQuantizer()}


@pytest.fixture(scope="module")
def built(tiny_model: Path, calibration, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Each quantizer through the conformance kit once (with the CPU target loading the result)."""
    out = {}
    for name, quantizer in QUANTIZERS.items():
        tmp = tmp_path_factory.mktemp(name)
        out[name] = check_quantizer(
            quantizer, tiny_model, tmp, preset="int4", target=LocalCPU(), calibration=calibration
        )
    return out


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_conformance_and_exact_reload_with_plain_transformers(name: str, built) -> None:  # type: ignore[no-untyped-def]
    quantizer, artifact = QUANTIZERS[name], built[name]
    qconfig = json.loads((artifact.path / "config.json").read_text())["quantization_config"]
    assert qconfig["bits"] == 4 and qconfig["group_size"] == 128
    assert qconfig["quant_method"] == quantizer.name
    precision = json.loads((artifact.path / "quantforge-precision.json").read_text())
    assert precision["modules"]["model.layers.0.mlp.down_proj"] == 4
    assert precision["modules"]["lm_head"] == "unquantized"
    first, second = _reloaded_logits(artifact.path)
    assert torch.equal(first, second)
    assert quantizer.load_model(artifact) is None  # uniform: plain from_pretrained


AUTOGPTQ_CONFIG = {
    "bits": 4,
    "group_size": 128,
    "damp_percent": 0.01,
    "desc_act": False,
    "static_groups": False,
    "sym": True,
    "true_sequential": True,
    "model_name_or_path": None,
    "model_file_base_name": "model",
    "quant_method": "gptq",
    "checkpoint_format": "gptq",
}
AUTOAWQ_CONFIG = {
    "quant_method": "awq",
    "zero_point": True,
    "group_size": 128,
    "bits": 4,
    "version": "gemm",
    "modules_to_not_convert": None,
}


def _as_legacy(artifact_path: Path, dest: Path, qconfig: dict[str, object]) -> Path:
    """The same weights with the config AutoGPTQ / AutoAWQ wrote (no GPTQModel metadata)."""
    shutil.copytree(
        artifact_path,
        dest,
        ignore=shutil.ignore_patterns("quantforge*", "quant_log.csv", "quantize_config.json"),
    )
    config = json.loads((dest / "config.json").read_text())
    config["quantization_config"] = qconfig
    (dest / "config.json").write_text(json.dumps(config))
    if qconfig["quant_method"] == "gptq":
        (dest / "quantize_config.json").write_text(json.dumps(qconfig))
    return dest


def test_checkpoints_from_autogptq_and_autoawq_are_imported_and_measured(
    built, tiny_model: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    gptq = _as_legacy(built["gptq"].path, tmp_path / "legacy-gptq", AUTOGPTQ_CONFIG)
    awq = _as_legacy(built["awq"].path, tmp_path / "legacy-awq", AUTOAWQ_CONFIG)
    out = quantforge(
        "quantize",
        str(tiny_model),
        "--import",
        f"old-gptq={gptq}",
        "--import",
        f"old-awq={awq}",
        "--evaluator",
        "size",
        "--evaluator",
        "kl",
        "--out",
        str(tmp_path / "run"),
        "--json",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.stdout)["tables"][0]["rows"]}
    assert (
        rows["old-gptq"]["method"] == "GPTQ (AutoGPTQ)"
        and rows["old-awq"]["method"] == "AWQ (AutoAWQ)"
    )
    for name in ("old-gptq", "old-awq"):
        assert rows[name]["status"] == "ok", rows[name]["error"]
        assert rows[name]["bits"] == 4
        assert 0 < rows[name]["metrics"]["kl_divergence"] < 0.05
        assert rows[name]["metrics"]["top1_agreement"] > 0.9
    bad = quantforge("quantize", str(tiny_model), "--import", f"broken={tmp_path / 'nowhere'}")
    fails_with(bad, "does not exist")


def _write_recipe(tmp_path: Path, model: Path, calib: Path, variants: str) -> Path:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f"variants = {variants}\n"
        'evaluators = ["size", "perplexity", "kl"]\n'
        f'[model]\nid = "{model}"\n'
        f'[calibration]\nsource = "{calib}"\nsamples = 16\nseq_len = 128\n'
        '[run]\noutput = "out"\n'
    )
    return recipe


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from quantforge.testing import calibration_text

    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(calibration_text(60_000))
    return path


def test_mixed_precision_run_records_calibration_and_precision(
    tiny_model: Path, tmp_path: Path, calib_file: Path
) -> None:
    variants = '["gptq:int4", {name = "gptq-mixed", method = "gptq", preset = "int4", options = {overrides = "layers\\\\.0\\\\.=8;layers\\\\.3\\\\.=skip"}}]'
    out = quantforge(
        "run", str(_write_recipe(tmp_path, tiny_model, calib_file, variants)), "--json"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    rows = {r["variant"]: r for r in result["tables"][0]["rows"]}
    for name in ("gptq-int4", "gptq-mixed"):
        assert rows[name]["status"] == "ok", rows[name]["error"]
        assert {"perplexity", "kl_divergence", "top1_agreement"} <= set(rows[name]["metrics"])
    uniform, mixed = rows["gptq-int4"]["metrics"], rows["gptq-mixed"]["metrics"]
    # Layer 0 at 8 bits and layer 3 unquantized: closer to the base, and bigger.
    assert mixed["kl_divergence"] < uniform["kl_divergence"]
    assert mixed["size_mb"] > uniform["size_mb"]

    from quantforge.store.results import ResultsStore

    store = ResultsStore(tmp_path / "out")
    variants_rows = {v["name"]: v for v in store.variants()}
    calibration = variants_rows["gptq-mixed"]["calibration"]
    assert calibration["fingerprint"].startswith("sha256:") and calibration["samples"] == 16
    assert variants_rows["base"]["calibration"] is None
    path = Path(variants_rows["gptq-mixed"]["path"])
    precision = json.loads((path / "quantforge-precision.json").read_text())["modules"]
    assert precision["model.layers.0.self_attn.q_proj"] == 8
    assert precision["model.layers.1.self_attn.q_proj"] == 4
    assert precision["model.layers.3.self_attn.q_proj"] == "unquantized"
    manifest = json.loads((path / "quantforge.json").read_text())
    assert manifest["calibration"]["fingerprint"] == calibration["fingerprint"]
    # Mixed precision reloads exactly through GPTQModel's loader.
    from quantforge.model.artifacts import read_artifact

    model = GPTQQuantizer().load_model(read_artifact(path))
    again = GPTQQuantizer().load_model(read_artifact(path))
    with torch.inference_mode():
        assert torch.equal(model(torch.tensor([IDS])).logits, again(torch.tensor([IDS])).logits)


def test_gptq_to_a_size_budget_builds_the_chosen_bits_per_layer(
    tiny_model: Path, calib_file: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """GPTQModel quantizes at 4 and at 8 bits once, each layer's sensitivity is measured on
    GPTQ's own weights, and the knapsack's choice is built through GPTQModel's ``dynamic``.
    An MLP width of 704 makes down_proj fall back to groups of 64, as real widths do, so the
    per-width builds are mixed-precision checkpoints themselves (int4 5.4 MB, int8 6.2 MB)."""
    from conftest import quantize_and_measure, reshaped_model
    from safetensors import safe_open

    model = reshaped_model(tiny_model, tmp_path / "odd", intermediate_size=704, num_hidden_layers=2)
    metrics = quantize_and_measure(
        model,
        tmp_path / "run",
        ["gptq,max_size_mb=5.8"],
        "--calibration", str(calib_file), "--calibration-samples", "8",
        "--calibration-seq-len", "64",
        evaluators={"size": [], "kl": []},
    )  # fmt: skip
    mix = metrics[("gptq-max_size_mb5.8", "cpu")]
    folder = tmp_path / "run" / "variants" / "gptq-max_size_mb5.8"
    precision = json.loads((folder / "quantforge-precision.json").read_text())
    assert mix["size_mb"] <= 5.8 and mix["kl_divergence"] > 0
    assert abs(mix["size_mb"] - precision["predicted_mb"]) < 0.02 * 5.8
    assert {"4", "8"} <= set(precision["chosen"]) and precision["budget"] == "5.8 MB"
    assert set(precision["group_sizes"].values()) == {64}
    assert list((cache_dir / "gptq-sensitivity").glob("*.json"))
    # each layer is stored at the bits chosen for it: 32 / bits codes per int32 of qweight
    widths = {}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
            if key.endswith(".qweight"):
                name = key.removesuffix(".qweight")
                columns = fh.get_slice(f"{name}.g_idx").get_shape()[0]
                widths[name] = 32 * fh.get_slice(key).get_shape()[0] // columns
    chosen = {n: b for n, b in precision["modules"].items() if isinstance(b, int)}
    assert widths == chosen and set(widths.values()) == {4, 8}


def test_a_per_layer_rule_keeps_the_group_size_fallback_of_its_layer() -> None:
    """A rule naming one module exactly and that module's group-size fallback are the same
    pattern: one entry must carry both (a lost group size breaks loading on real widths)."""
    from quantforge_gptq.support import _dynamic

    fallbacks = {f"model.layers.{i}.mlp.down_proj": 64 for i in range(2)}
    dynamic = _dynamic([(r"^model\.layers\.0\.mlp\.down_proj$", 8)], fallbacks)
    assert dynamic == {
        r"+:^model\.layers\.0\.mlp\.down_proj$": {"group_size": 64, "bits": 8},
        r"+:^model\.layers\.1\.mlp\.down_proj$": {"group_size": 64},
    }


@pytest.mark.parametrize(
    ("variant", "fragment"),
    [
        ("gptq,bits=5", "gptq: option 'bits' must be one of 2, 3, 4, 8, got 5"),
        ("awq,bits=3", "awq: option 'bits' must be one of 4, got 3"),
        ("gptq,group_size=96", "must be one of -1, 32, 64, 128, 256, 512, 1024"),
        (
            "gptq,group_size=512",
            "gptq: group_size 512 does not divide the model's hidden_size (256)",
        ),
        (
            "gptq,device=cuda",
            "gptq: device 'cuda' was asked for, and this machine has no visible GPU",
        ),
        ("gptq,overrides=layers=5", "'5' in 'layers=5' must be 2, 3, 4, 8 or skip"),
        ("gptq,bpw=5,max_kl=0.1", "gptq: give exactly one budget: bpw, max_size_mb or max_kl"),
        ("gptq,bpw=5,overrides=layers=8", "it cannot be combined with overrides"),
    ],
)
def test_bad_gptq_options_fail_before_compute(
    tiny_model: Path, calib_file: Path, tmp_path: Path, variant: str, fragment: str
) -> None:
    out = quantforge(
        "quantize",
        str(tiny_model),
        "-v",
        variant,
        "--calibration",
        str(calib_file),
        "--out",
        str(tmp_path / "r"),
    )
    fails_with(out, fragment)
    assert not (tmp_path / "r").exists()


def test_unsupported_architecture_is_refused(
    tiny_model: Path, calib_file: Path, tmp_path: Path
) -> None:
    model = tmp_path / "odd-model"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "surely-not-an-architecture"
    (model / "config.json").write_text(json.dumps(config))
    out = quantforge("quantize", str(model), "-v", "gptq:int4", "--calibration", str(calib_file))
    fails_with(out, "gptq cannot process 'surely-not-an-architecture' models")


def test_without_calibration_data_the_built_in_text_is_used(
    tiny_model: Path, real_model: Path, tmp_path: Path
) -> None:
    from quantforge.plugins.manager import load_plugins
    from quantforge.running.planner import parse_variant
    from quantforge.running.preflight import preflight
    from quantforge.running.recipe import RunConfig, with_base

    plugins = load_plugins()
    for model, text, samples in (
        (tiny_model, "builtin-calibration.txt", 32),
        (real_model, "builtin-prose-calibration.txt", 128),
    ):
        config = RunConfig(str(model), with_base([parse_variant("gptq:int4")]), tmp_path / "r")
        plan = preflight(config, plugins, tmp_path / "cache")
        assert plan.calibration_spec is not None and plan.calibration is not None
        assert Path(plan.calibration_spec.source).name == text
        assert plan.calibration_spec.samples == samples
        gptq = next(p for p in plan.plans if p.spec.name == "gptq-int4")
        assert gptq.steps[-1].calibration == plan.calibration
    prose = (tmp_path / "cache" / "data" / "builtin-prose-calibration.txt").read_text()
    assert len(prose) > 300_000  # about 100,000 tokens: 128 rows of 512 fit
    assert not (tmp_path / "r").exists()  # preflight writes no run folder


def test_calibration_problems(tiny_model: Path, tmp_path: Path) -> None:
    fails_with(
        quantforge(
            "quantize",
            str(tiny_model),
            "-v",
            "gptq:int4",
            "--calibration",
            str(tmp_path / "none.txt"),
        ),
        "calibration file",
        "does not exist",
    )
    (tmp_path / "empty.txt").write_text("\n")
    fails_with(
        quantforge(
            "quantize",
            str(tiny_model),
            "-v",
            "gptq:int4",
            "--calibration",
            str(tmp_path / "empty.txt"),
        ),
        "is empty",
    )
    (tmp_path / "short.txt").write_text("def f():\n    return 1\n")
    out = quantforge(
        "quantize",
        str(tiny_model),
        "-v",
        "gptq:int4",
        "--calibration",
        str(tmp_path / "short.txt"),
        "--out",
        str(tmp_path / "r"),
    )
    fails_with(
        out, "calibration text gives", "128 samples of 512 tokens need 65536", after_progress=True
    )
    # The run stopped before building anything: no variant exists.
    assert not (tmp_path / "r" / "variants").exists()


def test_hub_dataset_while_offline(tiny_model: Path, tmp_path: Path) -> None:
    out = quantforge(
        "quantize",
        str(tiny_model),
        "-v",
        "gptq:int4",
        "--calibration",
        "some-org/some-dataset",
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    fails_with(
        out, "calibration dataset 'some-org/some-dataset' is on the Hub, and the Hub is offline"
    )
