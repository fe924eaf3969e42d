"""``quantforge run``, ``quantize`` and ``demo``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantforge.cli.common import calibration_from_args
from quantforge.cli.search import run_search
from quantforge.running.catalogue import load_recipes
from quantforge.running.recipe import RunConfig, check_unique, with_base
from quantforge.running.runner import run as run_config
from quantforge.running.summary import Reporter, RunSummary

# The demo: a real instruct model, measured in PyTorch and llama.cpp, estimated on a Pi 5.
# exit status of a run that ran, but whose preflight refused some variants
REFUSED_EXIT = 3
DEMO_VARIANTS = ["base", "rtn:int4", "bnb:nf4", "llamacpp:q8_0", "llamacpp:q4_k_m"]
DEMO_TARGETS: dict[str, dict[str, Any]] = {"cpu": {}, "llama.cpp": {}, "rpi5": {}}
TINY_DEMO_VARIANTS = ["base", "rtn:int4", "bnb:nf4", "bnb:int8"]
ALL_METHODS_VARIANTS = [
    *TINY_DEMO_VARIANTS,
    "rtn:int8",
    "bnb:fp4",
    "gptq:int8",
    "gptq:int4",
    "gptq:int4-act",
    "gptq:int3",
    "awq:int4",
    "quanto:int8",
    "quanto:int4",
    "quanto:int2",
    "hqq:int8",
    "hqq:int4",
    "hqq:int3",
    "hqq:int2",
    "torchao:int8",
    "torchao:int8-dyn",
    "torchao:int4",
    "qlora:nf4",
]
TASKS_DEMO_VARIANTS = [
    "base",
    "rtn:int8",
    "quanto:int2",
    "hqq:int1",
    "llamacpp:q8_0",
    "llamacpp:q2_k",
]
# Mixed precision: the first and last blocks at 8 bits, the rest at 4.
MIXED = {"overrides": r"layers\.0\.=8;layers\.3\.=8"}


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RichReporter(Reporter):
    """Draws each stage as a rich progress bar, and a long step's own progress under it.

    With ``as_json`` a step's progress also goes to stderr as one JSON object a line
    (``{"event": "progress", ...}``), for programs that drive quantforge.
    """

    def __init__(self, as_json: bool = False) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.as_json = as_json
        self._bars: Any = None
        self.task: Any = None
        self.inner: dict[str, Any] = {}

    def stage(self, title: str, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.close()
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._bars.start()
        self.task = self._bars.add_task(title, total=total)

    def advance(self, label: str, status: str) -> None:
        if self._bars is not None:
            inner = self.inner.pop(label, None)
            if inner is not None:
                self._bars.remove_task(inner)
            self._bars.advance(self.task)
            # a variant a target does not run is expected: the results table names them once;
            # a variant that failed to build is not measured (skipped): its failure was said
            if status not in ("ok", "cached", "not runnable", "skipped"):
                self._bars.console.print(f"  {label}: {status}")

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]{text}[/yellow]")

    def progress(
        self, label: str, done: int, total: int, unit: str, elapsed: float, eta: float | None
    ) -> None:
        if self.as_json:
            record = {
                "event": "progress",
                "step": label,
                "done": done,
                "total": total,
                "unit": unit,
                "elapsed_s": elapsed,
                "eta_s": eta,
            }
            print(json.dumps(record), file=sys.stderr, flush=True)
        if self._bars is None:
            return
        left = f", ~{_duration(eta)} left" if eta is not None else ""
        text = f"  {label}: {done}/{total} {unit}, {_duration(elapsed)}{left}"
        task = self.inner.get(label)
        if task is None:
            self.inner[label] = self._bars.add_task(text, total=total or None, completed=done)
        else:
            self._bars.update(task, description=text, total=total or None, completed=done)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self.inner.clear()


def _execute(config: RunConfig, as_json: bool) -> int:
    from quantforge.cli.results import print_tables, results_json

    reporter = RichReporter(as_json)
    try:
        summary: RunSummary = run_config(config, reporter=reporter)
    finally:
        reporter.close()
    if as_json:
        print(json.dumps(results_json(config.output), indent=2, default=str))
    else:
        print_tables(config.output)
        reporter.console.print(
            f"{summary.steps_run} steps run, {summary.steps_cached} cached; "
            f"{summary.evaluations_run} measurements run, {summary.evaluations_cached} cached."
        )
    return _report(reporter, summary)


def _report(reporter: RichReporter, summary: RunSummary) -> int:
    """Say what failed and what was refused; the exit status."""
    from rich.markup import escape

    failures = summary.failures()
    if failures:
        for name, why in failures.items():
            reporter.console.print(
                f"[red]Failed {escape(name)}[/red]: {escape(why)}", soft_wrap=True
            )
        reporter.console.print(
            f"[red]Failed: {', '.join(failures)}[/red] (the logs named above and the results "
            "store have the details)"
        )
        return 1
    if summary.refused:
        for name, why in summary.refused.items():
            reporter.console.print(
                f"[yellow]Refused {name}[/yellow]: {escape(why)}", soft_wrap=True
            )
        reporter.console.print(
            f"{len(summary.refused)} variant(s) refused in preflight, the rest ran "
            "(exit status 3; `quantforge methods --model PATH` lists what supports this model)"
        )
        return REFUSED_EXIT
    return 0


def run_command(args: argparse.Namespace) -> int:
    configs = [_with_flags(config, args) for config in load_recipes(args.recipe, output=args.out)]
    if len(configs) > 1:
        return _execute_catalogue(configs, args.json)
    config = configs[0]
    if config.search is not None:
        return run_search(config, args.json)
    return _execute(config, args.json)


def _with_flags(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``config`` with what the command line sets over the recipe."""
    if args.executor:
        config = replace(config, executor=args.executor)
    if args.allow_pickle:
        config = replace(config, allow_pickle=True)
    if args.worker_memory:
        config = replace(config, worker_memory=args.worker_memory)
    if args.ray_address:
        config = replace(config, ray_address=args.ray_address)
    if args.jobs:
        config = replace(config, jobs=args.jobs)
    return config


