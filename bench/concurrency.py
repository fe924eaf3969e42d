"""Four independent variants, jobs side by side against one job at a time, in one run of
this script, each from a cold cache.

    .venv/bin/python bench/concurrency.py --model MODEL_DIR [--runs 2] [--evaluator size ...]
    .venv/bin/python bench/concurrency.py --real      # SmolLM2-135M-Instruct (issue 9)

Each command is the CLI a user types (``quantforge quantize MODEL -v ... --target cpu``)
in a fresh interpreter with its own empty ``QUANTFORGE_CACHE_DIR``: once with ``--jobs 1``
(the reference: one job at a time, as quantforge ran before its job graph) and once with
the default (as many jobs as this machine's cores and memory allow). The two runs
alternate, ``--runs`` times each, and the medians are compared. Speed and peak memory, when
measured, run alone in both (their numbers stay honest), so the jobs that overlap are the
tokenizing, the builds, the base's reference outputs and the other measurements.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ["rtn:int8", "rtn:int4", "rtn:int4,group_size=64", "hqq:int4"]


def timed(args: list[str], cache: Path, out: Path) -> float:
    command = [sys.executable, "-m", "quantforge", "quantize", *args, "--out", str(out)]
    env = {**os.environ, "QUANTFORGE_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct (issue 9)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--evaluator", action="append", dest="evaluators")
    args = parser.parse_args()
    if args.real:
        from quantforge.testing import real_model

        model = real_model()
    elif args.model:
        model = args.model
    else:
        parser.error("give --model MODEL_DIR or --real")
    common = [str(model), "--target", "cpu", *[x for v in VARIANTS for x in ("-v", v)]]
    common += [x for e in args.evaluators or [] for x in ("--evaluator", e)]
    times: dict[str, list[float]] = {"1": [], "auto": []}
    work = Path(tempfile.mkdtemp(prefix="quantforge-bench-"))
    try:
        for i in range(args.runs):
            for jobs in ("1", "auto"):
                flags = ["--jobs", jobs] if jobs != "auto" else []
                where = work / f"{jobs}-{i}"
                times[jobs].append(timed([*common, *flags], where / "cache", where / "out"))
                shutil.rmtree(where, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    serial, concurrent = statistics.median(times["1"]), statistics.median(times["auto"])
    cores = len(os.sched_getaffinity(0))
    print(f"model {model.name}, variants {', '.join(VARIANTS)}, target cpu, {cores} cores")
    print(f"evaluators: {', '.join(args.evaluators) if args.evaluators else 'the defaults'}")
    print(f"  --jobs 1 (one job at a time)   median {serial:7.1f} s  {times['1']}")
    print(f"  default (jobs side by side)    median {concurrent:7.1f} s  {times['auto']}")
    print(f"ratio side by side / one at a time: {concurrent / serial:.2f}")


if __name__ == "__main__":
    main()
