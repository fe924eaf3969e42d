"""First-party evaluators: size on disk, speed, peak memory, perplexity, KL and top-1 vs the base."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from pathlib import Path

from quantforge import (
    Artifact,
    EvalContext,
    Evaluator,
    Measurement,
    Option,
    OptionSet,
    Runtime,
    hookimpl,
)
from quantforge.model.artifacts import folder_bytes
from quantforge.options import OptionValue

MB = 1_000_000

WINDOW_OPTIONS = [
    Option("window", int, 256, "tokens per scoring window", min=8, max=131072),
    Option("stride", int, 128, "tokens newly scored per window", min=1, max=131072),
    Option("max_tokens", int, 4096, "evaluation tokens used at most", min=16),
]


class SizeOnDisk(Evaluator):
    name = "size"
    description = "bytes on disk: whole variant folder and weight files"
    needs_runtime = False
    order = 10

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        return [
            Measurement("size_mb", folder_bytes(artifact.path) / MB, "MB", "lower"),
            Measurement(
                "weights_mb", folder_bytes(artifact.path, weights_only=True) / MB, "MB", "lower"
            ),
        ]


class Speed(Evaluator):
    name = "speed"
    description = (
        "prefill and greedy decode tokens/s with the runtime's KV cache (median of repeats)"
    )
    order = 20
    timing_sensitive = True
    version = "2"  # 2: roofline_pct
    options = OptionSet(
        [
            Option("prompt_tokens", int, 128, "prompt length", min=1, max=131072),
            Option("new_tokens", int, 33, "tokens generated (first one comes from prefill)", min=2),
            Option("repeats", int, 3, "timed runs after one warm-up", min=1, max=100),
        ]
    )

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        assert runtime is not None
        n = int(options["prompt_tokens"])
        prompt = list(context.token_ids[:n])
        if len(prompt) < n:
            raise ValueError(f"evaluation text has {len(prompt)} tokens, prompt_tokens={n}")
        new = int(options["new_tokens"])
        runtime.generate(prompt, new)  # warm-up
        runs = [runtime.generate(prompt, new) for _ in range(int(options["repeats"]))]
        prefill = statistics.median(r.prompt_tokens / r.prefill_seconds for r in runs)
        decode = statistics.median(r.new_tokens / r.decode_seconds for r in runs)
        details = {"prompt_tokens": n, "new_tokens": new, "repeats": len(runs)}
        out = [
            Measurement("prefill_tps", prefill, "tokens/s", "higher", details),
            Measurement("decode_tps", decode, "tokens/s", "higher", details),
        ]
        if context.memory_bandwidth:
            out.extend(roofline(artifact, decode, context.memory_bandwidth))
        return out


def roofline(artifact: Artifact, decode_tps: float, bandwidth: float) -> list[Measurement]:
    """Decode speed as a share of the memory-bandwidth roofline: each token reads every
    weight once, so ``bandwidth / weight bytes`` tokens a second is the most any runtime
    gets on this machine (the KV cache and activations, small at these lengths, left out;
    an embedding table read one row a token makes the true ceiling a little higher)."""
    weights = folder_bytes(artifact.path, weights_only=True)
    if not weights:  # no weight files to read: no roofline
        return []
    ceiling = bandwidth / weights
    details = {
        "bandwidth_gbs": bandwidth / 1e9,
        "weights_bytes": weights,
        "roofline_tps": ceiling,
        "decode_tps": decode_tps,
    }
    return [Measurement("roofline_pct", 100 * decode_tps / ceiling, "%", "higher", details)]


def peak_rss_bytes() -> int:
    """High-water RSS of this process's address space.

    ``VmHWM`` belongs to the address space made at exec; ``ru_maxrss`` would not do:
    Linux carries it over from the parent across fork and exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory(Evaluator):
    name = "memory"
    description = (
        "peak RSS of the process that loaded and ran the variant, and the part the model added"
    )
    order = 30
    timing_sensitive = True

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        peak = peak_rss_bytes()
        details = {
            "note": "peak while loading the variant and running the evaluators before this one"
        }
        out = [Measurement("peak_rss_mb", peak / MB, "MB", "lower", details)]
        if context.baseline_rss_bytes:
            added = max(peak - context.baseline_rss_bytes, 0)
            out.append(Measurement("model_memory_mb", added / MB, "MB", "lower", details))
        return out


def _scored(runtime: Runtime, options: Mapping[str, OptionValue], context: EvalContext) -> object:
    from quantforge_metrics.windows import scored_logprobs

    key = ("logprobs", options["window"], options["stride"], options["max_tokens"])
    return context.remember(
        key,
        lambda: scored_logprobs(
            runtime,
            context.token_ids,
            int(options["window"]),
            int(options["stride"]),
            int(options["max_tokens"]),
            context.pause,
        ),
    )


class Perplexity(Evaluator):
    name = "perplexity"
    description = "perplexity on the evaluation text, sliding window"
    order = 40
    options = OptionSet(WINDOW_OPTIONS)

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        from quantforge_metrics.windows import perplexity

        assert runtime is not None
        scored = _scored(runtime, options, context)
        value, count = perplexity(scored)
        details = {"tokens": count, "window": options["window"], "stride": options["stride"]}
        return [Measurement("perplexity", value, "", "lower", details)]


class KLDivergence(Evaluator):
    name = "kl"
    description = "KL divergence from the base model's next-token distribution, and top-1 agreement"
    order = 50
    needs_reference = True
    options = OptionSet(WINDOW_OPTIONS)

    def prepare_reference(
        self,
        runtime: Runtime,
        options: Mapping[str, OptionValue],
        context: EvalContext,
        out_dir: Path,
    ) -> None:
        from quantforge_metrics.windows import save_reference

        save_reference(_scored(runtime, options, context), out_dir)

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        from quantforge_metrics.windows import compare_to_reference

        assert runtime is not None and context.reference_dir is not None
        kl, top1, count = compare_to_reference(
            _scored(runtime, options, context), context.reference_dir
        )
        details = {"tokens": count, "window": options["window"], "stride": options["stride"]}
        return [
            Measurement("kl_divergence", kl, "nats/token", "lower", details),
            Measurement("top1_agreement", top1, "fraction", "higher", details),
        ]


@hookimpl
def register_evaluators(register: Callable[[Evaluator], None]) -> None:
    for evaluator in (SizeOnDisk(), Speed(), PeakMemory(), Perplexity(), KLDivergence()):
        register(evaluator)