def _execute_catalogue(configs: list[RunConfig], as_json: bool) -> int:
    """Run every model's variants as one graph, then report each model as ``run`` does."""
    from quantforge.cli.results import print_tables, results_json
    from quantforge.running.runner import run_many

    reporter = RichReporter(as_json)
    try:
        summaries = run_many(configs, reporter=reporter)
    finally:
        reporter.close()
    if as_json:
        print(
            json.dumps(
                {str(c.model): results_json(c.output) for c in configs}, indent=2, default=str
            )
        )
    codes = []
    for config, summary in zip(configs, summaries, strict=True):
        if not as_json:
            reporter.console.print(f"[bold]{config.model}[/bold] -> {config.output}")
            print_tables(config.output)
        codes.append(_report(reporter, summary))
    if not as_json:
        done = sum(s.steps_run for s in summaries), sum(s.steps_cached for s in summaries)
        measured = sum(s.evaluations_run for s in summaries)
        cached = sum(s.evaluations_cached for s in summaries)
        reporter.console.print(
            f"{len(configs)} models: {done[0]} steps run, {done[1]} cached; "
            f"{measured} measurements run, {cached} cached."
        )
    return 1 if 1 in codes else REFUSED_EXIT if REFUSED_EXIT in codes else 0


def _target_arg(text: str) -> tuple[str, dict[str, str]]:
    """``rpi5`` or ``rpi5,context=2048``: a target and its options."""
    return _named_options(text, "--target")


def _named_options(text: str, flag: str) -> tuple[str, dict[str, str]]:
    """``NAME[,OPTION=VALUE...]`` of ``--target`` and ``--evaluator``."""
    from quantforge.running.planner import parse_option_pairs

    name, *pairs = text.split(",")
    return name.strip(), parse_option_pairs(pairs, f"{flag} {text!r}")


def quantize_command(args: argparse.Namespace) -> int:
    from quantforge.errors import UsageError
    from quantforge.running.planner import VariantSpec, check_variant_name, parse_variant

    variants = [parse_variant(v) for v in args.variants]
    for item in args.imports or []:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise UsageError(f"--import {item!r} is not NAME=PATH")
        variants.append(VariantSpec(check_variant_name(name), source=path))
    if not variants:
        raise UsageError(
            "nothing to do", hint="give at least one -v METHOD[:PRESET] or --import NAME=PATH"
        )
    config = RunConfig(
        model=args.model,
        revision=args.revision,
        variants=check_unique(with_base(variants)),
        output=args.out,
        targets=dict(_target_arg(t) for t in (args.targets or ["cpu"])),
        evaluators=dict(_named_options(e, "--evaluator") for e in args.evaluators)
        if args.evaluators
        else None,
        eval_text=args.eval_text,
        calibration=calibration_from_args(args),
        step_timeout=args.step_timeout,
        executor=args.executor or "local",
        ray_address=args.ray_address,
        allow_pickle=args.allow_pickle,
        worker_memory=args.worker_memory,
        jobs=args.jobs,
    )
    return _execute(config, args.json)


