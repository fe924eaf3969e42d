"""Cold start of `quantforge --help` beside `optimum-cli --help` and `python -c "import torch"`,
measured in the same run (`python -c "import optimum"` stands in when optimum-cli is absent).

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
        **_optimum(),
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        'python -c "pass"': [sys.executable, "-c", "pass"],
    }
    results = {name: median_seconds(argv, args.runs) for name, argv in commands.items()}
    for name, seconds in results.items():
        print(f"{name:28s} {seconds * 1000:8.0f} ms (median of {args.runs})")
    mine = results["quantforge --help"]
    for reference in [n for n in results if "optimum" in n] + ['python -c "import torch"']:
        print(f"ratio quantforge --help / {reference}: {mine / results[reference]:.3f}")


def _optimum() -> dict[str, list[str]]:
    """The reference CLI people would otherwise start: optimum-cli, else importing optimum."""
    cli = shutil.which("optimum-cli") or str(Path(sys.executable).parent / "optimum-cli")
    if Path(cli).is_file():
        return {"optimum-cli --help": [cli, "--help"]}
    return {'python -c "import optimum"': [sys.executable, "-c", "import optimum"]}


if __name__ == "__main__":
    main()
