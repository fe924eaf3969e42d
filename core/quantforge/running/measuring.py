"""Measuring variants: evaluators run on each variant on each measured target."""

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
from quantforge.running.planner import VariantPlan
from quantforge.running.preflight import Preflight
from quantforge.running.summary import RunSummary
from quantforge.store.results import ResultsStore


class Measurer:
    """Runs the evaluators on every built variant on every measured target: the base's
    reference outputs first, then each variant, each measurement cached by its key."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

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

    def references(
        self, executor: Executor, plan: Preflight, tokens: Path
    ) -> dict[tuple[str, str], Path]:
        """Run the base once per target for evaluators that compare against it (its logits).

        A target that cannot run the HF base (llama.cpp runs only GGUF) compares against
        the base as run by a target that can: one in the run, else the local ``cpu``.
        """
        fingerprint = json.loads(tokens.read_text())["fingerprint"]
        out: dict[tuple[str, str], Path] = {}
        if not any(e.needs_reference for e, _, _ in plan.evaluators):
            return out
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
        done: set[str] = set()
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
                    fingerprint,
                )
                path = self.ctx.cache_dir / "references" / key
                out[(tname, evaluator.name)] = path
                wanted.append((key, path, evaluator.name, opts, version))
            if rname in done:
                continue
            done.add(rname)
            names = [f"reference-{key}" for key, *_ in wanted]
            with self.ctx.locks(names, f"computing the base's reference outputs on {rname}"):
                todo = [
                    {"name": e, "options": opts, "version": v, "reference_dir": str(path)}
                    for _, path, e, opts, v in wanted
                    if not path.exists()
                ]
                for item in todo:  # what a killed run left half-written
                    artifacts.remove_partial(Path(str(item["reference_dir"])))
                if todo:
                    self._reference_job(executor, plan, tokens, rname, source_target, topts, todo)
        return out

    def _reference_job(
        self,
        executor: Executor,
        plan: Preflight,
        tokens: Path,
        tname: str,
        source_target: Target,
        topts: dict[str, Any],
        todo: list[dict[str, Any]],
    ) -> None:
        """Run the base on ``tname`` once to write the references ``todo`` asks for."""
        self.ctx.reporter.stage(f"reference outputs of the base on {tname}", 1)
        job = {
            "kind": "evaluate",
            "mode": "reference",
            "target": tname,
            "target_options": topts,
            "artifact": {"path": str(plan.base.path), "format": "hf", "manifest": {}},
            "producer": None,
            "evaluators": todo,
            "tokens_path": str(tokens),
            "seed": self.ctx.config.seed,
            "base_model": str(plan.base.path),
        }
        job["resources"] = {**self.ctx.memory(plan), **source_target.resources()}
        outcome = executor.run(job, f"reference-{tname}", self.ctx.config.step_timeout)
        self.ctx.reporter.advance(f"base on {tname}", "ok" if not outcome.failure else "failed")
        if outcome.failure:
            self.ctx.reporter.note(
                f"reference run on {tname} failed: {outcome.failure} (log: {outcome.log_path})"
            )

    def evaluate(
        self,
        executor: Executor,
        store: ResultsStore,
        run_id: str,
        plan: Preflight,
        tokens: Path,
        references: dict[tuple[str, str], Path],
        summary: RunSummary,
    ) -> None:
        fingerprint = json.loads(tokens.read_text())["fingerprint"]
        pairs = [
            (vplan, tname)
            for vplan in plan.plans
            for tname, (target, _) in plan.targets.items()
            if target.measured and summary.variants[vplan.spec.name] == "ok"
        ]
        self.ctx.reporter.stage("measuring", len(pairs))
        for vplan, tname in pairs:
            name = vplan.spec.name
            target, topts = plan.targets[tname]
            reason = plan.not_runnable.get((name, tname))
            if reason:
                store.record_evaluation(
                    run_id, provenance.now(), name, tname, "not-runnable", error=reason
                )
                summary.evaluations[(name, tname)] = f"not runnable: {reason}"
                self.ctx.reporter.advance(f"{name} on {tname}", "not runnable")
                continue
            specs = self._eval_specs(plan, tname, references)
            key = digest("eval", vplan.key, tname, topts, specs, fingerprint, self.ctx.config.seed)
            with self.ctx.lock(f"measure-{key}", f"measuring {name} on {tname}"):
                status = self._measure(
                    executor, store, run_id, plan, vplan, tname, tokens, specs, key
                )
            if status == "cached":
                summary.evaluations_cached += 1
            else:
                summary.evaluations_run += 1
            summary.evaluations[(name, tname)] = status
            self.ctx.reporter.advance(f"{name} on {tname}", status.split(":")[0])

    def _measure(
        self,
        executor: Executor,
        store: ResultsStore,
        run_id: str,
        plan: Preflight,
        vplan: VariantPlan,
        tname: str,
        tokens: Path,
        specs: list[dict[str, Any]],
        key: str,
    ) -> str:
        """Measure one variant on one target, or take the measurement from the cache (where
        a run beside this one may just have put it); return the status."""
        name = vplan.spec.name
        target, topts = plan.targets[tname]
        cached = self.ctx.cache_dir / "measurements" / f"{key}.json"
        if cached.exists():
            result = json.loads(cached.read_text())
            self._store_measurements(store, run_id, name, tname, key, result, plan, cached=True)
            return "cached"
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
            "tokens_path": str(tokens),
            "seed": self.ctx.config.seed,
            "base_model": str(plan.base.path),
        }
        job["resources"] = {**self.ctx.memory(plan), **target.resources()}
        outcome = executor.run(job, f"measure-{name}-{tname}", self.ctx.config.step_timeout)
        return self._collect(store, run_id, name, tname, key, outcome, plan, cached)

    def _collect(
        self,
        store: ResultsStore,
        run_id: str,
        name: str,
        tname: str,
        key: str,
        outcome: JobOutcome,
        plan: Preflight,
        cache_file: Path,
    ) -> str:
        if outcome.failure or not outcome.result_path.exists():
            error = f"{outcome.failure or 'no result'} (log: {outcome.log_path})"
            store.record_evaluation(
                run_id, provenance.now(), name, tname, "failed", error=error, eval_key=key
            )
            return f"failed: {error}"
        result = outcome.json()
        self._store_measurements(store, run_id, name, tname, key, result, plan, cached=False)
        if result["errors"]:
            return "partial: " + "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**result, "run_id": run_id}))
        tmp.replace(cache_file)
        return "ok"

    def _store_measurements(
        self,
        store: ResultsStore,
        run_id: str,
        name: str,
        tname: str,
        key: str,
        result: dict[str, Any],
        plan: Preflight,
        *,
        cached: bool,
    ) -> None:
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
