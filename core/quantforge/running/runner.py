"""Run a recipe: preflight, then a graph of jobs (build every variant's steps, measure),
each recorded as it finishes.

Preflight checks everything that can be checked without compute (plugins,
options, model folder, data files, optional packages) and raises before the
first step. After that, one failing step or evaluation is recorded as that
variant's failure and the run goes on. The jobs run as their inputs are ready, as many
at once as the executor's capacity allows (:mod:`quantforge.running.graph`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from quantforge.errors import QuantforgeError, UsageError
from quantforge.plugins.manager import Plugins, load_plugins
from quantforge.running import provenance, worker
from quantforge.running.building import Builder
from quantforge.running.builtin_texts import atomic_copy, base_source
from quantforge.running.cache_keys import digest
from quantforge.running.context import RunContext
from quantforge.running.estimates import record_estimates
from quantforge.running.executor import Executor, JobOutcome
from quantforge.running.executors import make_executor
from quantforge.running.graph import Job, Scheduler, Slot, Span
from quantforge.running.measuring import Measurer
from quantforge.running.preflight import Preflight, preflight
from quantforge.running.recipe import RunConfig
from quantforge.running.summary import LockedReporter, Reporter, RunSummary
from quantforge.store.results import ResultsStore


def default_cache_dir() -> Path:
    """``$QUANTFORGE_CACHE_DIR``, else ``~/.cache/quantforge``: built steps, references,
    measurements and prepared data, shared by every run on this machine."""
    root = os.environ.get("QUANTFORGE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "quantforge"


def _worker_message(outcome: JobOutcome) -> str:
    """The worker's own one-line error when it wrote one, else how it ended."""
    if outcome.result_path.exists():
        try:
            error = outcome.json().get("error")
        except ValueError:
            error = None
        if error:
            return str(error)
    return outcome.failure or "no result"


