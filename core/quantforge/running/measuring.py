"""Measuring variants: evaluators run on each variant on each measured target, as jobs of
the run's graph."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantforge.interfaces import Target
from quantforge.model import artifacts
from quantforge.running import provenance
from quantforge.running.cache_keys import digest
from quantforge.running.context import RunContext
from quantforge.running.executor import Executor, JobOutcome
from quantforge.running.graph import Job, Scheduler, Slot
from quantforge.running.planner import VariantPlan
from quantforge.running.preflight import Preflight
from quantforge.running.summary import RunSummary
from quantforge.store.results import ResultsStore


class Measurer:
    """Turns the measurements into jobs of the run's graph: the base's reference outputs per
    target, then each built variant on each measured target, each measurement cached by
    its key. The evaluation text's tokens come from a job of the same graph
    (``tokenizing``, whose result ``tokens`` returns), so keys that depend on them are
    worked out as the jobs run; with no ``tokenizing`` job no evaluator reads them (size
    alone) and the measurements name no dataset. A measurement
    with a timing-sensitive evaluator (speed, peak memory) is a ``timed`` job: its timed
    part runs with nothing beside it."""

    def __init__(
        self,
        ctx: RunContext,
        executor: Executor,
        plan: Preflight,
        summary: RunSummary,
        tokens: Callable[[], Path | None],
        tokenizing: Job | None = None,
    ) -> None:
        self.ctx = ctx
        self.executor = executor
        self.plan = plan
        self.summary = summary
        self.tokens = tokens
        self.tokenizing = [tokenizing] if tokenizing is not None else []
        self._fingerprint: str | None = None
        # the target that runs the base for each target's reference (see _add_references)
        self.sources: dict[str, tuple[str, Target, dict[str, Any]]] = {}
        self.reference_jobs: dict[str, Job] = {}  # by the target whose reference it writes
        self.pairs = [
            (vplan, tname)
            for vplan in plan.plans
            for tname, (target, _) in plan.targets.items()
            if target.measured
        ]
        self.timed = any(e.timing_sensitive for e, _, _ in plan.evaluators)

    @property
    def fingerprint(self) -> str:
        """The tokenized evaluation text's fingerprint (once it is tokenized; ``""`` when
        no evaluator reads it)."""
        if self._fingerprint is None:
            path = self.tokens()
            self._fingerprint = (
                str(json.loads(path.read_text())["fingerprint"]) if path is not None else ""
            )
        return self._fingerprint

    def _tokens_path(self) -> str | None:
        path = self.tokens()
        return str(path) if path is not None else None

    def units(self) -> int:
        """Reference runs and measurements: units of the run's progress."""
        sources = {id(job) for job in self.reference_jobs.values()}
        return len(sources) + len(self.pairs)

    def add_jobs(
        self, scheduler: Scheduler, store: ResultsStore, run_id: str, records: dict[str, Job]
    ) -> None:
        """Add the reference jobs, then a measurement job per variant and measured target
        after the variant's record job and that target's reference."""
        self._add_references(scheduler)
        for vplan, tname in self.pairs:
            after = [records[vplan.spec.name], *self.tokenizing]
            if tname in self.reference_jobs:
                after.append(self.reference_jobs[tname])
            scheduler.add(self._measure_job(store, run_id, vplan, tname, after))

    def _reference_path(
        self, tname: str, evaluator: str, options: dict[str, Any], version: str
    ) -> Path:
        """Where the base's reference outputs for ``evaluator`` on ``tname`` are cached."""
        rname, _, topts = self.sources[tname]
        key = digest(
            "reference",
            self.plan.base.identity,
            rname,
            topts,
            evaluator,
            version,
            options,
            self.fingerprint,
        )
        return self.ctx.cache_dir / "references" / key

    def _eval_specs(self, target: str) -> list[dict[str, Any]]:
        return [
            {
                "name": e.name,
                "options": opts,
                "version": version,
                "reference_dir": str(self._reference_path(target, e.name, opts, version))
                if e.needs_reference and target in self.sources
                else None,
            }
            for e, opts, version in self.plan.evaluators
        ]

    def _add_references(self, scheduler: Scheduler) -> None:
        """A job per target that runs the base for the evaluators that compare against it
        (its logits). A target that cannot run the HF base (llama.cpp runs only GGUF)
        compares against the base as run by a target that can: one in the run, else the
        local ``cpu``."""
        plan = self.plan
        if not any(e.needs_reference for e, _, _ in plan.evaluators):
            return
        measured = {n: t for n, t in plan.targets.items() if t[0].measured}
        runs_base = [n for n, (t, _) in measured.items() if t.runs("hf")]
        for tname, (target, topts) in measured.items():
            if target.runs("hf"):
                self.sources[tname] = (tname, target, topts)
            elif runs_base:
                self.sources[tname] = (runs_base[0], *plan.targets[runs_base[0]])
            elif "cpu" in self.ctx.plugins.targets:
                cpu = self.ctx.plugins.targets.get("cpu")
                self.sources[tname] = ("cpu", cpu, cpu.options.resolve("target cpu", {}))
        by_source: dict[str, Job] = {}
        for tname, (rname, source_target, topts) in self.sources.items():
            if rname not in by_source:
                by_source[rname] = scheduler.add(
                    self._reference_job(tname, rname, source_target, topts)
                )
            self.reference_jobs[tname] = by_source[rname]

    def _reference_job(
        self, tname: str, rname: str, source_target: Target, topts: dict[str, Any]
    ) -> Job:
        """The job that runs the base on ``rname`` once to write the references (for
        ``tname`` and every target that shares its source) that the cache does not hold."""
        resources = {**self.ctx.memory(self.plan), **source_target.resources()}

        def work(slot: Slot) -> str | None:
            wanted = [
                (self._reference_path(tname, e.name, opts, version), e.name, opts, version)
                for e, opts, version in self.plan.evaluators
                if e.needs_reference
            ]
            names = [f"reference-{path.name}" for path, *_ in wanted]
            with self.ctx.locks(names, f"computing the base's reference outputs on {rname}"):
                todo = [
                    {"name": e, "options": opts, "version": v, "reference_dir": str(path)}
                    for path, e, opts, v in wanted
                    if not path.exists()
                ]
                for item in todo:  # what a killed run left half-written
                    artifacts.remove_partial(Path(str(item["reference_dir"])))
                if not todo:
                    return None
                job = {
                    "kind": "evaluate",
                    "mode": "reference",
                    "target": rname,
                    "target_options": topts,
                    "artifact": {"path": str(self.plan.base.path), "format": "hf", "manifest": {}},
                    "producer": None,
                    "evaluators": todo,
                    "tokens_path": self._tokens_path(),
                    "seed": self.ctx.config.seed,
                    "base_model": str(self.plan.base.path),
                    "resources": resources,
                    **slot.job_fields(),
                }
                outcome = self.executor.run(
                    job, f"reference-{rname}", self.ctx.config.step_timeout, claim=slot.claim
                )
            if outcome.failure:
                return (
                    f"reference run on {rname} failed: {outcome.failure} (log: {outcome.log_path})"
                )
            return None

        def done(failure: str | None) -> None:
            self.ctx.reporter.advance(f"base on {rname}", "ok" if failure is None else "failed")
            if failure:
                self.ctx.reporter.note(failure)

        return Job(
            f"reference outputs of the base on {rname}",
            work,
            done,
            after=list(self.tokenizing),
            cpus=int(resources.get("CPU", 1)),
            memory=int(resources.get("memory", 0)),
        )

    def _measure_job(
        self, store: ResultsStore, run_id: str, vplan: VariantPlan, tname: str, after: list[Job]
    ) -> Job:
        """Measure one variant on one target, or take the measurement from the cache (where
        a run beside this one may just have put it)."""
        plan = self.plan
        name = vplan.spec.name
        target, topts = plan.targets[tname]
        resources = {**self.ctx.memory(plan), **target.resources()}

        def ready() -> bool:
            if self.summary.variants.get(name) != "ok":  # not built: nothing to measure
                self.ctx.reporter.advance(f"{name} on {tname}", "skipped")
                return False
            reason = plan.not_runnable.get((name, tname))
            if reason:
                store.record_evaluation(
                    run_id, provenance.now(), name, tname, "not-runnable", error=reason
                )
                self.summary.evaluations[(name, tname)] = f"not runnable: {reason}"
                self.ctx.reporter.advance(f"{name} on {tname}", "not runnable")
                return False
            return True

        def work(slot: Slot) -> tuple[str, str, Any]:
            specs = self._eval_specs(tname)
            seed = self.ctx.config.seed
            key = digest("eval", vplan.key, tname, topts, specs, self.fingerprint, seed)
            cache_file = self.ctx.cache_dir / "measurements" / f"{key}.json"
            with self.ctx.lock(f"measure-{key}", f"measuring {name} on {tname}"):
                if cache_file.exists():
                    return key, "cached", json.loads(cache_file.read_text())
                job = {
                    "kind": "evaluate",
                    "mode": "measure",
                    "target": tname,
                    "target_options": topts,
                    "artifact": {
                        "path": str(self.ctx.variant_path(plan, vplan)),
                        "format": vplan.format,
                        "manifest": {},
                    },
                    "producer": vplan.producer,
                    "evaluators": specs,
                    "tokens_path": self._tokens_path(),
                    "seed": self.ctx.config.seed,
                    "base_model": str(plan.base.path),
                    "cache_dir": str(self.ctx.cache_dir),  # the machine's bandwidth is kept there
                    "resources": resources,
                    **slot.job_fields(),
                }
                outcome = self.executor.run(
                    job, f"measure-{name}-{tname}", self.ctx.config.step_timeout, claim=slot.claim
                )
                if not outcome.failure and outcome.result_path.exists():
                    result = outcome.json()
                    if not result["errors"]:  # kept for the next run, under the lock
                        cache_file.parent.mkdir(parents=True, exist_ok=True)
                        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
                        tmp.write_text(json.dumps({**result, "run_id": run_id}))
                        tmp.replace(cache_file)
                return key, "run", outcome

        def done(result: tuple[str, str, Any]) -> None:
            key, how, value = result
            if how == "cached":
                self._store_measurements(store, run_id, name, tname, key, value, cached=True)
                self.summary.evaluations_cached += 1
                status = "cached"
            else:
                status = self._collect(store, run_id, name, tname, key, value)
                self.summary.evaluations_run += 1
            self.summary.evaluations[(name, tname)] = status
            self.ctx.reporter.advance(f"{name} on {tname}", status.split(":")[0])

        return Job(
            f"measure {name} on {tname}",
            work,
            done,
            after=after,
            ready=ready,
            cpus=int(resources.get("CPU", 1)),
            memory=int(resources.get("memory", 0)),
            timed=self.timed,
        )

    def _collect(
        self,
        store: ResultsStore,
        run_id: str,
        name: str,
        tname: str,
        key: str,
        outcome: JobOutcome,
    ) -> str:
        if outcome.failure or not outcome.result_path.exists():
            error = f"{outcome.failure or 'no result'} (log: {outcome.log_path})"
            store.record_evaluation(
                run_id, provenance.now(), name, tname, "failed", error=error, eval_key=key
            )
            return f"failed: {error}"
        result = outcome.json()
        self._store_measurements(store, run_id, name, tname, key, result, cached=False)
        if result["errors"]:
            return "partial: " + "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
        return "ok"

    def _store_measurements(
        self,
        store: ResultsStore,
        run_id: str,
        name: str,
        tname: str,
        key: str,
        result: dict[str, Any],
        *,
        cached: bool,
    ) -> None:
        plan = self.plan
        env = result["environment"]
        prov = {
            "hardware": env["hardware"],
            "python": env["python"],
            "libraries": env["libraries"],
            "base_revision": plan.base.revision or f"sha256:{plan.base.content_hash}",
            "dataset_fingerprint": result["dataset_fingerprint"],
            "seed": self.ctx.config.seed,
            "measured_at": result["measured_at"],
            "run_id": result.get("run_id", run_id),
            "memory_bandwidth_gbs": env.get("memory_bandwidth_gbs"),
        }
        rows = [{**m, "provenance": prov} for m in result["measurements"]]
        errors = result.get("errors") or {}
        store.record_evaluation(
            run_id,
            provenance.now(),
            name,
            tname,
            "ok" if not errors else "partial",
            error="; ".join(f"{k}: {v}" for k, v in errors.items()) or None,
            eval_key=key,
            cached=cached,
            measurements=rows,
        )
