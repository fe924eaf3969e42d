"""The first-party evaluators: sliding windows, perplexity, KL and the conformance checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from quantforge.interfaces import Artifact, EvalContext
from quantforge.testing import check_evaluator, check_target, evaluation_text
from quantforge_metrics import KLDivergence, PeakMemory, Perplexity, SizeOnDisk, Speed
from quantforge_metrics.windows import windows
from quantforge_transformers import LocalCPU


@pytest.mark.parametrize(
    ("n", "window", "stride"),
    [(10, 4, 2), (1000, 256, 128), (7, 16, 8), (300, 100, 100), (50, 8, 20)],
)
def test_windows_score_every_token_once(n: int, window: int, stride: int) -> None:
    spans = windows(n, window, stride)
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(1, n))
    assert all(end - begin <= window and begin < first for begin, end, first in spans)


@pytest.fixture(scope="module")
def runtime_and_context(tiny_model: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_model)(evaluation_text(4000))["input_ids"]
    runtime = check_target(LocalCPU(), Artifact(tiny_model, "hf"), options={"threads": 2})
    return runtime, ids


def _context(ids: list[int]) -> EvalContext:
    return EvalContext(token_ids=ids, dataset_fingerprint="sha256:test")


def test_perplexity_matches_a_single_forward_when_the_window_covers_the_text(
    runtime_and_context,
) -> None:  # type: ignore[no-untyped-def]
    runtime, ids = runtime_and_context
    ids = ids[400:600]  # code past the licence header, where more context helps
    (m,) = check_evaluator(
        Perplexity(),
        Artifact(Path("."), "hf"),
        runtime,
        _context(ids),
        options={"window": 256, "max_tokens": 200},
    )
    logits = runtime.logits(ids)
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    assert m.value == pytest.approx(math.exp(nll.item()), rel=1e-4)
    assert m.details["tokens"] == 199
    # A shorter window sees less context: perplexity goes up, not down.
    (short,) = check_evaluator(
        Perplexity(),
        Artifact(Path("."), "hf"),
        runtime,
        _context(ids),
        options={"window": 16, "stride": 8, "max_tokens": 200},
    )
    assert short.value > m.value


def test_kl_of_the_base_against_itself_is_zero(runtime_and_context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    runtime, ids = runtime_and_context
    out = check_evaluator(
        KLDivergence(),
        Artifact(Path("."), "hf"),
        runtime,
        _context(ids),
        options={"max_tokens": 300},
        reference_dir=tmp_path / "ref",
    )
    values = {m.metric: m.value for m in out}
    assert values["kl_divergence"] == pytest.approx(0.0, abs=1e-6)
    assert values["top1_agreement"] == 1.0


def test_size_speed_memory_conform(runtime_and_context, tiny_model: Path) -> None:  # type: ignore[no-untyped-def]
    runtime, ids = runtime_and_context
    artifact = Artifact(tiny_model, "hf")
    size = {m.metric: m.value for m in check_evaluator(SizeOnDisk(), artifact, None, _context(ids))}
    assert size["weights_mb"] == pytest.approx(
        (tiny_model / "model.safetensors").stat().st_size / 1e6
    )
    assert size["size_mb"] > size["weights_mb"]
    speed = {
        m.metric: m
        for m in check_evaluator(
            Speed(),
            artifact,
            runtime,
            _context(ids),
            options={"prompt_tokens": 32, "new_tokens": 8, "repeats": 3},
        )
    }
    assert speed["decode_tps"].value > 0 and speed["prefill_tps"].value > speed["decode_tps"].value
    memory = check_evaluator(PeakMemory(), artifact, runtime, _context(ids))
    assert memory[0].metric == "peak_rss_mb" and memory[0].value > 50


def test_speed_gives_decode_as_a_share_of_the_memory_bandwidth_roofline(
    runtime_and_context,  # type: ignore[no-untyped-def]
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    from quantforge.model.artifacts import folder_bytes
    from quantforge.running.bandwidth import machine_bandwidth

    bandwidth = machine_bandwidth(tmp_path)
    assert 1e8 < bandwidth.bytes_per_second < 1e13 and "sum of 512 MiB" in bandwidth.method
    (kept,) = (tmp_path / "machine").iterdir()  # measured once per machine, then read back
    stamp = kept.stat().st_mtime_ns
    assert machine_bandwidth(tmp_path) == bandwidth and kept.stat().st_mtime_ns == stamp

    runtime, ids = runtime_and_context
    context = _context(ids)
    context.memory_bandwidth = bandwidth.bytes_per_second
    options = {"prompt_tokens": 32, "new_tokens": 8, "repeats": 1}
    found = {
        m.metric: m for m in Speed().evaluate(Artifact(tiny_model, "hf"), runtime, options, context)
    }
    roof = found["roofline_pct"]
    weights = folder_bytes(tiny_model, weights_only=True)
    expected = 100 * found["decode_tps"].value * weights / bandwidth.bytes_per_second
    assert roof.value == pytest.approx(expected) and roof.unit == "%"
    assert roof.details["bandwidth_gbs"] == pytest.approx(bandwidth.gb_per_s)
    # without a measured bandwidth (an estimate, a target elsewhere) there is no roofline
    plain = Speed().evaluate(Artifact(tiny_model, "hf"), runtime, options, _context(ids))
    assert "roofline_pct" not in {m.metric for m in plain}
