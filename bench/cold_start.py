"""Cold start of `quantforge --help` beside `python -c "import torch"`, measured in the same run.

    .venv/bin/python bench/cold_start.py [--runs 7]

Prints the median wall time of each command over fresh interpreters and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def median_seconds(argv: list[str], runs: int) -> float:
    subprocess.run(argv, check=True, capture_output=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    script = shutil.which("quantforge") or str(Path(sys.executable).parent / "quantforge")
    commands = {
        "quantforge --help": [script, "--help"],
        "quantforge plugins": [script, "plugins"],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        'python -c "pass"': [sys.executable, "-c", "pass"],
    }
    results = {name: median_seconds(argv, args.runs) for name, argv in commands.items()}
    for name, seconds in results.items():
        print(f"{name:28s} {seconds * 1000:8.0f} ms (median of {args.runs})")
    ratio = results["quantforge --help"] / results['python -c "import torch"']
    print(f"ratio quantforge --help / import torch: {ratio:.3f}")


if __name__ == "__main__":
    main()
