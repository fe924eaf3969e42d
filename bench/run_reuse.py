"""What one run saves: a 4-variant run beside 4 single-variant runs, and a rerun with
nothing changed beside the first run, all from cold caches measured in the same process.

    .venv/bin/python bench/run_reuse.py --model MODEL_DIR [-v rtn:int4 -v rtn:int8 ...]

Each command is the CLI a user types (`quantforge quantize MODEL -v ... --target cpu`),
in a fresh interpreter with its own empty ``QUANTFORGE_CACHE_DIR``. The single-variant
runs each build and measure the base again (they share nothing); the 4-variant run
measures it once; the rerun finds everything in the cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_VARIANTS = ["rtn:int8", "rtn:int4", "rtn:int4,group_size=64", "bnb:nf4"]


def timed(args: list[str], cache: Path, out: Path) -> float:
    command = [sys.executable, "-m", "quantforge", "quantize", *args, "--out", str(out)]
    env = {**os.environ, "QUANTFORGE_CACHE_DIR": str(cache)}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("-v", "--variant", action="append", dest="variants")
    args = parser.parse_args()
    variants = args.variants or DEFAULT_VARIANTS
    common = [str(args.model), "--target", "cpu"]
    work = Path(tempfile.mkdtemp(prefix="quantforge-bench-"))
    try:
        singles = []
        for i, v in enumerate(variants):
            singles.append(timed([*common, "-v", v], work / f"cache-{i}", work / f"run-{i}"))
        flags = [x for v in variants for x in ("-v", v)]
        first = timed([*common, *flags], work / "cache-all", work / "run-all")
        rerun = timed([*common, *flags], work / "cache-all", work / "run-all")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"model {args.model.name}, variants {', '.join(variants)}, target cpu, cold caches")
    for v, seconds in zip(variants, singles, strict=True):
        print(f"  single-variant run {v:<28} {seconds:7.1f} s")
    print(f"  {len(variants)} single-variant runs, total      {sum(singles):7.1f} s")
    print(f"  one {len(variants)}-variant run                   {first:7.1f} s")
    print(f"  the same run again, nothing changed  {rerun:7.1f} s")
    print(
        f"ratio {len(variants)}-variant run / {len(variants)} single runs: {first / sum(singles):.2f}"
    )
    print(f"ratio rerun / first run: {rerun / first:.3f}")


if __name__ == "__main__":
    main()
