"""gguf-mix (a GGUF type per tensor, chosen from measured sensitivities) at the size of
llama.cpp's own presets, beside those presets, on one harness.

    .venv/bin/python bench/gguf_mix.py [--model DIR | --real] [--presets q4_k_m,q3_k_m] [--probes 2]

For each preset: quantforge builds it with llama.cpp and measures its size; then builds
``gguf-mix,max_size_mb=<that size>`` and measures both with llama.cpp on the same held-out
token ids (KL divergence, top-1 agreement and perplexity against the HF base). The mix
measures its sensitivities on the calibration text (built-in prose), never on the
evaluation text. Prints both rows and the ratio of KL, mix / preset (below 1: the mix wins).
``--probes 1|2``: the mix measures that many types per linear weight and estimates the rest
(``gguf-mix,probes=``); the time its sensitivities took is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVAL = ["window=512", "stride=256", "max_tokens=1024"]


def _quantforge() -> str:
    return shutil.which("quantforge") or str(Path(sys.executable).parent / "quantforge")


def _run(model: Path, out: Path, variant: str) -> None:
    argv = [_quantforge(), "quantize", str(model), "-v", variant, "--target", "llama.cpp"]
    argv += ["--evaluator", "size", "--evaluator", ",".join(["kl", *EVAL])]
    argv += ["--evaluator", ",".join(["perplexity", *EVAL]), "--out", str(out), "--jobs", "1"]
    subprocess.run(argv, check=True, capture_output=True)


def _measured(out: Path) -> dict[str, dict[str, float]]:
    done = subprocess.run(
        [_quantforge(), "results", str(out), "--json"], check=True, capture_output=True, text=True
    )
    found: dict[str, dict[str, float]] = {}
    for m in json.loads(done.stdout)["measurements"]:
        if m["target"] == "llama.cpp":
            found.setdefault(m["variant"], {})[m["metric"]] = m["value"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="HF model folder (default: the tiny model)")
    parser.add_argument(
        "--real", action="store_true", help="SmolLM2-135M-Instruct (quantforge.testing.real_model)"
    )
    parser.add_argument("--presets", default="q4_k_m,q3_k_m", help="llama.cpp presets to match")
    parser.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    parser.add_argument(
        "--probes", type=int, default=0, help="gguf-mix probes (0: every type measured)"
    )
    args = parser.parse_args()
    from quantforge.testing import build_tiny_model, real_model

    model = args.model or (real_model(log=print) if args.real else build_tiny_model(log=print))
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        print(f"model: {model}")
        print(f"{'variant':34s} {'size MB':>8s} {'KL':>9s} {'top-1':>7s} {'ppl':>8s}")
        for preset in args.presets.split(","):
            _run(model, out, f"llamacpp:{preset}")
            uniform = _measured(out)[f"llamacpp-{preset}"]
            size = round(uniform["size_mb"], 3)
            probes = f",probes={args.probes}" if args.probes else ""
            mix_spec = f"gguf-mix,max_size_mb={size:g}{probes}"
            started = time.monotonic()
            _run(model, out, mix_spec)
            took = time.monotonic() - started
            mix_name = f"gguf-mix-max_size_mb{size:g}{probes.replace(',', '-').replace('=', '')}"
            mix = _measured(out)[mix_name]
            precision = json.loads(
                (out / "variants" / mix_name / "quantforge-precision.json").read_text()
            )
            for name, m in ((f"llamacpp:{preset}", uniform), (mix_spec, mix)):
                print(
                    f"{name:34s} {m['size_mb']:8.2f} {m['kl_divergence']:9.5f} "
                    f"{m['top1_agreement']:7.2%} {m.get('perplexity', float('nan')):8.3f}"
                )
            print(
                f"  mix types {precision['chosen']}, predicted KL {precision['predicted_kl']:.5f}, "
                f"build with its sensitivities {took:.0f} s (from the cache when measured before)"
            )
            print(
                f"ratio KL gguf-mix / llamacpp:{preset} at {size:g} MB: "
                f"{mix['kl_divergence'] / uniform['kl_divergence']:.3f}"
            )


if __name__ == "__main__":
    main()
