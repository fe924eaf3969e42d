"""Per-target recommendations from a finished run: the smallest variant that meets the
constraints on each target (measured targets by measurement, device profiles by estimate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quantforge.choosing.search import figures_text, measured_values, violations
from quantforge.running.constraints import Constraints

# What cards and the Space recommend by when nobody said: the issue's own example budget.
DEFAULT_CONSTRAINTS = Constraints(target="", max_kld=0.03)


@dataclass(frozen=True)
class Recommendation:
    """The answer for one target: ``variant`` is ``None`` when none meets the constraints."""

    target: str
    measured: bool
    variant: str | None
    figures: dict[str, float] = field(default_factory=dict)
    why_not: dict[str, str] = field(default_factory=dict)  # other variants -> what they miss

    def line(self) -> str:
        kind = "measured" if self.measured else "estimate from a device profile"
        if self.variant is None:
            closest = "; ".join(f"{v}: {why}" for v, why in list(self.why_not.items())[:3])
            return f"{self.target} ({kind}): no variant meets it ({closest})"
        return f"{self.target} ({kind}): {self.variant}: {figures_text(self.figures)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "measured": self.measured,
            "variant": self.variant,
            "figures": self.figures,
            "why_not": self.why_not,
        }


def recommend(
    facts: Any, constraints: Constraints, targets: list[str] | None = None
) -> list[Recommendation]:
    """For each target of the run (or of ``targets``), the smallest variant that meets
    ``constraints`` (its ``target`` field is ignored)."""
    from quantforge.errors import UnknownNameError

    constraints.check(require_one=False)
    measured, estimated = facts.targets("measured"), facts.targets("estimated")
    known = measured + estimated
    for name in targets or []:
        if name not in known:
            raise UnknownNameError("target of this run", name, known)
    out = []
    for target in targets or known:
        on_device = target in measured
        passing: list[tuple[float, str, dict[str, float]]] = []
        why_not: dict[str, str] = {}
        for v in facts.variants:
            measurer = target if on_device else facts.measuring_target(v.name)
            if (
                measurer is None
                or facts.value(v.name, target, "fits" if not on_device else "size_mb") is None
            ):
                continue  # the target does not run it, or it was not measured there
            m = measured_values(facts, v.name, measurer, target, on_device)
            lost = violations(constraints, m, target, on_device)
            if lost:
                why_not[v.name] = "; ".join(lost)
            else:
                passing.append((m.get("size_mb", float("inf")), v.name, m))
        if passing:
            _, name, figures = min(passing, key=lambda p: (p[0], p[1]))
            out.append(Recommendation(target, on_device, name, figures, why_not))
        else:
            out.append(Recommendation(target, on_device, None, {}, why_not))
    return out
