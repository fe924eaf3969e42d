"""What the parts of one run share (:class:`RunContext`), and the cache keys they use."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.model import artifacts
from quantforge.plugins.manager import Plugins
from quantforge.running import locks
from quantforge.running.planner import VariantPlan
from quantforge.running.preflight import Preflight
from quantforge.running.recipe import RunConfig
from quantforge.running.summary import Reporter


@dataclass
class RunContext:
    """What the parts of one run share: its config, plugins, reporter, cache, and the
    calibration rows once they are prepared."""

    config: RunConfig
    plugins: Plugins
    reporter: Reporter
    cache_dir: Path
    calibration_rows: Path | None = None
    job_resources: dict[str, float] | None = field(default=None, repr=False)

    def artifact_path(self, key: str) -> Path:
        """Where the step with cache key ``key`` writes its artifact."""
        return self.cache_dir / "artifacts" / key

    def variant_path(self, plan: Preflight, vplan: VariantPlan) -> Path:
        """The folder a variant lives in: its last step's artifact, an imported checkpoint,
        or the base itself."""
        if vplan.path is not None:  # an imported checkpoint
            return vplan.path
        return self.artifact_path(vplan.key) if vplan.steps else plan.base.path

    def memory(self, plan: Preflight) -> dict[str, float]:
        """What a job asks an executor for: a CPU, and memory for the model a few times over
        (weights, a copy being written, activations). The base folder is sized once a run."""
        if self.job_resources is None:
            weights = artifacts.folder_bytes(plan.base.path, weights_only=True)
            self.job_resources = {"CPU": 1, "memory": max(3 * weights, 256 * 2**20)}
        return self.job_resources

    def lock(self, name: str, what: str) -> contextlib.AbstractContextManager[None]:
        """Hold the cache lock ``name``; say so when another run holds it."""
        return self.locks([name], what)

    def locks(self, names: list[str], what: str) -> contextlib.AbstractContextManager[None]:
        """Hold the cache locks ``names`` (all or none); say so when another run holds one."""

        def waiting() -> None:
            self.reporter.note(f"another run is {what}; waiting for it to finish")

        return locks.held(self.cache_dir, names, waiting)

    def calibration_record(self, plan: Preflight) -> dict[str, Any] | None:
        """The calibration data as a variant's provenance records it."""
        spec = plan.calibration_spec
        if spec is None or plan.calibration is None:
            return None
        return {**spec.describe(), "fingerprint": plan.calibration}
