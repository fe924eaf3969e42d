"""Estimates on device profiles: fit checks and roofline decode speeds of every built
variant, recorded as estimated rows (never as measurements).
"""

from __future__ import annotations

import platform

from quantforge import __version__ as quantforge_version
from quantforge.devices.footprint import footprint_of
from quantforge.devices.profiles import DeviceProfile
from quantforge.errors import QuantforgeError
from quantforge.running import provenance
from quantforge.running.context import RunContext
from quantforge.running.preflight import Preflight
from quantforge.running.summary import RunSummary
from quantforge.store.results import ResultsStore


def record_estimates(
    ctx: RunContext, store: ResultsStore, run_id: str, plan: Preflight, summary: RunSummary
) -> None:
    """Fit checks and decode estimates of every built variant on every device profile."""
    profiles = [
        (name, target, opts)
        for name, (target, opts) in plan.targets.items()
        if isinstance(target, DeviceProfile)
    ]
    for vplan in plan.plans:
        name = vplan.spec.name
        if summary.variants[name] != "ok":
            continue
        for tname, profile, opts in profiles:
            when = provenance.now()
            reason = plan.not_runnable.get((name, tname))
            if reason:
                store.record_evaluation(run_id, when, name, tname, "not-runnable", error=reason)
                summary.evaluations[(name, tname)] = f"not runnable: {reason}"
                continue
            try:
                footprint = footprint_of(ctx.variant_path(plan, vplan))
                report = profile.fit(footprint, int(opts["context"]))
            except QuantforgeError as exc:
                store.record_evaluation(run_id, when, name, tname, "failed", error=str(exc))
                summary.evaluations[(name, tname)] = f"failed: {exc}"
                continue
            details = {**report.as_dict(), "source": profile.source}
            rows = [
                {
                    "metric": metric,
                    "value": value,
                    "unit": unit,
                    "better": better,
                    "details": details,
                    "evaluator": "fit",
                    "evaluator_version": "1",
                    "kind": "estimated",
                    "provenance": {
                        "hardware": profile.hardware(),
                        "python": platform.python_version(),
                        "libraries": {"quantforge": quantforge_version},
                        "dataset_fingerprint": "",
                        "seed": ctx.config.seed,
                        "base_revision": plan.base.revision or f"sha256:{plan.base.content_hash}",
                        "run_id": run_id,
                        "measured_at": when,
                    },
                }
                for metric, value, unit, better in (
                    ("fits", float(report.fits), "", "higher"),
                    ("needed_mb", report.needed_bytes / 2**20, "MiB", "lower"),
                    ("est_decode_tps", report.decode_tps, "tokens/s", "higher"),
                )
            ]
            store.record_evaluation(
                run_id, when, name, tname, "ok", measurements=rows, cached=False
            )
            summary.evaluations[(name, tname)] = "ok"
