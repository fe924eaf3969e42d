"""Widths per tensor to a budget: ``gguf-mix`` (GGUF types), RTN with a budget (4, 8 or float
bits per layer) and ``quantforge search --max-size``/``--bpw``.

The knapsack is checked against brute force; the step and the search run on the tiny model
(the real model's comparison with Q4_K_M at equal size is ``bench/gguf_mix.py``)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from conftest import Metrics, fails_with, quantforge
from conftest import quantize_and_measure as run_and_measure
from quantforge.choosing.allocation import Choice, Sensitivity, choose, choose_for_kl, predicted_kl


def _random_sensitivity(seed: int, tensors: int = 6) -> Sensitivity:
    rng = random.Random(seed)
    choices = {}
    for i in range(tensors):
        sizes = sorted(rng.sample(range(100, 1000), 3))
        kls = sorted((rng.random() for _ in range(3)), reverse=True)
        choices[f"blk.{i}.w"] = [
            Choice(f"T{j}", s, k) for j, (s, k) in enumerate(zip(sizes, kls, strict=True))
        ]
    return Sensitivity(choices, fixed_bytes=50, params=10_000, overhead_bytes=0)


@pytest.mark.parametrize("seed", range(8))
def test_the_knapsack_finds_the_lowest_kl_within_the_budget(seed: int) -> None:
    sens = _random_sensitivity(seed)
    names = sorted(sens.choices)
    total_low = sens.fixed_bytes + sum(sens.choices[n][0].nbytes for n in names)
    total_high = sens.fixed_bytes + sum(sens.choices[n][-1].nbytes for n in names)
    for budget in (total_low + (total_high - total_low) * f for f in (0.2, 0.5, 0.8)):
        best = min(
            (
                combo
                for combo in itertools.product(*(sens.choices[n] for n in names))
                if sens.fixed_bytes + sum(c.nbytes for c in combo) <= budget
            ),
            key=lambda combo: sum(c.kl for c in combo),
        )
        chosen = choose(sens, budget)
        assert chosen is not None
        assert sens.fixed_bytes + sum(c.nbytes for c in chosen.values()) <= budget
        # the size axis is cut into bins: within a hair of the exact optimum
        assert predicted_kl(chosen) <= sum(c.kl for c in best) * 1.01 + 1e-12
    assert choose(sens, total_low - 1) is None
    assert choose(sens, total_high) == {n: sens.choices[n][-1] for n in names}


def test_a_kl_budget_gets_the_smallest_mix_that_meets_it() -> None:
    sens = _random_sensitivity(3)
    largest = {n: c[-1] for n, c in sens.choices.items()}
    target = predicted_kl(largest) * 3
    chosen = choose_for_kl(sens, target)
    assert chosen is not None and predicted_kl(chosen) <= target
    size = sum(c.nbytes for c in chosen.values())
    assert size < sum(c.nbytes for c in largest.values())
    assert choose_for_kl(sens, predicted_kl(largest) / 2) is None


def _rounded(weight, bits: int):  # type: ignore[no-untyped-def]
    """``weight`` rounded to ``bits`` per row, symmetric: a quantizer's candidate."""
    top = weight.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
    return (weight / top).round() * top


