"""A run as a graph of jobs, and the scheduler that runs every job whose inputs are ready.

A :class:`Job` names the jobs it comes after, what it needs (cores, memory, the machine to
itself) and three callables: ``ready`` (this thread, once its inputs are done: is there
still something to run?), ``work`` (a scheduler thread: run it, usually by handing a job to
an executor, and return what happened) and ``done`` (this thread, with what ``work``
returned: record it). Only ``work`` runs off this thread, so the results store, the run
summary and everything else ``ready`` and ``done`` touch need no locks.

The scheduler starts ready jobs while they fit in its :class:`Capacity`: free cores (each
job is given core ids of its own, which the worker pins itself to), free memory (measured
at the start, less a margin) and a cap on jobs in flight. A job marked ``exclusive``
(a speed or peak-memory measurement) starts only on an idle machine, gets every core and
runs alone, so that its numbers are not shared with anything else. With a cap of one job
everything runs on this thread, one job at a time, in the order the jobs were added.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MEMORY_MARGIN = 0.8  # of the memory available when the run starts


@dataclass(frozen=True)
class Slot:
    """What a running job was given: core ids to pin to and the number of threads it
    should use (``()`` and ``0`` where the executor places it and sets its threads), and
    whether nothing else runs beside it."""

    cores: tuple[int, ...]
    threads: int
    alone: bool = False

    def job_fields(self) -> dict[str, object]:
        """What a worker job carries of this slot (see ``worker.pin_cores``)."""
        fields: dict[str, object] = {"alone": self.alone}
        if self.cores:
            fields["cores"] = list(self.cores)
        if self.threads:
            fields["threads"] = self.threads
        return fields


@dataclass(eq=False)
class Job:
    """One unit of a run's work; see the module docstring."""

    label: str
    work: Callable[[Slot], Any] | None
    done: Callable[[Any], None] = lambda _result: None
    after: list[Job] = field(default_factory=list)
    ready: Callable[[], bool] = lambda: True
    cpus: int = 1
    memory: int = 0
    exclusive: bool = False


@dataclass
class Capacity:
    """What the scheduler may hand out at once. ``cores`` are core ids on this machine, or
    ``None`` where an executor places jobs itself (Ray: its own resource accounting then
    holds jobs back); ``memory`` in bytes, or ``None`` for no limit."""

    max_jobs: int
    cores: tuple[int, ...] | None = None
    memory: int | None = None

    @classmethod
    def of_this_machine(cls, max_jobs: int | None = None) -> Capacity:
        """This machine's cores (those this process may run on) and available memory less
        a margin; at most ``max_jobs`` (default: one per core) in flight."""
        cores = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
        cores = cores or tuple(range(os.cpu_count() or 1))
        available = available_memory()
        memory = int(available * MEMORY_MARGIN) if available else None
        return cls(max_jobs or len(cores), cores, memory)


