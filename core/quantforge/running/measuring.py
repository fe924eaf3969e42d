"""Measuring variants: evaluators run on each variant on each measured target, as jobs of
the run's graph."""

from __future__ import annotations

import json
import os
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
    its key. A measurement with a timing-sensitive evaluator (speed, peak memory) runs with
    nothing else beside it."""

    def __init__(
        self,
        ctx: RunContext,
        executor: Executor,
        plan: Preflight,
        summary: RunSummary,
        tokens: Path,
    ) -> None:
        self.ctx = ctx
        self.executor = executor
        self.plan = plan
        self.summary = summary
        self.tokens = tokens
        self.fingerprint = json.loads(tokens.read_text())["fingerprint"]
        self.references: dict[tuple[str, str], Path] = {}
        self.reference_jobs: dict[str, Job] = {}  # by the target whose reference it writes
        self.pairs = [
            (vplan, tname)
            for vplan in plan.plans
            for tname, (target, _) in plan.targets.items()
            if target.measured
        ]
        self.exclusive = any(e.timing_sensitive for e, _, _ in plan.evaluators)

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
            after = [records[vplan.spec.name]]
            if tname in self.reference_jobs:
                after.append(self.reference_jobs[tname])
            scheduler.add(self._measure_job(store, run_id, vplan, tname, after))

    @staticmethod
    def _eval_specs(
        plan: Preflight, target: str, references: dict[tuple[str, str], Path]
    ) -> list[dict[str, Any]]:
        return [
            {
                "name": e.name,
                "options": opts,
                "version": version,
                "reference_dir": str(references[(target, e.name)])
                if (target, e.name) in references
                else None,
            }
            for e, opts, version in plan.evaluators
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
        sources: dict[str, tuple[str, Target, dict[str, Any]]] = {}
        for tname, (target, topts) in measured.items():
            if target.runs("hf"):
                sources[tname] = (tname, target, topts)
            elif runs_base:
                sources[tname] = (runs_base[0], *plan.targets[runs_base[0]])
            elif "cpu" in self.ctx.plugins.targets:
                cpu = self.ctx.plugins.targets.get("cpu")
                sources[tname] = ("cpu", cpu, cpu.options.resolve("target cpu", {}))
        by_source: dict[str, Job] = {}
        for tname, (rname, source_target, topts) in sources.items():
            wanted = []
            for evaluator, opts, version in plan.evaluators:
                if not evaluator.needs_reference:
                    continue
                key = digest(
                    "reference",
                    plan.base.identity,
                    rname,
                    topts,
                    evaluator.name,
                    version,
                    opts,
                    self.fingerprint,
                )
                path = self.ctx.cache_dir / "references" / key
                self.references[(tname, evaluator.name)] = path
                wanted.append((key, path, evaluator.name, opts, version))
            if rname not in by_source:
                by_source[rname] = scheduler.add(
                    self._reference_job(rname, source_target, topts, wanted)
                )
            self.reference_jobs[tname] = by_source[rname]

    def _reference_job(
        self,
        rname: str,
        source_target: Target,
        topts: dict[str, Any],
        wanted: list[tuple[str, Path, str, dict[str, Any], str]],
    ) -> Job:
        """The job that runs the base on ``rname`` once to write the references ``wanted``
        names that the cache does not hold."""
        resources = {**self.ctx.memory(self.plan), **source_target.resources()}

        def work(slot: Slot) -> str | None:
            names = [f"reference-{key}" for key, *_ in wanted]
            with self.ctx.locks(names, f"computing the base's reference outputs on {rname}"):
                todo = [
                    {"name": e, "options": opts, "version": v, "reference_dir": str(path)}
                    for _, path, e, opts, v in wanted
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
                    "tokens_path": str(self.tokens),
                    "seed": self.ctx.config.seed,
                    "base_model": str(self.plan.base.path),
                    "resources": resources,
                    **slot.job_fields(),
                }
                outcome = self.executor.run(job, f"reference-{rname}", self.ctx.config.step_timeout)
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
        specs = self._eval_specs(plan, tname, self.references)
        key = digest("eval", vplan.key, tname, topts, specs, self.fingerprint, self.ctx.config.seed)
        cache_file = self.ctx.cache_dir / "measurements" / f"{key}.json"
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

        def work(slot: Slot) -> tuple[str, Any]:
            with self.ctx.lock(f"measure-{key}", f"measuring {name} on {tname}"):
                if cache_file.exists():
                    return "cached", json.loads(cache_file.read_text())
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
                    "tokens_path": str(self.tokens),
                    "seed": self.ctx.config.seed,
                    "base_model": str(plan.base.path),
                    "cache_dir": str(self.ctx.cache_dir),  # the machine's bandwidth is kept there
                    "resources": resources,
                    **slot.job_fields(),
                }
                outcome = self.executor.run(
                    job, f"measure-{name}-{tname}", self.ctx.config.step_timeout
                )
                if not outcome.failure and outcome.result_path.exists():
                    result = outcome.json()
                    if not result["errors"]:  # kept for the next run, under the lock
                        cache_file.parent.mkdir(parents=True, exist_ok=True)
                        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
                        tmp.write_text(json.dumps({**result, "run_id": run_id}))
                        tmp.replace(cache_file)
                return "run", outcome

        def done(result: tuple[str, Any]) -> None:
            how, value = result
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
            exclusive=self.exclusive,
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
