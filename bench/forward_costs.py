"""What a forward pass of the real model costs on this CPU: the figures behind two limits
in bench/README.md (perplexity against lm-eval, and jobs side by side).

    .venv/bin/python bench/forward_costs.py [--model DIR] [--repeats 2]

1. One 512-token window on 1 thread and on every core: how much one job gains from the
   cores that jobs side by side would otherwise share.
2. Four windows one at a time, as one batch, and one at a time without the LM head: what
   batching the perplexity windows could gain, and what the LM head costs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="HF folder (default: SmolLM2-135M, issue 9)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch
    from quantforge.testing import real_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model or real_model()).eval()
    ids = torch.randint(
        0, model.config.vocab_size, (4, 512), generator=torch.Generator().manual_seed(0)
    )
    cores = len(os.sched_getaffinity(0))
    with torch.no_grad():
        model(ids[:1])  # warm
        for _ in range(args.repeats):
            for threads in (1, cores):
                torch.set_num_threads(threads)
                start = time.perf_counter()
                model(ids[:1])
                print(
                    f"one 512-token window, {threads} thread(s): {time.perf_counter() - start:.2f} s"
                )
        torch.set_num_threads(cores)
        for _ in range(args.repeats):
            start = time.perf_counter()
            for i in range(4):
                torch.log_softmax(model(ids[i : i + 1]).logits[0].float(), -1)
            one = time.perf_counter() - start
            start = time.perf_counter()
            torch.log_softmax(model(ids).logits.float(), -1)
            batch = time.perf_counter() - start
            start = time.perf_counter()
            for i in range(4):
                model(ids[i : i + 1], logits_to_keep=1)
            headless = time.perf_counter() - start
            print(
                f"four windows: one at a time {one:.2f} s, as one batch {batch:.2f} s, "
                f"one at a time without the LM head {headless:.2f} s"
            )


if __name__ == "__main__":
    main()
