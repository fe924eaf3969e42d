"""quantforge's perplexity beside lm-evaluation-harness's on the same model, text and window.

    .venv/bin/python bench/perplexity_vs_lmeval.py --model MODEL_DIR | --real [--window 256] [--runs 3]

lm-eval scores a document with ``loglikelihood_rolling``: windows of ``max_length``
tokens, the first predicted from the prefix token, each later one from the token before
it. quantforge's perplexity evaluator scores the same positions when given the same ids
with that prefix in front, a window of ``max_length + 1`` and a stride of ``max_length``.
Both load the model once (not timed); the timed part is the scoring. Prints both
perplexities (they must agree), both medians, and the speed ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="a local HF model folder")
    parser.add_argument(
        "--real",
        action="store_true",
        help="SmolLM2-135M-Instruct (quantforge.testing.real_model) on the built-in prose",
    )
    parser.add_argument(
        "--text", type=Path, help="evaluation text (default: quantforge's built-in)"
    )
    parser.add_argument("--window", type=int, default=256, help="lm-eval max_length")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens of text scored")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.real:
        from quantforge.testing import real_model

        args.model = args.model or real_model()
    if args.model is None:
        parser.error("give --model DIR or --real")

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from quantforge_metrics.windows import perplexity, scored_logprobs
    from quantforge_transformers import TransformersRuntime

    torch.manual_seed(0)
    lm = HFLM(pretrained=str(args.model), max_length=args.window, batch_size=1, device="cpu")
    if args.text:
        text = args.text.read_text(encoding="utf-8")
    elif args.real:
        from quantforge.model.texts import prose_evaluation_text

        text = prose_evaluation_text()
    else:
        from quantforge.model.texts import stdlib_evaluation_text as evaluation_text

        text = evaluation_text(40_000)
    ids = lm.tok_encode(text)[: args.tokens]
    text = lm.tok_decode(ids)
    ids = lm.tok_encode(text)  # what lm-eval itself will score
    runtime = TransformersRuntime(lm.model, torch)

    def ours() -> float:
        scored = scored_logprobs(
            runtime, [lm.prefix_token_id, *ids], args.window + 1, args.window, len(ids) + 1
        )
        return perplexity(scored)[0]

    def theirs() -> float:
        request = Instance("loglikelihood_rolling", {}, (text,), 0)
        (total,) = lm.loglikelihood_rolling([request], disable_tqdm=True)
        return math.exp(-total / len(ids))

    results = {}
    for name, fn in (("quantforge", ours), ("lm-eval", theirs)):
        value = fn()  # warm-up
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            value = fn()
            times.append(time.perf_counter() - start)
        results[name] = (value, statistics.median(times))
    (q, tq), (r, tr) = results["quantforge"], results["lm-eval"]
    print(f"model {args.model.name}, {len(ids)} tokens, window {args.window}, {args.runs} runs")
    print(f"{'':<12} {'perplexity':>12} {'median s':>10}")
    for name, (value, seconds) in results.items():
        print(f"{name:<12} {value:>12.4f} {seconds:>10.3f}")
    print(f"relative difference of the perplexities: {abs(q - r) / r:.2e}")
    print(f"speed ratio quantforge / lm-eval (time): {tq / tr:.2f}")
    if abs(q - r) / r > 1e-3:
        sys.exit("the perplexities disagree")


if __name__ == "__main__":
    main()