def test_the_probe_replays_exactly_and_estimates_within_a_factor(tiny_model: Path) -> None:
    """The blocks before a changed tensor are replayed, not recomputed, and change nothing;
    the KL of widths not measured, estimated from their output error by the power law
    through two measured ones, stays within a factor of 2 of the measured KL."""
    import torch
    from quantforge.choosing.sensitivity import KLProbe, input_energy
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    rows = [list(range(5 + i, 69 + i)) for i in range(4)]
    probe = KLProbe(model, rows)
    name = "model.layers.2.mlp.down_proj.weight"
    weight = model.get_parameter(name).detach().clone()
    with torch.no_grad():
        model.get_parameter(name).copy_(_rounded(weight, 3))
    assert probe.kl(probe.block_of(name)) == pytest.approx(probe.kl(None), rel=1e-9)
    with torch.no_grad():
        model.get_parameter(name).copy_(weight)

    def candidates():  # type: ignore[no-untyped-def]
        yield "float", weight.numel() * 4, None
        for bits in (2, 3, 4, 5, 6, 8):
            yield str(bits), weight.numel() * bits // 8, _rounded(weight, bits)

    measured = {c.type: c.kl for c in probe.choices(name, candidates())}
    energy = input_energy(model, probe.ids)["model.layers.2.mlp.down_proj"]
    estimated = {c.type: c.kl for c in probe.estimated_choices(name, candidates(), energy, 2)}
    assert torch.equal(model.get_parameter(name).detach(), weight)  # restored
    assert estimated["float"] == measured["float"] == 0
    # measured: the smallest (2 bits) and the middle one by size (5 bits); the rest estimated
    assert [b for b in measured if b != "float" and estimated[b] == measured[b]] == ["2", "5"]
    for bits in ("3", "4", "6", "8"):
        assert measured[bits] / 2 < estimated[bits] < measured[bits] * 2, (
            bits,
            measured,
            estimated,
        )
    widths = [estimated[b] for b in ("2", "3", "4", "5", "6", "8")]
    assert widths == sorted(widths, reverse=True)


@pytest.fixture(scope="module")
def mix_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Metrics]:
    out = tmp_path_factory.mktemp("gguf-mix") / "run"
    metrics = run_and_measure(
        tiny_model,
        out,
        ["gguf-mix,bpw=5"],
        "--target",
        "llama.cpp",
        evaluators={"size": [], "kl": []},
    )
    return out, metrics


@pytest.mark.slow
def test_the_mix_is_built_by_llama_cpp_with_the_chosen_types(mix_run) -> None:  # type: ignore[no-untyped-def]
    mix_run, _ = mix_run
    precision = json.loads(
        (mix_run / "variants" / "gguf-mix-bpw5" / "quantforge-precision.json").read_text()
    )
    assert precision["type"] == "mix" and precision["budget"] == "5 bits per weight"
    assert 4.5 < precision["default_bits"] <= 5.0
    assert len(precision["chosen"]) >= 2  # a mix, not one type
    assert sum(precision["chosen"].values()) == len(precision["modules"])
    assert precision["predicted_kl"] > 0
    import sys

    from quantforge_llamacpp.converter import converter_dir

    sys.path.insert(1, str(converter_dir() / "gguf-py"))
    from quantforge_llamacpp.quantize import gguf_facts

    types = gguf_facts(
        mix_run / "variants" / "gguf-mix-bpw5" / "model.gguf", converter_dir() / "gguf-py"
    )["tensor_types"]
    assert {t for n, t in types.items() if n in precision["modules"]} == set(precision["chosen"])


