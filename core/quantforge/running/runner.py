"""Run a recipe: preflight, build every variant's steps, measure, record.

Preflight checks everything that can be checked without compute (plugins,
options, model folder, data files, optional packages) and raises before the
first step. After that, one failing step or evaluation is recorded as that
variant's failure and the run goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from quantforge.running.measuring import Measurer
from quantforge.running.preflight import Preflight, preflight
from quantforge.running.recipe import RunConfig
from quantforge.running.summary import Reporter, RunSummary
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
    """Executes one run. Steps and measurements are cached across runs in ``cache_dir``."""

    def __init__(
        self,
        config: RunConfig,
        plugins: Plugins | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.config = config
        self.plugins = plugins or load_plugins()
        self.reporter = reporter or Reporter()
        self.cache_dir = config.cache_dir or default_cache_dir()
        self.ctx = RunContext(config, self.plugins, self.reporter, self.cache_dir)

    def run(self) -> RunSummary:
        plan = preflight(self.config, self.plugins, self.cache_dir)
        for info in self.plugins.errors():
            self.reporter.note(f"plugin {info.name} is not loaded: {info.errors[0]}")
        for note in plan.notes:
            self.reporter.note(note)
        for vplan, why in plan.refused:
            self.reporter.note(f"refused {vplan.spec.name}: {why}")
        output = self.config.output
        run_id = provenance.now().replace(":", "").replace("-", "") + "-" + uuid.uuid4().hex[:6]
        # The executor first, then the texts tokenized (calibration data that is too short
        # fails here): a run that cannot start leaves no run folder behind. Their logs wait
        # in the cache until the run folder exists.
        executor = make_executor(
            self.config.executor,
            self.cache_dir / "staging" / run_id,
            self.config.ray_address,
            self.config.worker_memory,
        )
        try:
            tokens = self._tokenize(executor, plan)
            self.ctx.calibration_rows = self._calibrate(executor, plan)
            output.mkdir(parents=True, exist_ok=True)
            executor.move_to(output / "logs" / run_id)
            store = ResultsStore(output, create=True)
        except BaseException as exc:
            executor.close()
            if isinstance(exc, UsageError):  # said in full; no log to point at
                shutil.rmtree(executor.work_dir, ignore_errors=True)
            raise
        base = plan.base
        store.start_run(
            run_id,
            provenance.now(),
            {"ref": base.ref, "revision": base.revision, "content_hash": base.content_hash},
            {
                **self.config.describe(),
                "eval_text_source": plan.eval_source,
                "base_source": base_source(base.path),
                "notes": plan.notes,
            },
        )
        summary = RunSummary(
            run_id, output, "running", {}, {}, refused={p.spec.name: w for p, w in plan.refused}
        )
        try:
            builder = Builder(self.ctx)
            failures = builder.build(executor, plan, summary)
            builder.record(store, run_id, plan, failures, summary)
            measurer = Measurer(self.ctx)
            references = measurer.references(executor, plan, tokens)
            measurer.evaluate(executor, store, run_id, plan, tokens, references, summary)
            record_estimates(self.ctx, store, run_id, plan, summary)
        except BaseException:
            with contextlib.suppress(Exception):  # a full disk may refuse this write too
                store.finish_run(run_id, provenance.now(), "aborted")
            store.close()
            raise
        finally:
            executor.close()
        summary.status = "partial" if summary.failed() or summary.refused else "ok"
        store.finish_run(run_id, provenance.now(), summary.status)
        store.close()
        return summary

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
            self.reporter.stage(what, 1)
            job = {**job, "kind": kind, "resources": {"CPU": 1}}  # text and a tokenizer only
            outcome = executor.run(job, kind, self.config.step_timeout)
            if outcome.returncode == worker.INPUT_ERROR:  # the data, in the worker's words
                raise UsageError(f"{what} failed: {_worker_message(outcome)}")
            if outcome.failure or not outcome.result_path.exists():
                raise QuantforgeError(
                    f"{what} failed: {_worker_message(outcome)}", hint=f"see {outcome.log_path}"
                )
            atomic_copy(outcome.result_path, path)
        self.reporter.advance(kind, "ok")
        return path

    def _tokenize(self, executor: Executor, plan: Preflight) -> Path:
        """Tokenize the evaluation text once with the base tokenizer."""
        text = plan.eval_text.read_bytes()
        key = digest("tokens", hashlib.sha256(text).hexdigest(), plan.base.content_hash)
        job = {"model_path": str(plan.base.path), "text_path": str(plan.eval_text)}
        return self._prepared(executor, "tokenize", key, job, "tokenizing the evaluation text")

    def _calibrate(self, executor: Executor, plan: Preflight) -> Path | None:
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
        return self._prepared(executor, "calibrate", key, job, "preparing the calibration data")


def run(
    config: RunConfig, plugins: Plugins | None = None, reporter: Reporter | None = None
) -> RunSummary:
    """Run ``config``: see :class:`Runner`."""
    return Runner(config, plugins, reporter).run()
