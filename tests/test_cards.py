"""Model cards from a run's results store: metadata through huggingface_hub, figures from the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fails_with, quantforge


@pytest.fixture(scope="module")
def run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cards") / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "rtn:int4", "-v", "rtn:int8", "-v", "rtn:int4,group_size=64",
        "--target", "cpu", "--target", "rpi5,context=256", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def cards(run: Path) -> Path:
    done = quantforge(
        "cards", str(run), "--base-model", "quantforge-tests/tiny-llama",
        "--quantized-by", "quantforge-ci", "--namespace", "qf-org",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "quantforge push" in done.stdout  # names the next command
    return run / "cards"


def _measured(run: Path) -> dict[tuple[str, str, str], float]:
    data = json.loads(quantforge("results", str(run), "--json").stdout)
    return {(m["variant"], m["target"], m["metric"]): m["value"] for m in data["measurements"]}


def test_card_metadata_is_hub_metadata(cards: Path, run: Path) -> None:
    from huggingface_hub import ModelCard

    card = ModelCard.load(cards / "rtn-int4" / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "quantforge-tests/tiny-llama"
    assert data["base_model_relation"] == "quantized"
    assert data["quantized_by"] == "quantforge-ci"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0"  # inherited from the base model's own card
    assert {"quantforge", "hf", "rtn", "4-bit", "int4"} <= set(data["tags"])
    # model-index round-trips through huggingface_hub and carries the stored values
    measured = _measured(run)
    by_type = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert by_type["perplexity"] == pytest.approx(
        measured[("rtn-int4", "cpu", "perplexity")], abs=1e-6
    )
    assert by_type["kl_divergence"] == pytest.approx(
        measured[("rtn-int4", "cpu", "kl_divergence")], abs=1e-6
    )
    assert all(r.task_type == "text-generation" for r in card.data.eval_results)
    ppl = next(r for r in card.data.eval_results if r.metric_type == "perplexity")
    assert ppl.metric_args is not None and ppl.metric_args["window"] > 0


def test_card_body_shows_the_stored_figures_with_deltas_and_fit_lines(
    cards: Path, run: Path
) -> None:
    text = (cards / "rtn-int4" / "README.md").read_text()
    measured = _measured(run)
    size = measured[("rtn-int4", "cpu", "size_mb")]
    base_size = measured[("base", "cpu", "size_mb")]
    delta = f"{(size - base_size) / base_size:+.0%}"
    assert "| **rtn-int4** |" in text and f"{size:.1f} ({delta})" in text
    for sibling in ("| base |", "| rtn-int8 |", "| rtn-int4-group_size64 |"):
        assert sibling in text
    assert "**rpi5** (estimate from a device profile, context 256): fits" in text
    assert "**cpu** (measured on" in text
    assert "![size vs quality of every variant](quantforge-tradeoffs.png)" in text
    assert "-v rtn:int4" in text and "--target rpi5,context=256" in text
    assert (
        'AutoModelForCausalLM.from_pretrained("qf-org/tiny-llama-c50c54f4c1a3be9b-rtn-4bit")'
        not in text
    )
    # two int4 RTN variants: the scheme's name would clash, so both fall back to their names
    base = Path(
        json.loads(quantforge("results", str(run), "--json").stdout)["run"]["base_model"]
    ).name
    assert f'from_pretrained("qf-org/{base}-rtn-int4")' in text
    assert f"[rtn-int8](https://huggingface.co/qf-org/{base}-rtn-8bit)" in text
    plot = cards / "rtn-int4" / "quantforge-tradeoffs.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_family_card_lists_every_variant(cards: Path) -> None:
    from huggingface_hub import ModelCard

    family = ModelCard.load(cards / "README.md")
    assert family.data.base_model == "quantforge-tests/tiny-llama"
    assert "| base |" in family.text
    for name in ("rtn-int4", "rtn-int8", "rtn-int4-group_size64"):
        assert f"| [{name}](https://huggingface.co/qf-org/" in family.text
    assert "### On `rpi5` (estimates from a device profile)" in family.text


def test_metrics_a_run_did_not_measure_are_written_not_measured(
    tiny_model: Path, tmp_path: Path
) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "rtn:int4", "--target", "cpu",
        "--evaluator", "size", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert quantforge("cards", str(out), "--no-plot").returncode == 0
    card = ModelCard.load(out / "cards" / "rtn-int4" / "README.md")
    assert "| **rtn-int4** |" in card.text and "| not measured |" in card.text
    assert not card.data.eval_results  # no model-index entry without a measured value
    assert not (out / "cards" / "rtn-int4" / "quantforge-tradeoffs.png").exists()


def test_bad_card_requests_write_nothing(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cards"
    fails_with(
        quantforge("cards", str(run), "--base-model", "not a repo id", "--out", str(out)),
        "'not a repo id' is not a valid Hub repo id",
    )
    fails_with(
        quantforge("cards", str(run), "--variant", "rtn-int5", "--out", str(out)),
        "unknown variant 'rtn-int5'",
        "rtn-int4",
    )
    fails_with(quantforge("cards", str(tmp_path / "nowhere")), "no results store in")
    assert not out.exists()
    assert not list(tmp_path.glob(".cards-*"))


def test_every_generated_card_passes_the_hubs_card_validation(cards: Path, hub) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import ModelCard

    paths = sorted(cards.rglob("README.md"))
    assert len(paths) == 5  # four variants and the family
    for path in paths:
        ModelCard.load(path).validate()