@pytest.mark.slow
def test_the_mix_is_measured_and_the_sensitivities_are_kept(mix_run, cache_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _, metrics = mix_run
    mix = metrics[("gguf-mix-bpw5", "llama.cpp")]
    assert mix["kl_divergence"] > 0
    # 5 bits per weight of this model's 5.6 M parameters, and the file's header
    assert mix["size_mb"] < 5 * 5.6 / 8 + 0.2
    assert list((cache_dir / "gguf-sensitivity").glob("*.json"))


@pytest.mark.slow
def test_budgets_that_cannot_be_met_are_one_line(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fails_with(
        quantforge("quantize", str(tiny_model), "-v", "gguf-mix", "--out", str(out)),
        "exactly one budget",
    )
    fails_with(
        quantforge("quantize", str(tiny_model), "-v", "gguf-mix,bpw=4,max_size_mb=3"),
        "exactly one budget",
    )
    fails_with(
        quantforge("quantize", str(tiny_model), "-v", "gguf-mix,bpw=4,types=Q4_K,Q9"),
        "types",
    )
    done = quantforge(
        "quantize", str(tiny_model), "-v", "gguf-mix,max_size_mb=0.5", "--out", str(out),
        "--target", "llama.cpp", "--evaluator", "size",
    )  # fmt: skip
    assert done.returncode != 0
    assert "below the smallest mix" in done.stderr
    assert not (out / "variants" / "gguf-mix-max_size_mb0.5").exists()
    fails_with(
        quantforge("search", str(tiny_model), "--target", "cpu", "--max-size", "ten"),
        "is not a size",
    )
    fails_with(
        quantforge("search", str(tiny_model), "--target", "cpu", "--max-size", "3MB", "--bpw", "4"),
        "both state a size budget",
    )


@pytest.mark.slow
def test_search_with_a_size_budget_answers_the_lowest_kl_within_it(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "search"
    done = quantforge(
        "search", str(tiny_model), "--target", "llama.cpp", "--max-size", "3.6MB",
        "--method", "llamacpp", "--method", "gguf-mix", "--out", str(out), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    tried = [c for c in result["candidates"] if c["measured"]]
    fitting = [c for c in tried if c["measured"]["size_mb"] <= 3.6]
    assert result["winner"] in {c["spec"] for c in fitting}
    winner = next(c for c in fitting if c["spec"] == result["winner"])
    assert all(winner["measured"]["kl"] <= c["measured"]["kl"] for c in fitting)
    assert any(c["spec"] == "gguf-mix,max_size_mb=3.6" for c in tried)
    assert any(
        c["state"] == "pruned" and "above the 3.6 MB budget" in c["reason"]
        for c in result["candidates"]
    )


@pytest.mark.slow
def test_rtn_to_a_size_budget_mixes_4_and_8_bits_between_the_uniform_presets(
    tiny_model: Path, tmp_path: Path
) -> None:
    metrics = run_and_measure(
        tiny_model,
        tmp_path / "run",
        ["rtn:int4", "rtn:int8", "rtn,max_size_mb=11.3"],
        "--target",
        "cpu",
        evaluators={"size": [], "kl": []},
    )
    int4, int8 = metrics[("rtn-int4", "cpu")], metrics[("rtn-int8", "cpu")]
    mix = metrics[("rtn-max_size_mb11.3", "cpu")]
    assert int4["size_mb"] < mix["size_mb"] <= 11.3 < int8["size_mb"]
    assert int8["kl_divergence"] < mix["kl_divergence"] < int4["kl_divergence"]
    precision = json.loads(
        (
            tmp_path / "run" / "variants" / "rtn-max_size_mb11.3" / "quantforge-precision.json"
        ).read_text()
    )
    assert set(precision["chosen"]) == {"4", "8"} and precision["budget"] == "11.3 MB"
    assert set(precision["modules"].values()) >= {4, 8}
    fails_with(
        quantforge("quantize", str(tiny_model), "-v", "rtn,bpw=6,overrides=lm_head=8"),
        "cannot be combined with overrides",
    )


def test_a_recipe_states_a_size_budget_as_the_command_line_does(tmp_path: Path) -> None:
    from typing import Any

    from quantforge.errors import UsageError
    from quantforge.running.constraints import Constraints
    from quantforge.running.recipe import parse_recipe

    def search(**table: Any) -> Constraints:
        config = parse_recipe({"model": {"id": "m"}, "search": {"target": "cpu", **table}})
        assert config.search is not None
        return config.search.constraints

    assert search(max_size="0.1GB").max_size_mb == 100
    assert search(max_size=95.5).max_size_mb == 95.5
    assert search(bpw=4.5).bpw == 4.5
    with pytest.raises(UsageError, match="both state a size budget"):
        search(max_size="100MB", bpw=4)
    with pytest.raises(UsageError, match="is not a size"):
        search(max_size="big")
