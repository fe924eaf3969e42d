"""The worker environment llm-compressor runs in, and how it is made.

llm-compressor 0.14 pins ``transformers<=5.17``; quantforge's environment has a newer
transformers, which loads compressed-tensors checkpoints but which llm-compressor refuses.
So the quantize step runs :mod:`quantforge_llmcompressor.oneshot_script` with the Python of
an environment of its own, and only its output (a compressed-tensors checkpoint, read by
the ``compressed-tensors`` package in quantforge's environment) crosses back.

Make it once per machine (about 1.5 GB, a few minutes)::

    python -m quantforge_llmcompressor.environment

It goes to ``$QUANTFORGE_CACHE_DIR/envs/llmcompressor-<version>`` (by default under
``~/.cache/quantforge``); ``QUANTFORGE_LLMCOMPRESSOR_PYTHON`` names the Python of an
environment made another way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

LLMCOMPRESSOR = "0.14.0.1"
TORCH = "2.13.0"  # the CPU wheel, as in quantforge's own environment
PYTHON_VARIABLE = "QUANTFORGE_LLMCOMPRESSOR_PYTHON"
MAKE_COMMAND = "python -m quantforge_llmcompressor.environment"


def default_folder() -> Path:
    from quantforge.running.runner import default_cache_dir

    return default_cache_dir() / "envs" / f"llmcompressor-{LLMCOMPRESSOR}"


def worker_python() -> Path | None:
    """The Python that runs llm-compressor, or ``None`` when no environment is made."""
    named = os.environ.get(PYTHON_VARIABLE)
    if named:
        return Path(named) if Path(named).is_file() else None
    python = default_folder() / "bin" / "python"
    ready = default_folder() / ".complete"
    return python if python.is_file() and ready.is_file() else None


def missing_reason() -> str | None:
    """Why llm-compressor cannot run here, in one line, or ``None``."""
    named = os.environ.get(PYTHON_VARIABLE)
    if named and not Path(named).is_file():
        return f"{PYTHON_VARIABLE}={named} names no file"
    if worker_python() is None:
        return f"llm-compressor's worker environment is not made ({default_folder()})"
    return None


def _pip(python: Path, *args: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q", *args],
        check=True,
    )


def make(folder: Path | None = None) -> Path:
    """Create the environment (torch's CPU wheel first, then llm-compressor) and return its
    Python. A half-made one is removed first; only a finished one is marked complete."""
    folder = folder or default_folder()
    python = folder / "bin" / "python"
    if (folder / ".complete").is_file():
        return python
    if folder.exists():  # a half-made one (a venv's scripts name their folder: build in place)
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True).create(folder)
    _pip(python, f"torch=={TORCH}")
    _pip(python, f"torch=={TORCH}", f"llmcompressor=={LLMCOMPRESSOR}")
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cuda = [line for line in listed.splitlines() if line.lower().startswith("nvidia-cu")]
    if cuda:
        shutil.rmtree(folder)
        raise SystemExit(f"error: a CUDA build crept into the environment: {', '.join(cuda)}")
    (folder / ".complete").write_text(LLMCOMPRESSOR, encoding="utf-8")
    return python


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else default_folder()
    python = make(folder)
    print(f"llm-compressor {LLMCOMPRESSOR} is ready: {python}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
