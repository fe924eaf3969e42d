"""Building variants: each step a worker runs once, its artifact kept in the cache; the
steps as jobs of the run's graph."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from quantforge.errors import DiskFullError
from quantforge.interfaces import Artifact
from quantforge.model import artifacts
from quantforge.running import provenance
from quantforge.running.context import RunContext
from quantforge.running.executor import Executor
from quantforge.running.graph import Job, Scheduler, Slot
from quantforge.running.planner import VariantPlan
from quantforge.running.preflight import Preflight
from quantforge.running.summary import RunSummary
from quantforge.store.results import ResultsStore

# a step's outcome as a build job reports it: "ok", "cached" or "failed", and why
StepResult = tuple[str, str | None]


class Builder:
    """Turns every variant's steps into build jobs of the run's graph: one job per group of
    steps that share an input (the input is loaded once), after the job that builds that
    input. A job builds what the cache does not hold, under the cache's locks; when a
    variant's last step is done, its outcome goes into the store."""

    def __init__(
        self,
        ctx: RunContext,
        executor: Executor,
        plan: Preflight,
        summary: RunSummary,
    ) -> None:
        self.ctx = ctx
        self.executor = executor
        self.plan = plan
        self.summary = summary
        self.failures: dict[str, str] = {}  # step key -> why it failed

    def units(self) -> int:
        """How many steps the jobs build (each a unit of the run's progress)."""
        return len({s.key for vplan in self.plan.plans for s in vplan.steps})

    def add_jobs(
        self, scheduler: Scheduler, store: ResultsStore, run_id: str, parallel: int = 1
    ) -> dict[str, Job]:
        """Add the build jobs and, per variant, a job that records it once built; return
        the record jobs by variant name (its measurements come after them). Steps that
        share an input are split over up to ``parallel`` jobs (the jobs that may run at
        once), each loading the input once."""
        by_depth: dict[int, dict[str, tuple[VariantPlan, int]]] = defaultdict(dict)
        for vplan in self.plan.plans:
            for i, step in enumerate(vplan.steps):
                by_depth[i].setdefault(step.key, (vplan, i))
        owners: dict[str, Job] = {}  # step key -> the job that builds it
        chains: dict[int, list[tuple[VariantPlan, int]]] = {}  # a job's steps, by id(job)
        for depth in sorted(by_depth):
            groups: dict[str, list[tuple[VariantPlan, int]]] = defaultdict(list)
            for vplan, i in by_depth[depth].values():
                groups[vplan.steps[i - 1].key if i else "base"].append((vplan, i))
            for previous, group in groups.items():
                before = owners.get(previous)
                if before is not None and len(group) == 1 and len(chains[id(before)]) == 1:
                    # the only step after a job's only step: the same worker goes on with
                    # it (an export, then the quantization of what it wrote)
                    ((vplan, i),) = group
                    chains[id(before)].append((vplan, i))
                    before.label += f", then {vplan.spec.name}: {vplan.steps[i].method}"
                    owners[vplan.steps[i].key] = before
                    continue
                shares = min(max(1, parallel), len(group))
                for members in (group[k::shares] for k in range(shares)):
                    steps = list(members)
                    job = self._group_job(steps)
                    chains[id(job)] = steps
                    if before is not None:
                        job.after.append(before)
                    scheduler.add(job)
                    for vplan, i in members:
                        owners[vplan.steps[i].key] = job
        links = self.ctx.config.output / "variants"
        links.mkdir(exist_ok=True)
        for vplan, why in self.plan.refused:
            self._record(store, run_id, vplan, "refused", why)
        records = {}
        for vplan in self.plan.plans:

            def record(vplan: VariantPlan = vplan) -> bool:
                error = next(
                    (self.failures[s.key] for s in vplan.steps if s.key in self.failures), None
                )
                self.summary.variants[vplan.spec.name] = (
                    "ok" if error is None else f"failed: {error}"
                )
                self._record(store, run_id, vplan, "ok" if error is None else "failed", error)
                return False  # nothing to run

            records[vplan.spec.name] = scheduler.add(
                Job(
                    f"record {vplan.spec.name}",
                    None,
                    after=[owners[s.key] for s in vplan.steps],
                    ready=record,
                )
            )
        return records

    def _group_job(self, members: list[tuple[VariantPlan, int]]) -> Job:
        """The job that builds ``members``: steps that share an input, or a chain of steps
        each the input of the next (``members`` may grow until the graph runs)."""
        todo: list[tuple[VariantPlan, int]] = []
        gpu = any(
            getattr(self.ctx.plugins.methods.get(vplan.steps[i].method), "needs_gpu", False)
            for vplan, i in members
        )
        resources = {**self.ctx.memory(self.plan), **({"GPU": 1} if gpu else {})}

        def ready() -> bool:
            """Drop what the cache holds and what cannot be built (its input failed)."""
            todo.clear()
            for vplan, i in members:
                step = vplan.steps[i]
                name = f"{vplan.spec.name}: {step.method}"
                previous = vplan.steps[i - 1].key if i else "base"
                if artifacts.is_complete(self.ctx.artifact_path(step.key)):
                    self.summary.steps_cached += 1
                    self.ctx.reporter.advance(name, "cached")
                elif previous in self.failures:
                    self.failures[step.key] = f"its input step failed: {self.failures[previous]}"
                    self.ctx.reporter.advance(name, "failed")
                else:
                    todo.append((vplan, i))
            return bool(todo)

        def work(slot: Slot) -> dict[str, StepResult]:
            return self._build_group(list(todo), resources, slot)

        def done(results: dict[str, StepResult]) -> None:
            for vplan, i in todo:
                step = vplan.steps[i]
                status, error = results[step.key]
                if status == "cached":
                    self.summary.steps_cached += 1
                elif status == "ok":
                    self.summary.steps_run += 1
                else:
                    self.failures[step.key] = str(error)

        labels = ", ".join(f"{v.spec.name}: {v.steps[i].method}" for v, i in members)
        return Job(
            f"build {labels}",
            work,
            done,
            ready=ready,
            cpus=int(resources.get("CPU", 1)),
            memory=int(resources.get("memory", 0)),
        )

    def _build_group(
        self,
        members: list[tuple[VariantPlan, int]],
        resources: dict[str, float],
        slot: Slot,
    ) -> dict[str, StepResult]:
        """Build the steps of one group under their cache locks: a step that another run
        built meanwhile is taken from the cache, and what a killed run left half-written is
        removed before the build starts."""
        keys = [vplan.steps[i].key for vplan, i in members]
        what = "building " + ", ".join(vplan.spec.name for vplan, _ in members)
        results: dict[str, StepResult] = {}
        with self.ctx.locks([f"artifact-{key}" for key in keys], what):
            todo = []
            for vplan, i in members:
                final = self.ctx.artifact_path(vplan.steps[i].key)
                if artifacts.is_complete(final):
                    results[vplan.steps[i].key] = ("cached", None)
                    self.ctx.reporter.advance(
                        f"{vplan.spec.name}: {vplan.steps[i].method}", "cached"
                    )
                    continue
                artifacts.remove_partial(final)
                todo.append((vplan, i))
            try:
                if todo:
                    results.update(self._run_group(todo, resources, slot))
            except BaseException:  # interrupted (its worker is gone by now) or a full disk
                for vplan, i in todo:
                    artifacts.remove_partial(self.ctx.artifact_path(vplan.steps[i].key))
                raise
        return results

    def _source_of(self, vplan: VariantPlan, index: int) -> Artifact:
        if index == 0:
            return Artifact(self.plan.base.path, "hf", {})
        return artifacts.read_artifact(self.ctx.artifact_path(vplan.steps[index - 1].key))

    def _step_job(self, vplan: VariantPlan, i: int, chained: bool = False) -> dict[str, Any]:
        """What the worker needs for step ``i``; ``chained``: its input is built by an
        earlier step of the same job (the worker reads it once that step is done)."""
        plan = self.plan
        step = vplan.steps[i]
        if chained:
            before = vplan.steps[i - 1].key
            path = self.ctx.artifact_path(before)
            source = Artifact(path, vplan.steps[i - 1].output_format, {"built_by": before})
        else:
            source = self._source_of(vplan, i)
        manifest = {
            "format": step.output_format,
            "key": step.key,
            "base": {
                "ref": plan.base.ref,
                "revision": plan.base.revision,
                "content_hash": plan.base.content_hash,
            },
            "steps": [s.describe() for s in vplan.steps[: i + 1]],
            "calibration": self.ctx.calibration_record(plan) if step.calibration else None,
            "created": provenance.now(),
        }
        return {
            "method": step.method,
            "options": dict(step.options),
            "key": step.key,
            "source": {
                "path": str(source.path),
                "format": source.format,
                "manifest": dict(source.manifest),
            },
            "output": str(self.ctx.artifact_path(step.key)),
            "manifest": manifest,
            "base_path": str(plan.base.path),
        }

    def _run_group(
        self,
        members: list[tuple[VariantPlan, int]],
        resources: dict[str, float],
        slot: Slot,
    ) -> dict[str, StepResult]:
        """Steps with one input, or a chain, run in one worker (the input is loaded once). If
        that worker dies, each unfinished step is retried alone, so the failure lands on the
        right one."""
        keys = {vplan.steps[i].key for vplan, i in members}
        job = {
            "kind": "steps",
            "seed": self.ctx.config.seed,
            "calibration_path": str(self.ctx.calibration_rows)
            if self.ctx.calibration_rows
            else None,
            "steps": [
                self._step_job(vplan, i, chained=i > 0 and vplan.steps[i - 1].key in keys)
                for vplan, i in members
            ],
            "resources": resources,
            **slot.job_fields(),
        }
        label = "+".join(vplan.steps[i].method for vplan, i in members)
        names = {
            vplan.steps[i].key: f"{vplan.spec.name}: {vplan.steps[i].method}"
            for vplan, i in members
        }

        def progress(data: dict[str, Any]) -> None:
            self.ctx.reporter.progress(
                names.get(str(data.get("key")), label),
                int(data.get("done", 0)),
                int(data.get("total", 0)),
                str(data.get("unit", "")),
                float(data.get("elapsed_s", 0.0)),
                None if data.get("eta_s") is None else float(data["eta_s"]),
            )

        outcome = self.executor.run(
            job,
            f"build-{label}",
            self.ctx.config.step_timeout * len(members),
            progress,
            claim=slot.claim,
        )
        reported = {line["key"]: line for line in outcome.lines()}
        full = next((line for line in reported.values() if line.get("disk_full")), None)
        if full is not None:  # every step after this one would fail the same way: stop
            for vplan, i in members:
                artifacts.remove_partial(self.ctx.artifact_path(vplan.steps[i].key))
            raise DiskFullError(
                f"the disk is full: building {label} failed with {full['error']}",
                hint="free space or set QUANTFORGE_CACHE_DIR to a bigger disk, then rerun "
                "the same command: what finished is kept in the cache",
            )
        results: dict[str, StepResult] = {}
        for vplan, i in members:
            step = vplan.steps[i]
            name = f"{vplan.spec.name}: {step.method}"
            line = reported.get(step.key)
            before = results.get(vplan.steps[i - 1].key) if i else None
            if line is None and before is not None and before[0] == "failed":
                results[step.key] = ("failed", f"its input step failed: {before[1]}")
                self.ctx.reporter.advance(name, "failed")
                continue
            if (
                line is not None
                and line["ok"]
                and artifacts.is_complete(self.ctx.artifact_path(step.key))
            ):
                results[step.key] = ("ok", None)
                self.ctx.reporter.advance(name, "ok")
                continue
            artifacts.remove_partial(self.ctx.artifact_path(step.key))
            if line is not None:
                results[step.key] = (
                    "failed",
                    f"{step.method} raised {line['error']} (log: {outcome.log_path})",
                )
                self.ctx.reporter.advance(name, "failed")
            elif len(members) > 1 and not getattr(self.executor, "closed", False):
                results.update(self._run_group([(vplan, i)], resources, slot))
            else:
                results[step.key] = (
                    "failed",
                    f"{step.method}: {outcome.failure or 'no result'} (log: {outcome.log_path})",
                )
                self.ctx.reporter.advance(name, "failed")
        return results

    def _record(
        self,
        store: ResultsStore,
        run_id: str,
        vplan: VariantPlan,
        status: str,
        error: str | None,
    ) -> None:
        """Store a variant's outcome (built, failed or refused) and point its link."""
        path = self.ctx.variant_path(self.plan, vplan) if status == "ok" else None
        _set_link(self.ctx.config.output / "variants" / vplan.spec.name, path)
        calibrates = status != "refused" and any(s.calibration for s in vplan.steps)
        store.record_variant(
            run_id,
            provenance.now(),
            name=vplan.spec.name,
            spec=self._spec_json(vplan),
            method=vplan.method_label,
            bits=vplan.bits,
            format=vplan.format,
            path=str(path) if path is not None else None,
            artifact_key=vplan.key,
            steps=[s.describe() for s in vplan.steps],
            status=status,
            error=error,
            precision=artifacts.read_precision(path) if path is not None else None,
            calibration=self.ctx.calibration_record(self.plan) if calibrates else None,
        )

    @staticmethod
    def _spec_json(vplan: VariantPlan) -> str:
        spec = vplan.spec
        return json.dumps(
            {
                "method": spec.method,
                "preset": spec.preset,
                "options": dict(spec.options),
                "import": spec.source,
            }
        )


def _set_link(link: Path, target: Path | None) -> None:
    """Point ``link`` at ``target`` (or remove it) in one step: a run beside this one that
    writes the same link never sees it missing, and neither fails."""
    if target is None:
        link.unlink(missing_ok=True)
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(link)
