"""The read model of a run: what one run recorded, read back from its results store.

:class:`RunFacts` is what cards, tables, the search's report, recommendations and the
Space read; :class:`Variant` is one built variant as the store holds it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.errors import ResultsError
from quantforge.interfaces import format_family
from quantforge.store.results import ResultsStore, Row
from quantforge.store.table import COLUMNS, bits_label, column_order


@dataclass(frozen=True)
class Variant:
    """One built variant, as the store records it."""

    name: str
    spec: Mapping[str, Any]
    method: str
    bits: float | None
    format: str
    path: Path | None
    steps: list[dict[str, Any]]
    calibration: Mapping[str, Any] | None
    precision: Mapping[str, Any] | None

    @property
    def family(self) -> str:
        return format_family(self.format)

    @property
    def bits_label(self) -> str:
        return bits_label(self.bits, dict(self.precision) if self.precision else None)

    def spec_text(self) -> str:
        """The ``-v`` argument that builds it again (``rtn:int4,group_size=64``)."""
        if self.name == "base":
            return "base"
        text = str(self.spec.get("method") or self.name)
        if self.spec.get("preset"):
            text += f":{self.spec['preset']}"
        for key, value in (self.spec.get("options") or {}).items():
            text += f",{key}={value}"
        return text


@dataclass
class RunFacts:
    """What a run recorded, indexed for cards."""

    run: Mapping[str, Any]
    config: Mapping[str, Any]
    variants: list[Variant]
    rows: dict[tuple[str, str, str], Row] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> RunFacts:
        store = ResultsStore(run_dir)
        try:
            run = store.latest_run()
            if run is None:
                raise ResultsError(
                    f"{run_dir} holds no finished run", hint="run `quantforge quantize` first"
                )
            variants = [
                Variant(
                    name=v["name"],
                    spec=json.loads(v["spec"]),
                    method=v["method"] or v["name"],
                    bits=v["bits"],
                    format=v["format"],
                    path=Path(v["path"]) if v["path"] else None,
                    steps=v["steps"] or [],
                    calibration=v["calibration"],
                    precision=v["precision"],
                )
                for v in store.variants()
                if v["status"] == "ok"
            ]
            rows = {(m.variant, m.target, m.metric): m for m in store.measurements()}
        finally:
            store.close()
        return cls(run, json.loads(run["config"]), variants, rows)

    @property
    def base_name(self) -> str:
        """The base model's folder or repo name (``tiny-llama``), for repo names and titles."""
        return Path(str(self.config.get("model") or self.run["base_model"])).name

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        from quantforge.errors import UnknownNameError

        raise UnknownNameError("variant", name, [v.name for v in self.variants])

    def targets(self, kind: str) -> list[str]:
        """Targets with rows of ``kind`` (``measured`` or ``estimated``), in run order."""
        found = {t for (_, t, _), r in self.rows.items() if r.kind == kind}
        ordered = [t for t in self.config.get("targets", {}) if t in found]
        return ordered + sorted(found - set(ordered))

    def value(self, variant: str, target: str, metric: str) -> float | None:
        row = self.rows.get((variant, target, metric))
        return None if row is None else row.value

    def task_metrics(self) -> list[str]:
        """Metrics outside the standard columns (task scores from task evaluators)."""
        known = set(COLUMNS) | {"weights_mb"}
        return sorted({m for (_, _, m) in self.rows if m not in known}, key=column_order)

    def measuring_target(self, variant: str) -> str | None:
        """The measured target that scored this variant (for the family plot and index)."""
        for target in self.targets("measured"):
            if (
                self.value(variant, target, "kl_divergence") is not None
                or self.value(variant, target, "perplexity") is not None
            ):
                return target
        return None
