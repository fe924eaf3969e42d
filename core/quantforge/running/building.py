"""Building variants: each step a worker runs once, its artifact kept in the cache."""

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
from quantforge.running.planner import VariantPlan
from quantforge.running.preflight import Preflight
from quantforge.running.summary import RunSummary
from quantforge.store.results import ResultsStore


class Builder:
    """Builds every variant's steps that the cache does not hold, grouped by input, under
    the cache's locks, and records each variant's outcome in the store."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def build(self, executor: Executor, plan: Preflight, summary: RunSummary) -> dict[str, str]:
        """Run every step not already cached; return failure reasons by step key."""
        by_depth: dict[int, dict[str, tuple[VariantPlan, int]]] = defaultdict(dict)
        for vplan in plan.plans:
            for i, step in enumerate(vplan.steps):
                by_depth[i].setdefault(step.key, (vplan, i))
        failures: dict[str, str] = {}
        total = sum(len(s) for s in by_depth.values())
        if total:
            self.ctx.reporter.stage("building variants", total)
        for depth in sorted(by_depth):
            groups: dict[str, list[tuple[VariantPlan, int]]] = defaultdict(list)
            for key, (vplan, i) in by_depth[depth].items():
                step = vplan.steps[i]
                if artifacts.is_complete(self.ctx.artifact_path(key)):
                    summary.steps_cached += 1
                    self.ctx.reporter.advance(f"{vplan.spec.name}: {step.method}", "cached")
                    continue
                previous = vplan.steps[i - 1].key if i else "base"
                if previous in failures:
                    failures[key] = f"its input step failed: {failures[previous]}"
                    self.ctx.reporter.advance(f"{vplan.spec.name}: {step.method}", "failed")
                    continue
                groups[previous].append((vplan, i))
            for members in groups.values():
                self._build_group(executor, plan, members, failures, summary)
        return failures

    def _build_group(
        self,
        executor: Executor,
        plan: Preflight,
        members: list[tuple[VariantPlan, int]],
        failures: dict[str, str],
        summary: RunSummary,
    ) -> None:
        """Build the steps of one group under their cache locks: a step that another run
        built meanwhile is taken from the cache, and what a killed run left half-written is
        removed before the build starts."""
        keys = [vplan.steps[i].key for vplan, i in members]
        what = "building " + ", ".join(vplan.spec.name for vplan, _ in members)
        with self.ctx.locks([f"artifact-{key}" for key in keys], what):
            todo = []
            for vplan, i in members:
                final = self.ctx.artifact_path(vplan.steps[i].key)
                if artifacts.is_complete(final):
                    summary.steps_cached += 1
                    self.ctx.reporter.advance(
                        f"{vplan.spec.name}: {vplan.steps[i].method}", "cached"
                    )
                    continue
                artifacts.remove_partial(final)
                todo.append((vplan, i))
            try:
                if todo:
                    self._run_group(executor, plan, todo, failures, summary)
            except BaseException:  # interrupted (its worker is gone by now) or a full disk
                for vplan, i in todo:
                    artifacts.remove_partial(self.ctx.artifact_path(vplan.steps[i].key))
                raise

    def _source_of(self, plan: Preflight, vplan: VariantPlan, index: int) -> Artifact:
        if index == 0:
            return Artifact(plan.base.path, "hf", {})
        return artifacts.read_artifact(self.ctx.artifact_path(vplan.steps[index - 1].key))

    def _step_job(self, plan: Preflight, vplan: VariantPlan, i: int) -> dict[str, Any]:
        step = vplan.steps[i]
        source = self._source_of(plan, vplan, i)
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
        executor: Executor,
        plan: Preflight,
        members: list[tuple[VariantPlan, int]],
        failures: dict[str, str],
        summary: RunSummary,
    ) -> None:
        """Steps with one input run in one worker (the input is loaded once). If that worker
        dies, each unfinished step is retried alone, so the failure lands on the right one."""
        job = {
            "kind": "steps",
            "seed": self.ctx.config.seed,
            "calibration_path": str(self.ctx.calibration_rows)
            if self.ctx.calibration_rows
            else None,
            "steps": [self._step_job(plan, vplan, i) for vplan, i in members],
        }
        label = "+".join(vplan.steps[i].method for vplan, i in members)
        gpu = any(
            getattr(self.ctx.plugins.methods.get(vplan.steps[i].method), "needs_gpu", False)
            for vplan, i in members
        )
        job["resources"] = {**self.ctx.memory(plan), **({"GPU": 1} if gpu else {})}
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

        outcome = executor.run(
            job, f"build-{label}", self.ctx.config.step_timeout * len(members), progress
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
        for vplan, i in members:
            step = vplan.steps[i]
            name = f"{vplan.spec.name}: {step.method}"
            line = reported.get(step.key)
            if (
                line is not None
                and line["ok"]
                and artifacts.is_complete(self.ctx.artifact_path(step.key))
            ):
                summary.steps_run += 1
                self.ctx.reporter.advance(name, "ok")
                continue
            artifacts.remove_partial(self.ctx.artifact_path(step.key))
            if line is not None:
                failures[step.key] = (
                    f"{step.method} raised {line['error']} (log: {outcome.log_path})"
                )
                self.ctx.reporter.advance(name, "failed")
            elif len(members) > 1:
                self._run_group(executor, plan, [(vplan, i)], failures, summary)
            else:
                failures[step.key] = (
                    f"{step.method}: {outcome.failure or 'no result'} (log: {outcome.log_path})"
                )
                self.ctx.reporter.advance(name, "failed")

    def record(
        self,
        store: ResultsStore,
        run_id: str,
        plan: Preflight,
        failures: dict[str, str],
        summary: RunSummary,
    ) -> None:
        links = self.ctx.config.output / "variants"
        links.mkdir(exist_ok=True)
        # (plan, status, error): refused in preflight, then built or failed
        outcomes: list[tuple[VariantPlan, str, str | None]] = [
            (vplan, "refused", why) for vplan, why in plan.refused
        ]
        for vplan in plan.plans:
            error = next((failures[s.key] for s in vplan.steps if s.key in failures), None)
            outcomes.append((vplan, "ok" if error is None else "failed", error))
            summary.variants[vplan.spec.name] = "ok" if error is None else f"failed: {error}"
        for vplan, status, error in outcomes:
            path = self.ctx.variant_path(plan, vplan) if status == "ok" else None
            _set_link(links / vplan.spec.name, path)
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
                calibration=self.ctx.calibration_record(plan) if calibrates else None,
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