def demo_config(model: Path, output: Path, all_methods: bool = False) -> RunConfig:
    """The tiny-model demo (``--tiny``), or every method on the tiny model (``--all-methods``)."""
    from quantforge.running.planner import VariantSpec, parse_variant

    names = ALL_METHODS_VARIANTS if all_methods else TINY_DEMO_VARIANTS
    variants = [parse_variant(v) for v in names]
    if all_methods:  # GPTQ, AWQ and QLoRA calibrate on the tiny model's built-in text
        variants.append(VariantSpec("gptq-int4-mixed", "gptq", "int4", MIXED))
        variants.append(VariantSpec("rtn-int4-mixed", "rtn", "int4", MIXED))
    return RunConfig(
        model=str(model),
        variants=variants,
        output=output,
        evaluators={
            "size": {},
            "speed": {"prompt_tokens": 128, "new_tokens": 33, "repeats": 3},
            "memory": {},
            "perplexity": {"window": 256, "stride": 128, "max_tokens": 2048},
            "kl": {"window": 256, "stride": 128, "max_tokens": 2048},
        },
    )


# Windows over the prose for the real model: 1,024 tokens scored, 512 of context at most.
REAL_WINDOWS = {"window": 512, "stride": 256, "max_tokens": 1024}


def real_demo_config(model: Path, output: Path) -> RunConfig:
    """The default demo: SmolLM2-135M-Instruct, 4-bit in PyTorch and GGUF, on English prose."""
    from quantforge.running.planner import parse_variant

    return RunConfig(
        model=str(model),
        variants=[parse_variant(v) for v in DEMO_VARIANTS],
        output=output,
        targets=dict(DEMO_TARGETS),
        evaluators={
            "size": {},
            "speed": {"prompt_tokens": 128, "new_tokens": 33, "repeats": 2},
            "memory": {},
            "perplexity": dict(REAL_WINDOWS),
            "kl": dict(REAL_WINDOWS),
        },
    )


def tasks_demo_config(model: Path, output: Path) -> RunConfig:
    """The task demo: a tiny model trained to call tools, from 8-bit to 2-bit in PyTorch and
    llama.cpp, scored on the built-in tool-calling cases and on two lm-eval tasks over
    them (local files), beside size, speed and quality against the base."""
    from quantforge_tasks.synthetic import LMEVAL_TASKS, training_text, write_lmeval_tasks

    from quantforge.running.builtin_texts import builtin_text_file
    from quantforge.running.planner import parse_variant
    from quantforge.running.runner import default_cache_dir

    cache = default_cache_dir()
    eval_text = builtin_text_file(cache, "toolcalls-eval.txt", training_text(400, seed=7))
    tasks = write_lmeval_tasks(cache / "lmeval-tasks")
    return RunConfig(
        model=str(model),
        variants=[parse_variant(v) for v in TASKS_DEMO_VARIANTS],
        output=output,
        targets={"cpu": {}, "llama.cpp": {}},
        eval_text=eval_text,
        evaluators={
            "size": {},
            "speed": {"prompt_tokens": 64, "new_tokens": 17, "repeats": 1},
            "perplexity": {"window": 128, "stride": 64, "max_tokens": 4096},
            "kl": {"window": 128, "stride": 64, "max_tokens": 4096},
            "toolcalls": {},
            "lmeval": {"tasks": "+".join(LMEVAL_TASKS), "include_path": str(tasks)},
        },
    )


def demo_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    if args.tasks or args.tiny or args.all_methods:
        from quantforge.testing.tiny_model import TOOLCALL_MODEL, build_tiny_model

        spec = TOOLCALL_MODEL if args.tasks else None
        with console.status("building the tiny demo model (cached after the first time)...") as s:
            model = build_tiny_model(spec, log=lambda msg: s.update(f"tiny model: {msg}"))
        console.print(f"tiny model: {model}")
        if args.tasks:
            config = tasks_demo_config(model, args.out)
        else:
            config = demo_config(model, args.out, args.all_methods)
    else:
        from quantforge.testing.real_model import REAL_MODELS, real_model

        spec_real = REAL_MODELS["smollm2-135m-instruct"]
        with console.status(f"preparing {spec_real.title} (cached after the first time)...") as s:
            model = real_model(log=lambda msg: s.update(f"{spec_real.title}: {msg}"))
        console.print(f"{spec_real.describe()}: {model}")
        config = real_demo_config(model, args.out)
    if args.executor:
        config = replace(config, executor=args.executor)
    code = _execute(config, args.json)
    if code == 0 and args.serve:
        from quantforge.cli.space import serve

        serve(args.out, args)
    return code
