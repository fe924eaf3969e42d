"""A GGUF Q4_K_M variant through quantforge, beside llama.cpp's convert + quantize run directly.

    .venv/bin/python bench/gguf_q4km.py [--model DIR | --real] [--runs 3]

Both sides start from the same HF folder and end with a Q4_K_M file, with a cold
quantforge cache each time. quantforge's figure is the whole `quantforge quantize`
command (preflight, worker processes, manifests, results store and the size
measurement); the reference is `convert_hf_to_gguf.py` then `llama_model_quantize`
in one fresh interpreter. A third figure is quantforge on a model it has seen before:
a fresh cache that holds only what the cold run learnt about the model: its vocabulary
(the preflight check that llama.cpp can convert and load it, kept by the content of
config and tokenizer) and its files' digests (kept by path, size and mtime), as on a
user's second variant of the same model. Prints the medians and the ratios.
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

DIRECT = """
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
assert llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)) == 0
"""


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def direct(model: Path, converter: Path, work: Path, env: dict[str, str]) -> float:
    f16, q4 = work / "f16.gguf", work / "q4_k_m.gguf"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(model)]
        + ["--outfile", str(f16), "--outtype", "f16"],
        check=True,
        capture_output=True,
        env=env,
    )
    subprocess.run(
        [sys.executable, "-c", DIRECT, str(f16), str(q4)], check=True, capture_output=True, env=env
    )
    seconds = time.perf_counter() - start
    assert q4.stat().st_size > 0
    return seconds


def through_quantforge(
    model: Path, work: Path, env: dict[str, str], seen: Path | None = None
) -> float:
    """The whole command with a cold cache, or (``seen``: a cold run's cache) with only the
    vocabulary checks that run kept."""
    script = shutil.which("quantforge") or str(Path(sys.executable).parent / "quantforge")
    argv = [script, "quantize", str(model), "-v", "llamacpp:q4_k_m", "--target", "llama.cpp"]
    argv += ["--evaluator", "size", "--out", str(work / "run")]
    if seen is not None:  # what the cold run learnt about the model, not what it built
        checks = "llama.cpp/vocab-checks"
        shutil.copytree(seen / checks, work / "cache" / checks)
        shutil.copy2(seen / "file-hashes.json", work / "cache" / "file-hashes.json")
    return _timed(argv, {**env, "QUANTFORGE_CACHE_DIR": str(work / "cache")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="HF model folder (default: the tiny model)")
    parser.add_argument(
        "--real", action="store_true", help="SmolLM2-135M-Instruct (quantforge.testing.real_model)"
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from quantforge.testing import build_tiny_model, real_model
    from quantforge_llamacpp.converter import converter_dir, llama_cpp_version

    model = args.model or (real_model(log=print) if args.real else build_tiny_model(log=print))
    converter = converter_dir()  # fetched once, outside the timings
    env = {**os.environ, "QUANTFORGE_LLAMA_CPP_DIR": str(converter)}
    ours, seen, theirs = [], [], []
    for _ in range(args.runs):
        with (
            tempfile.TemporaryDirectory() as a,
            tempfile.TemporaryDirectory() as b,
            tempfile.TemporaryDirectory() as c,
        ):
            theirs.append(direct(model, converter, Path(a), env))
            ours.append(through_quantforge(model, Path(b), env))
            seen.append(through_quantforge(model, Path(c), env, seen=Path(b) / "cache"))
    q, d, s = statistics.median(ours), statistics.median(theirs), statistics.median(seen)
    print(
        f"model: {model} ({sum(p.stat().st_size for p in model.glob('*.safetensors')) / 1e6:.1f} MB)"
    )
    print(f"llama-cpp-python {llama_cpp_version()}, {os.cpu_count()} cores, {args.runs} runs")
    print(f"llama.cpp convert + quantize, direct : {d:7.2f} s (median)")
    print(f"quantforge quantize -v llamacpp:q4_k_m: {q:7.2f} s (median), cold cache")
    print(f"  the same, a model seen before       : {s:7.2f} s (median)")
    print(f"ratio quantforge / direct: {q / d:.2f} cold, {s / d:.2f} on a model seen before")


if __name__ == "__main__":
    main()
