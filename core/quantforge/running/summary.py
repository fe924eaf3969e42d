"""What a run tells as it goes (:class:`Reporter`) and what it ends with
(:class:`RunSummary`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path


class Reporter:
    """Progress callbacks; the CLI draws them with rich, tests collect them."""

    def stage(self, title: str, total: int) -> None:
        """A stage of ``total`` units starts."""

    def advance(self, label: str, status: str) -> None:
        """One unit finished with ``status`` (``ok``, ``cached``, ``failed: ...``)."""

    def note(self, text: str) -> None:
        """Something worth telling the user."""

    def progress(
        self, label: str, done: int, total: int, unit: str, elapsed: float, eta: float | None
    ) -> None:
        """A long step inside a unit reports how far it is (``12`` of ``30`` ``layers``,
        seconds elapsed, seconds estimated to go or ``None``)."""


class LockedReporter(Reporter):
    """Hands each call on to ``inner``, one at a time: a run's jobs report from the
    scheduler's threads."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    def stage(self, title: str, total: int) -> None:
        with self._lock:
            self.inner.stage(title, total)

    def advance(self, label: str, status: str) -> None:
        with self._lock:
            self.inner.advance(label, status)

    def note(self, text: str) -> None:
        with self._lock:
            self.inner.note(text)

    def progress(
        self, label: str, done: int, total: int, unit: str, elapsed: float, eta: float | None
    ) -> None:
        with self._lock:
            self.inner.progress(label, done, total, unit, elapsed, eta)


@dataclass
class RunSummary:
    run_id: str
    output: Path
    status: str
    variants: dict[str, str]  # name -> "ok" | "failed: why"
    evaluations: dict[tuple[str, str], str]
    steps_run: int = 0
    steps_cached: int = 0
    evaluations_run: int = 0
    evaluations_cached: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # name -> why, from preflight

    def failed(self) -> list[str]:
        """Variants that failed to build and evaluations that failed; a variant that a
        target does not run (a GGUF file on the transformers target) is not a failure."""
        return list(self.failures())

    def failures(self) -> dict[str, str]:
        """What :meth:`failed` lists, each with why (the step's or evaluator's own line)."""
        out = {
            name: status.removeprefix("failed: ")
            for name, status in self.variants.items()
            if status != "ok"
        }
        out.update(
            (f"{v} on {t}", s.removeprefix("failed: "))
            for (v, t), s in self.evaluations.items()
            if s not in ("ok", "cached") and not s.startswith("not runnable")
        )
        return out