class Runner:
    """Executes one run, or its part of a catalogue (:func:`run_catalogue`). Steps and
    measurements are cached across runs in ``cache_dir``."""

    def __init__(
        self,
        config: RunConfig,
        plugins: Plugins | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.config = config
        self.plugins = plugins or load_plugins()
        # the run's jobs report from the scheduler's threads
        self.reporter = (
            reporter
            if isinstance(reporter, LockedReporter)
            else LockedReporter(reporter or Reporter())
        )
        self.cache_dir = config.cache_dir or default_cache_dir()
        self.ctx = RunContext(config, self.plugins, self.reporter, self.cache_dir)
        self.plan: Preflight | None = None
        self.tokens: Path | None = None
        self.store: ResultsStore | None = None
        self.summary: RunSummary | None = None
        self.builder: Builder | None = None
        self.measurer: Measurer | None = None

    def run(self) -> RunSummary:
        return run_catalogue([self])[0]

    def check(self) -> Preflight:
        """Preflight: everything that can be checked before any compute."""
        plan = preflight(self.config, self.plugins, self.cache_dir)
        for info in self.plugins.errors():
            self.reporter.note(f"plugin {info.name} is not loaded: {info.errors[0]}")
        for note in plan.notes:
            self.reporter.note(note)
        for vplan, why in plan.refused:
            self.reporter.note(f"refused {vplan.spec.name}: {why}")
        self.plan = plan
        return plan

    def add_preparation(self, scheduler: Scheduler, executor: Executor) -> None:
        """The job that tokenizes the calibration set (cached), before the run folder exists:
        calibration data that is too short stops the run before it leaves anything behind."""
        assert self.plan is not None
        prepared = self._calibration_job(self.plan)
        if prepared is not None:
            scheduler.add(self._preparation_job(executor, "calibrate", *prepared))

    def _preparation_job(
        self, executor: Executor, kind: str, key: str, body: dict[str, Any], what: str
    ) -> Job:
        """A job that runs a preparation job once (see :meth:`_prepared`) and keeps where
        its result is."""

        def work(slot: Slot) -> Path:
            return self._prepared(executor, kind, key, {**body, **slot.job_fields()}, what)

        def done(path: Path) -> None:
            if kind == "tokenize":
                self.tokens = path
            else:
                self.ctx.calibration_rows = path

        return Job(what, work, done)

    def open(self, run_id: str) -> None:
        """Make the output folder and its results store, and start the run there."""
        assert self.plan is not None
        output = self.config.output
        output.mkdir(parents=True, exist_ok=True)
        self.store = ResultsStore(output, create=True)
        base = self.plan.base
        self.store.start_run(
            run_id,
            provenance.now(),
            {"ref": base.ref, "revision": base.revision, "content_hash": base.content_hash},
            {
                **self.config.describe(),
                "eval_text_source": self.plan.eval_source,
                "base_source": base_source(base.path),
                "notes": self.plan.notes,
            },
        )
        self.summary = RunSummary(
            run_id,
            output,
            "running",
            {},
            {},
            refused={p.spec.name: w for p, w in self.plan.refused},
        )

    def add_jobs(self, scheduler: Scheduler, executor: Executor) -> int:
        """Add the jobs that tokenize the evaluation text (when an evaluator reads it), build
        and measure; return how many units of progress they are."""
        assert self.plan and self.store and self.summary
        run_id = self.summary.run_id
        tokenizing = None
        if any(e.needs_runtime or e.needs_reference for e, _, _ in self.plan.evaluators):
            tokenizing = scheduler.add(
                self._preparation_job(executor, "tokenize", *self._tokenize_job(self.plan))
            )
        self.builder = Builder(self.ctx, executor, self.plan, self.summary)
        records = self.builder.add_jobs(
            scheduler, self.store, run_id, parallel=scheduler.capacity.max_jobs
        )
        self.measurer = Measurer(
            self.ctx, executor, self.plan, self.summary, self._tokens, tokenizing
        )
        self.measurer.add_jobs(scheduler, self.store, run_id, records)
        return self.builder.units() + self.measurer.units()

    def _tokens(self) -> Path | None:
        """The tokenized evaluation text (``None``: no evaluator of the run reads it)."""
        return self.tokens

    def finish(self) -> RunSummary:
        """Record the estimates and how the run ended."""
        assert self.plan and self.store and self.summary
        record_estimates(self.ctx, self.store, self.summary.run_id, self.plan, self.summary)
        summary = self.summary
        summary.status = "partial" if summary.failed() or summary.refused else "ok"
        self.store.finish_run(summary.run_id, provenance.now(), summary.status)
        self.store.close()
        self.store = None
        return summary

    def abort(self) -> None:
        """Mark the run aborted (as far as the disk lets us) and close its store."""
        if self.store is None or self.summary is None:
            return
        with contextlib.suppress(Exception):  # a full disk may refuse this write too
            self.store.finish_run(self.summary.run_id, provenance.now(), "aborted")
        self.store.close()
        self.store = None

    def _prepared(
        self, executor: Executor, kind: str, key: str, job: dict[str, Any], what: str
    ) -> Path:
        """Run a preparation job once and keep its result in the cache under ``key`` (a run
        that finds another one preparing the same thing waits for it)."""
        path = self.cache_dir / kind / f"{key}.json"
        if path.exists():
            return path
        with self.ctx.lock(f"{kind}-{key}", what):
            if path.exists():
                return path
            job = {**job, "kind": kind, "resources": {"CPU": 1}}  # text and a tokenizer only
            outcome = executor.run(job, kind, self.config.step_timeout)
            if outcome.returncode == worker.INPUT_ERROR:  # the data, in the worker's words
                raise UsageError(f"{what} failed: {_worker_message(outcome)}")
            if outcome.failure or not outcome.result_path.exists():
                raise QuantforgeError(
                    f"{what} failed: {_worker_message(outcome)}", hint=f"see {outcome.log_path}"
                )
            atomic_copy(outcome.result_path, path)
        return path

    @staticmethod
    def _tokenize_job(plan: Preflight) -> tuple[str, dict[str, Any], str]:
        """Tokenize the evaluation text once with the base tokenizer."""
        text = plan.eval_text.read_bytes()
        key = digest("tokens", hashlib.sha256(text).hexdigest(), plan.base.content_hash)
        job = {"model_path": str(plan.base.path), "text_path": str(plan.eval_text)}
        return key, job, "tokenizing the evaluation text"

    @staticmethod
    def _calibration_job(plan: Preflight) -> tuple[str, dict[str, Any], str] | None:
        """Tokenize the calibration set once with the base tokenizer (cached by fingerprint)."""
        spec = plan.calibration_spec
        if plan.calibration is None or spec is None:
            return None
        key = digest("calibration", plan.calibration, plan.base.content_hash)
        job = {
            "model_path": str(plan.base.path),
            "spec": spec.describe(),
            "fingerprint": plan.calibration,
        }
        return key, job, "preparing the calibration data"


def run_catalogue(runners: list[Runner]) -> list[RunSummary]:
    """Run several runs (a catalogue: one per base model) as one graph of jobs on one
    executor, chosen by the first run's config; each run keeps its own output folder and
    results store. Every run's preflight comes before any compute."""
    first = runners[0].config
    for runner in runners:
        runner.check()
    run_id = provenance.now().replace(":", "").replace("-", "") + "-" + uuid.uuid4().hex[:6]
    outputs = [r.config.output for r in runners]
    logs_root = outputs[0] if len(runners) == 1 else _common_folder(outputs)
    cache_dir = runners[0].cache_dir
    # The executor first, then the calibration data tokenized (data that is too short
    # fails here): a run that cannot start leaves no run folder behind. Their logs wait
    # in the cache until the run folders exist.
    executor = make_executor(
        first.executor,
        cache_dir / "staging" / run_id,
        first.ray_address,
        first.worker_memory,
        shared=tuple(dict.fromkeys([cache_dir, *map(_existing_ancestor, outputs)])),
        jobs=first.jobs,
    )
    capacity = executor.capacity(first.jobs)
    try:
        preparation = Scheduler(capacity, abort=executor.close)
        for runner in runners:
            runner.add_preparation(preparation, executor)
        preparation.run()
        for runner in runners:
            runner.open(run_id)
        executor.move_to(logs_root / "logs" / run_id)
    except BaseException as exc:
        executor.close()
        for runner in runners:
            runner.abort()
        if isinstance(exc, UsageError):  # said in full; no log to point at
            shutil.rmtree(executor.work_dir, ignore_errors=True)
        raise
    scheduler = Scheduler(capacity, abort=executor.close)
    try:
        units = sum(runner.add_jobs(scheduler, executor) for runner in runners)
        if units:
            runners[0].reporter.stage("building and measuring", units)
        scheduler.run()
        summaries = [runner.finish() for runner in runners]
    except BaseException:
        for runner in runners:
            runner.abort()
        raise
    finally:
        executor.close()
        with contextlib.suppress(OSError):
            write_timeline(
                executor.work_dir / "jobs.jsonl", preparation.timeline + scheduler.timeline
            )
    return summaries


def _common_folder(paths: list[Path]) -> Path:
    """The deepest folder above every path in ``paths``."""
    return Path(os.path.commonpath([p.absolute() for p in paths]))


def _existing_ancestor(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists (where it will be made)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_timeline(path: Path, spans: list[Span]) -> None:
    """The run's job timeline, one JSON object a line: what ran, when, on which cores, and
    whether alone."""
    if not path.parent.exists():
        return
    with path.open("w", encoding="utf-8") as fh:
        for span in spans:
            fh.write(json.dumps(dataclasses.asdict(span)) + "\n")


def run(
    config: RunConfig, plugins: Plugins | None = None, reporter: Reporter | None = None
) -> RunSummary:
    """Run ``config``: see :class:`Runner`."""
    return Runner(config, plugins, reporter).run()


def run_many(
    configs: list[RunConfig], plugins: Plugins | None = None, reporter: Reporter | None = None
) -> list[RunSummary]:
    """Run a catalogue of configs (one per base model) as one graph: see
    :func:`run_catalogue`."""
    plugins = plugins or load_plugins()
    shared = LockedReporter(reporter or Reporter())
    return run_catalogue([Runner(config, plugins, shared) for config in configs])
