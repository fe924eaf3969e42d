"""Entry point: argument parsing and the one-line error contract.

Nothing heavy is imported here; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from quantforge import __version__
from quantforge.cli.arguments import (
    COUNT,
    FINITE,
    PORT,
    POSITIVE,
    Parser,
    size_bytes,
)
from quantforge.errors import QuantforgeError, is_disk_full

Handler = Callable[[argparse.Namespace], int]


def _lazy(module: str, function: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        import importlib

        result: int = getattr(importlib.import_module(module), function)(args)
        return result

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="quantforge",
        description="Turn one Hugging Face model into measured, deployable quantized variants.",
        epilog="Start with `quantforge demo`, then `quantforge methods` and `quantforge run RECIPE`.",
    )
    parser.add_argument("--version", action="version", version=f"quantforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="installed plugins, what they register, and what is missing")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--third-party", action="store_true", help="only plugins from other packages")
    p.set_defaults(handler=_lazy("quantforge.cli.listing", "plugins_command"))

    p = sub.add_parser("plugin", help="write a new plugin package to start from")
    plugin = p.add_subparsers(dest="plugin_command", metavar="PLUGIN_COMMAND", required=True)
    p = plugin.add_parser(
        "new",
        help="a ready package: entry point, a documented class, conformance tests, README",
    )
    p.add_argument("name", help="the name it registers (lowercase: myquant)")
    p.add_argument(
        "--kind", required=True, choices=("quantizer", "exporter", "target", "evaluator")
    )
    p.add_argument("--out", type=Path, help="the folder to write (default: ./quantforge-NAME)")
    p.set_defaults(handler=_lazy("quantforge.cli.plugin_new", "plugin_new_command"))

    for name, text in (
        ("methods", "quantizers and exporters, with their options"),
        ("targets", "device targets"),
        ("evaluators", "evaluators and their options"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="print JSON")
        if name == "methods":
            p.add_argument(
                "--model",
                type=Path,
                metavar="PATH",
                help="check every method's presets against this model folder: which support "
                "it, which runtimes run each, and why the others refuse (no compute)",
            )
        p.set_defaults(handler=_lazy("quantforge.cli.listing", f"{name}_command"))

    p = sub.add_parser("run", help="run a TOML recipe: build, measure and record every variant")
    p.add_argument("recipe", type=Path)
    p.add_argument("--out", type=Path, help="output folder (default: the recipe's run.output)")
    _executor_arguments(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=_lazy("quantforge.cli.run", "run_command"))

    p = sub.add_parser(
        "quantize", help="ad-hoc run: quantize MODEL into the given variants and measure them"
    )
    p.add_argument("model", help="local model folder or Hub id")
    p.add_argument(
        "-v",
        "--variant",
        action="append",
        default=[],
        dest="variants",
        help="METHOD[:PRESET][,OPTION=VALUE...], e.g. rtn:int4 or bnb:nf4 (repeatable)",
    )
    p.add_argument(
        "--import",
        action="append",
        dest="imports",
        metavar="NAME=PATH",
        help="measure an existing quantized checkpoint too (AutoGPTQ, AutoAWQ, bnb, ...)",
    )
    p.add_argument(
        "--target",
        action="append",
        dest="targets",
        metavar="NAME[,OPTION=VALUE...]",
        help="device target, e.g. cpu or rpi5,context=2048 (repeatable; default: cpu)",
    )
    p.add_argument(
        "--evaluator",
        action="append",
        dest="evaluators",
        metavar="NAME[,OPTION=VALUE...]",
        help="evaluator, e.g. toolcalls or lmeval,tasks=arc_easy (repeatable; default: every "
        "installed one that runs by default: size, speed, memory, perplexity, kl)",
    )
    p.add_argument(
        "--eval-text", type=Path, help="evaluation text file (default: held-out English prose)"
    )
    _calibration_arguments(p)
    p.add_argument("--revision", help="Hub revision of MODEL")
    p.add_argument("--out", type=Path, default=Path("runs/quantize"), help="output folder")
    p.add_argument("--step-timeout", type=POSITIVE, default=3600.0, help="seconds per step")
    _executor_arguments(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=_lazy("quantforge.cli.run", "quantize_command"))

    p = sub.add_parser(
        "search",
        help="the smallest variant that meets your constraints on a target (tries as few as it can)",
    )
    p.add_argument("model", help="local model folder or Hub id")
    p.add_argument(
        "--target", required=True, help="device profile (rpi5, ...) or a measured target (cpu)"
    )
    _constraint_arguments(p)
    p.add_argument(
        "--max-size",
        metavar="SIZE",
        help="size budget (100MB, 0.5GB): answer the lowest KL within it, with per-tensor "
        "mixes where a method builds them (gguf-mix)",
    )
    p.add_argument(
        "--bpw", type=POSITIVE, metavar="BITS", help="size budget in bits per weight, e.g. 4.5"
    )
    p.add_argument("--context", type=COUNT, metavar="TOKENS", help="context the target must hold")
    p.add_argument(
        "--budget-minutes", type=POSITIVE, metavar="MIN", help="stop starting trials after this"
    )
    p.add_argument(
        "--method", action="append", default=[], help="only this method's presets (repeatable)"
    )
    p.add_argument(
        "--eval-text", type=Path, help="evaluation text file (default: held-out English prose)"
    )
    _calibration_arguments(p)
    _pickle_argument(p)
    p.add_argument("--revision", help="Hub revision of MODEL")
    p.add_argument("--out", type=Path, default=Path("runs/search"), help="output folder")
    p.add_argument("--json", action="store_true", help="print the search as JSON")
    p.set_defaults(handler=_lazy("quantforge.cli.search", "search_command"))

    p = sub.add_parser(
        "recommend", help="per target, the smallest variant of a run that meets your constraints"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--target", action="append", help="only this target of the run (repeatable; default: all)"
    )
    _constraint_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_lazy("quantforge.cli.search", "recommend_command"))

    p = sub.add_parser(
        "fit", help="does a model or variant fit on a device, and how fast could it decode there"
    )
    p.add_argument("model", help="model or variant folder, or Hub id (read without its weights)")
    p.add_argument(
        "--target",
        action="append",
        dest="targets",
        metavar="DEVICE",
        help="device profile, e.g. rpi5 (repeatable; default: every profile)",
    )
    p.add_argument(
        "--context",
        type=COUNT,
        metavar="TOKENS",
        help="context length (default: 4096, or the model's maximum if shorter)",
    )
    p.add_argument("--revision", help="Hub revision of MODEL")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(handler=_lazy("quantforge.cli.fit", "fit_command"))

    p = sub.add_parser("results", help="the trade-off table of a run folder")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON (with provenance)")
    p.set_defaults(handler=_lazy("quantforge.cli.results", "results_command"))

    p = sub.add_parser(
        "cards",
        help="Hugging Face model cards (and a size-vs-quality plot) for every variant of a run",
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/cards)")
    p.add_argument(
        "--variant", action="append", metavar="NAME", help="only this variant (repeatable)"
    )
    p.add_argument("--base-model", metavar="REPO_ID", help="the base model's Hub id (metadata)")
    p.add_argument(
        "--namespace", metavar="ORG", help="user or org the variants go to (links and snippets)"
    )
    p.add_argument(
        "--repo-name",
        metavar="SCHEME",
        default="{base}-{method}-{bits}",
        help="repo naming scheme: {base}, {method}, {bits}, {preset}, {variant}",
    )
    p.add_argument("--quantized-by", metavar="NAME", help="who made the variants (metadata)")
    p.add_argument("--license", help="license id (default: the base model card's)")
    p.add_argument("--no-plot", action="store_true", help="leave out the trade-off plot")
    p.set_defaults(handler=_lazy("quantforge.cli.cards", "cards_command"))

    p = sub.add_parser(
        "push", help="publish a run's variants to the Hub: one repo and one commit per variant"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--namespace", required=True, metavar="ORG", help="your user name or an org")
    p.add_argument(
        "--layout",
        choices=["repos", "branches"],
        default="repos",
        help="a repo per variant, or one repo with a branch per variant and the family card on main",
    )
    p.add_argument(
        "--repo-name",
        metavar="SCHEME",
        help="repo naming scheme: {base}, {method}, {bits}, {preset}, {variant} "
        "(default {base}-{method}-{bits}; with --layout branches {base}-quantized)",
    )
    p.add_argument(
        "--gguf-repo",
        metavar="NAME",
        help="put every GGUF variant in this one repo, a file per type (e.g. {base}-GGUF)",
    )
    p.add_argument(
        "--variant", action="append", metavar="NAME", help="only this variant (repeatable)"
    )
    p.add_argument("--private", action="store_true", help="create private repos")
    p.add_argument(
        "--collection", metavar="TITLE", help="group the repos and the base in a collection"
    )
    p.add_argument("--base-model", metavar="REPO_ID", help="the base model's Hub id (metadata)")
    p.add_argument("--quantized-by", metavar="NAME", help="who made the variants (metadata)")
    p.add_argument("--license", help="license id (default: the base model card's)")
    p.add_argument("--overwrite", action="store_true", help="replace a repo's unrelated content")
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be created and uploaded, and stop"
    )
    p.set_defaults(handler=_lazy("quantforge.cli.push", "push_command"))

    p = sub.add_parser("space", help="a Gradio Space to try a run's variants side by side")
    space = p.add_subparsers(dest="space_command", metavar="SPACE_COMMAND", required=True)
    p = space.add_parser("build", help="write a ready Space repo folder for a run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/space)")
    p.add_argument(
        "--namespace",
        metavar="ORG",
        help="read the variants from the Hub repos `quantforge push` made there "
        "(default: from this machine's folders)",
    )
    p.add_argument(
        "--layout", choices=["repos", "branches"], default="repos", help="as given to push"
    )
    p.add_argument("--repo-name", metavar="SCHEME", help="as given to push")
    p.add_argument(
        "--base-model", metavar="REPO_ID", help="the base model's Hub id (the base on the Hub)"
    )
    p.add_argument("--license", help="the Space's license id (default apache-2.0)")
    p.set_defaults(handler=_lazy("quantforge.cli.space", "build_command"))
    p = space.add_parser("push", help="publish a Space folder to the Hub in one commit")
    p.add_argument("space_dir", type=Path)
    p.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Space to create")
    p.add_argument("--private", action="store_true", help="create a private Space")
    p.add_argument("--overwrite", action="store_true", help="replace a Space's unrelated content")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded, and stop")
    p.set_defaults(handler=_lazy("quantforge.cli.space", "push_command"))
    p = space.add_parser("serve", help="run the Space on this machine")
    p.add_argument("path", type=Path, help="a run folder, or a folder made by `space build`")
    _serve_arguments(p)
    p.set_defaults(handler=_lazy("quantforge.cli.space", "serve_command"))

    p = sub.add_parser(
        "demo",
        help="SmolLM2-135M-Instruct -> RTN int4, bnb NF4, GGUF Q8_0 and Q4_K_M -> measured on "
        "cpu and llama.cpp, with a Raspberry Pi 5 estimate",
    )
    p.add_argument("--out", type=Path, default=Path("quantforge-demo"), help="output folder")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the tiny test model instead (fp, RTN int4, bnb NF4, bnb int8; fastest)",
    )
    p.add_argument(
        "--all-methods",
        action="store_true",
        help="every installed method (GPTQ, AWQ, bnb, quanto, HQQ, torchao, RTN, mixed "
        "precision), on the tiny model",
    )
    p.add_argument(
        "--tasks",
        action="store_true",
        help="a tiny model trained to call tools, scored on tool calling and lm-eval tasks "
        "from 8-bit to 2-bit, in PyTorch and llama.cpp",
    )
    p.add_argument(
        "--executor",
        choices=["local", "inline"],
        help="where jobs run: child processes (default) or this process (inline: faster on "
        "the tiny models)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--serve", action="store_true", help="then serve the Space to try the variants")
    _serve_arguments(p)
    p.set_defaults(handler=_lazy("quantforge.cli.run", "demo_command"))

    p = sub.add_parser(
        "gguf-to-hf",
        help="dequantize a GGUF file into a Hugging Face folder that quantforge can start from",
    )
    p.add_argument("gguf", type=Path, help="the .gguf file")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (must not exist)")
    p.set_defaults(handler=_lazy("quantforge.cli.gguf", "gguf_to_hf_command"))
    return parser


def _pickle_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load pickle weights (pytorch_model.bin, *.pt): unpickling runs code, so only "
        "for models from someone you trust (default: refused; convert to safetensors)",
    )


def _executor_arguments(p: argparse.ArgumentParser) -> None:
    _pickle_argument(p)
    p.add_argument(
        "--worker-memory",
        type=size_bytes,
        metavar="SIZE",
        help="cap each worker's address space (RLIMIT_AS), e.g. 8GB: a step that needs more "
        "fails alone instead of taking the machine down (default: no cap)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "inline", "ray"],
        help="where steps run: child processes here (default), this process (inline: no "
        "start-up per job, no isolation; for tiny models and tests), or Ray tasks",
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="an existing Ray cluster's head (default: start a local Ray instance)",
    )
    p.add_argument(
        "--jobs",
        type=COUNT,
        metavar="N",
        help="jobs at once (default: as many as this machine's cores and memory allow, or "
        "every ready job under Ray; 1: one at a time). Speed and memory are always measured "
        "with nothing else running",
    )


def _constraint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-kld", type=FINITE, metavar="KL", help="KL divergence vs the base, at most"
    )
    p.add_argument(
        "--max-ppl-increase", metavar="PCT", help="perplexity increase over the base, e.g. 2%%"
    )
    p.add_argument(
        "--min-decode-tps",
        type=POSITIVE,
        metavar="TPS",
        help="decode tokens/s on the target (an estimate on device profiles)",
    )


def _calibration_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calibration",
        metavar="SOURCE",
        help="calibration data: .txt, .jsonl, or a Hub dataset id",
    )
    p.add_argument(
        "--calibration-samples", type=COUNT, default=128, metavar="N", help="rows (default 128)"
    )
    p.add_argument(
        "--calibration-seq-len",
        type=COUNT,
        default=512,
        metavar="N",
        help="tokens per row (default 512)",
    )
    p.add_argument("--calibration-column", default="text", help="text column of .jsonl / datasets")
    p.add_argument("--calibration-split", default="train", help="split of a Hub dataset")


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=PORT, default=7860, help="port to listen on")
    p.add_argument(
        "--memory-budget-mb",
        type=POSITIVE,
        default=12000,
        help="memory the loaded variants may take together (default 12000: a free CPU Space)",
    )
    p.add_argument("--max-new-tokens", type=COUNT, default=256, help="cap per request")
    p.add_argument("--time-limit", type=POSITIVE, default=90, help="seconds per request")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # unwinds like Ctrl-C, so a running step's worker is killed on the way out
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.handler(args))
    except QuantforgeError as exc:
        if os.environ.get("QUANTFORGE_DEBUG"):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except OSError as exc:
        if not is_disk_full(exc):
            return _bug(exc)
        print(
            f"Error: no space left on device ({exc.filename or exc}); free space or write "
            "to a bigger disk (--out, QUANTFORGE_CACHE_DIR), then rerun the same command: "
            "what finished is kept",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:  # a bug: one line, and how to see more
        if is_disk_full(exc):
            print(
                f"Error: the disk is full ({exc}); free space, then rerun the same command: "
                "what finished is kept",
                file=sys.stderr,
            )
            return 1
        return _bug(exc)


def _bug(exc: BaseException) -> int:
    """Anything unexpected: one line, and how to see the traceback."""
    if os.environ.get("QUANTFORGE_DEBUG"):
        raise exc
    print(
        f"Error: unexpected {type(exc).__name__}: {exc} (set QUANTFORGE_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