def available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (``None`` where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Span:
    """When a job ran and on what: the run's job timeline (``jobs.jsonl``)."""

    label: str
    started: float  # seconds since the epoch
    ended: float
    cores: tuple[int, ...]
    alone: bool


class Scheduler:
    """Runs a graph of :class:`Job`; see the module docstring. ``abort`` is called when the
    run stops on an error or an interrupt, to stop what is in flight (an executor's
    ``close``), before the error goes on up."""

    def __init__(self, capacity: Capacity, abort: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self.abort = abort
        self.jobs: list[Job] = []
        self.timeline: list[Span] = []

    def add(self, job: Job) -> Job:
        self.jobs.append(job)
        return job

    def run(self) -> None:
        """Run every job; an error raised by a ``work`` or ``done`` stops the run: what is
        in flight is aborted and the error is raised here."""
        if self.capacity.max_jobs <= 1:
            self._run_serially()
        else:
            self._run_concurrently()

    def _run_serially(self) -> None:
        finished: set[int] = set()
        for job in self._ordered():
            missing = [j.label for j in job.after if id(j) not in finished]
            if missing:  # pragma: no cover - _ordered puts inputs first
                raise RuntimeError(f"{job.label} runs before {missing}")
            if job.ready() and job.work is not None:
                cores = self.capacity.cores or ()
                slot = Slot(cores, len(cores), alone=True)
                started = time.time()
                try:
                    result = job.work(slot)
                except BaseException:
                    if self.abort is not None:
                        self.abort()
                    raise
                self.timeline.append(
                    Span(job.label, started, time.time(), slot.cores, job.exclusive)
                )
                job.done(result)
            finished.add(id(job))

    def _ordered(self) -> list[Job]:
        """Every job after its inputs, otherwise in the order added."""
        out: list[Job] = []
        placed: set[int] = set()

        def place(job: Job, path: tuple[int, ...]) -> None:
            if id(job) in placed:
                return
            if id(job) in path:
                raise ValueError(f"the jobs form a circle at {job.label}")
            for before in job.after:
                place(before, (*path, id(job)))
            placed.add(id(job))
            out.append(job)

        for job in self.jobs:
            place(job, ())
        return out

    def _run_concurrently(self) -> None:
        waiting = self._ordered()
        finished: set[int] = set()
        running: dict[int, tuple[Job, Slot, float]] = {}
        free_cores = list(self.capacity.cores or ())
        free_memory = self.capacity.memory
        events: queue.Queue[tuple[Job, Any, BaseException | None]] = queue.Queue()
        threads: list[threading.Thread] = []

        def body(job: Job, slot: Slot) -> None:
            assert job.work is not None
            try:
                events.put((job, job.work(slot), None))
            except BaseException as exc:  # handed to the scheduler's thread
                events.put((job, None, exc))

        try:
            while waiting or running:
                started_one = True
                while started_one:
                    started_one = False
                    for job in list(waiting):
                        if any(id(j) not in finished for j in job.after):
                            continue
                        slot = self._fit(job, running, free_cores, free_memory, waiting, finished)
                        if slot is None:
                            continue
                        waiting.remove(job)
                        started_one = True
                        if not job.ready() or job.work is None:
                            finished.add(id(job))
                            break  # what it finished may make others ready: look again
                        for core in slot.cores:
                            free_cores.remove(core)
                        if free_memory is not None:
                            free_memory -= self._memory(job)
                        running[id(job)] = (job, slot, time.time())
                        thread = threading.Thread(
                            target=body, args=(job, slot), name=f"job {job.label}", daemon=True
                        )
                        threads.append(thread)
                        thread.start()
                        if job.exclusive:
                            break
                if not running:
                    if waiting:  # pragma: no cover - every job fits an idle machine
                        raise RuntimeError(f"{waiting[0].label} cannot start on an idle machine")
                    continue
                job, result, error = events.get()
                _, slot, started = running.pop(id(job))
                free_cores.extend(slot.cores)
                free_cores.sort()
                if free_memory is not None:
                    free_memory += self._memory(job)
                self.timeline.append(Span(job.label, started, time.time(), slot.cores, slot.alone))
                if error is not None:
                    raise error
                job.done(result)
                finished.add(id(job))
        except BaseException:
            if self.abort is not None:
                self.abort()
            for thread in threads:  # their workers are gone: they return at once
                thread.join(timeout=30)
            raise

    def _memory(self, job: Job) -> int:
        """A job bigger than the whole budget still runs, alone in memory."""
        if self.capacity.memory is None:
            return 0
        return min(job.memory, self.capacity.memory)

    def _fit(
        self,
        job: Job,
        running: dict[int, tuple[Job, Slot, float]],
        free_cores: list[int],
        free_memory: int | None,
        waiting: list[Job],
        finished: set[int],
    ) -> Slot | None:
        """The slot ``job`` gets now, or ``None`` if it must wait."""
        if any(slot.alone for _, slot, _ in running.values()):
            return None
        if job.work is None:
            return Slot((), 1)
        if job.exclusive:
            if running:
                return None
            cores = tuple(free_cores)
            return Slot(cores, max(1, len(cores)), alone=True)
        if len(running) >= self.capacity.max_jobs:
            return None
        if free_memory is not None and running and self._memory(job) > free_memory:
            return None
        if self.capacity.cores is None:  # the executor places it
            return Slot((), 0)
        wanted = min(max(1, job.cpus), len(self.capacity.cores))  # more than there are: all
        if len(free_cores) < wanted:
            return None
        if not running and not self._more_ready(job, waiting, finished):
            wanted = len(free_cores)  # nothing can run beside it: every core
        return Slot(tuple(free_cores[:wanted]), wanted)

    @staticmethod
    def _more_ready(job: Job, waiting: list[Job], finished: set[int]) -> bool:
        """Whether another waiting job could start now beside ``job``."""
        return any(
            j is not job
            and not j.exclusive
            and j.work is not None
            and all(id(a) in finished for a in j.after)
            for j in waiting
        )
