"""A run as a graph of jobs, and the scheduler that runs every job whose inputs are ready.

A :class:`Job` names the jobs it comes after, what it needs (cores, memory, the machine to
itself) and three callables: ``ready`` (this thread, once its inputs are done: is there
still something to run?), ``work`` (a scheduler thread: run it, usually by handing a job to
an executor, and return what happened) and ``done`` (this thread, with what ``work``
returned: record it). Only ``work`` runs off this thread, so the results store, the run
summary and everything else ``ready`` and ``done`` touch need no locks.

The scheduler starts ready jobs while they fit in its :class:`Capacity`: free cores (each
job is given core ids of its own, which the worker pins itself to), free memory (measured
at the start, less a margin) and a cap on jobs in flight. With a cap of one job everything
runs on this thread, one job at a time, in the order the jobs were added.

A job marked ``timed`` (a speed or peak-memory measurement) times something, and nothing
may run beside that part. Where the scheduler hands out this machine's cores, every job's
slot carries a :class:`MachineClaim`, and a timed job starts like any other. Just before
its timed part it asks for the whole machine: the scheduler starts nothing new, and hands
it every core once every other running job has finished or is waiting itself (for the
machine, or at a pause point: the step boundaries of a build, the scoring windows of an
evaluator). After the timed part it gives the machine back and goes on once the jobs that
asked meanwhile have had their turn, so timed parts run back to back. A job that goes on
after a pause gets its own cores and, lent until its next pause, the idle ones that no
waiting job can use. So a measurement's start-up, loading
and untimed evaluators run beside other jobs and only the timed part runs alone. Where the
executor places jobs itself (``Capacity.cores`` is ``None``) a timed job runs alone from
start to end.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

MEMORY_MARGIN = 0.8  # of the memory available when the run starts


@dataclass(frozen=True)
class Slot:
    """What a running job was given: core ids to pin to and the number of threads it
    should use (``()`` and ``0`` where the executor places it and sets its threads),
    whether nothing else runs beside it, and (a ``timed`` job beside others) the claim
    through which it asks for the whole machine for its timed part."""

    cores: tuple[int, ...]
    threads: int
    alone: bool = False
    claim: MachineClaim | None = field(default=None, compare=False)

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
    timed: bool = False


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


class MachineGate:
    """The whole machine, handed to one timed job at a time in the middle of its work (see
    the module docstring). Jobs ask from their own threads (:class:`MachineClaim`); the
    scheduler's thread grants (:meth:`grant`) when every other running job has finished or
    is waiting too. ``wake`` tells the scheduler's thread that something changed."""

    def __init__(self, cores: tuple[int, ...], wake: Callable[[], None]) -> None:
        self.cores = cores
        self._wake = wake
        self._changed = threading.Condition()
        self._wanting: list[int] = []  # job ids, in the order they asked
        # gave the machine back; go on, on these cores, once none wants it
        self._resuming: dict[int, tuple[int, ...] | None] = {}
        self._holder: int | None = None
        self._closed = False
        self.spans: list[Span] = []  # the timed parts: the run's timeline shows them

    def busy(self) -> bool:
        """Whether a job holds the machine or waits for it: nothing new starts then."""
        with self._changed:
            return bool(self._wanting) or self._holder is not None

    def grant(self, running: set[int]) -> None:
        """Hand the machine to the first job waiting for it if every other job in
        ``running`` waits too (the scheduler's thread calls this)."""
        with self._changed:
            if self._holder is not None or not self._wanting:
                return
            # a job told to go on (its cores set) may not have woken yet: it is at work
            paused = {key for key, cores in self._resuming.items() if cores is None}
            if running - set(self._wanting) - paused:
                return  # something is still at work
            self._holder = self._wanting.pop(0)
            self._changed.notify_all()

    def forget(self, key: int) -> None:
        """A job ended: whatever it held or asked for is given back."""
        with self._changed:
            if key in self._wanting:
                self._wanting.remove(key)
            if self._holder == key:
                self._holder = None
            self._resuming.pop(key, None)
            self._changed.notify_all()

    def close(self) -> None:
        """The run stops: every job still waiting for the machine is told no."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def acquire(self, key: int, timeout: float | None = None) -> tuple[int, ...] | None:
        with self._changed:
            self._wanting.append(key)
        self._wake()
        with self._changed:
            granted = self._changed.wait_for(
                lambda: self._holder == key or self._closed, timeout=timeout
            )
            if granted and self._holder == key and not self._closed:
                return self.cores
            if key in self._wanting:
                self._wanting.remove(key)
            if self._holder == key:
                self._holder = None
            self._changed.notify_all()
        self._wake()
        return None

    def release(self, key: int, timeout: float | None = None) -> tuple[int, ...] | None:
        with self._changed:
            if self._holder == key:
                self._holder = None
            self._resuming[key] = None
            self._changed.notify_all()
        self._wake()
        with self._changed:
            self._changed.wait_for(
                lambda: self._resuming.get(key) is not None or self._closed, timeout=timeout
            )
            cores = self._resuming.pop(key, None)
            return None if self._closed else cores

    def resumable(self) -> list[int]:
        """The jobs that gave the machine back and may go on now (none wants it): the
        scheduler's thread hands each its cores with :meth:`resume`."""
        with self._changed:
            if self._holder is not None or self._wanting:
                return []
            return [key for key, cores in self._resuming.items() if cores is None]

    def resume(self, key: int, cores: tuple[int, ...]) -> None:
        with self._changed:
            if key in self._resuming:
                self._resuming[key] = cores
                self._changed.notify_all()


@dataclass(frozen=True)
class MachineClaim:
    """A running job's way to ask for the whole machine (every core, nothing else running)
    for its timed part, and to give it back."""

    gate: MachineGate
    key: int
    label: str

    def acquire(self, timeout: float | None = None) -> tuple[int, ...] | None:
        """Wait until the machine is this job's; return every core, or ``None`` if the run
        stopped or ``timeout`` seconds passed first."""
        return self.gate.acquire(self.key, timeout)

    def release(self, started: float, timeout: float | None = None) -> tuple[int, ...] | None:
        """Give the machine back (``started``, ``time.time()`` at the grant, goes into the
        run's timeline) and wait until no other job wants it; return the cores to go on
        with (the job's own, and idle ones no waiting job can use), or ``None`` if the run
        stopped or ``timeout`` seconds passed first."""
        self.gate.spans.append(
            Span(f"{self.label}: timed part", started, time.time(), self.gate.cores, True)
        )
        return self.gate.release(self.key, timeout)

    def pause(self, timeout: float | None = None) -> tuple[int, ...] | None:
        """A point where the job may wait: while another job waits for the machine or
        holds it, this one counts as idle (it is, until this returns). Return the cores to
        go on with: its own, and idle ones no waiting job can use; ``None`` as
        :meth:`release`."""
        return self.gate.release(self.key, timeout)


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
                self.timeline.append(Span(job.label, started, time.time(), slot.cores, slot.alone))
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
        lent: dict[int, tuple[int, ...]] = {}  # idle cores a running job goes on with
        free_memory = self.capacity.memory
        # (job, result, error); (None, None, None) when the machine gate changed
        events: queue.Queue[tuple[Job | None, Any, BaseException | None]] = queue.Queue()
        threads: list[threading.Thread] = []
        gate = (
            MachineGate(self.capacity.cores, lambda: events.put((None, None, None)))
            if self.capacity.cores
            else None
        )

        def body(job: Job, slot: Slot) -> None:
            assert job.work is not None
            try:
                events.put((job, job.work(slot), None))
            except BaseException as exc:  # handed to the scheduler's thread
                events.put((job, None, exc))

        try:
            while waiting or running:
                started_one = gate is None or not gate.busy()
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
                        if gate is not None and not slot.alone:
                            slot = replace(slot, claim=MachineClaim(gate, id(job), job.label))
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
                        if slot.alone:
                            break
                if gate is not None:
                    gate.grant(set(running))
                    if self._resume(gate, running, lent, free_cores, waiting, finished):
                        continue  # lent cores came back for a job that is ready: start it
                if not running:
                    if waiting:  # pragma: no cover - every job fits an idle machine
                        raise RuntimeError(f"{waiting[0].label} cannot start on an idle machine")
                    continue
                ended, result, error = events.get()
                if ended is None:
                    continue  # a job asked for the machine or gave it back
                job, slot, started = running.pop(id(ended))
                lent.pop(id(job), None)  # in slot.cores: freed with them
                if gate is not None:
                    gate.forget(id(job))
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
            if gate is not None:
                gate.close()
            if self.abort is not None:
                self.abort()
            for thread in threads:  # their workers are gone: they return at once
                thread.join(timeout=30)
            raise
        finally:
            if gate is not None:
                self.timeline.extend(gate.spans)

    def _resume(
        self,
        gate: MachineGate,
        running: dict[int, tuple[Job, Slot, float]],
        lent: dict[int, tuple[int, ...]],
        free_cores: list[int],
        waiting: list[Job],
        finished: set[int],
    ) -> bool:
        """Let the jobs that paused or gave the machine back go on: on their own cores, and
        on the idle ones too while no waiting job could start on them (the last jobs of a
        run would otherwise leave cores idle to the end). Idle cores are lent from one pause
        to the next: at each pause they come back, and a job that became ready meanwhile
        starts on them. True when cores came back for such a job."""
        keys = gate.resumable()
        if not keys:
            return False
        returned = False
        for key in keys:
            back = lent.pop(key, ())
            if back:
                job, slot, started = running[key]
                own = tuple(core for core in slot.cores if core not in back)
                running[key] = (job, replace(slot, cores=own, threads=len(own)), started)
                free_cores.extend(back)
                returned = True
        free_cores.sort()
        ready = any(j.work is not None and all(id(a) in finished for a in j.after) for j in waiting)
        spare = [] if ready else list(free_cores)
        for n, key in enumerate(keys):
            job, slot, started = running[key]
            extra = tuple(spare[n :: len(keys)])
            for core in extra:
                free_cores.remove(core)
            if extra:
                lent[key] = extra
            cores = tuple(sorted((*slot.cores, *extra)))
            running[key] = (job, replace(slot, cores=cores, threads=len(cores)), started)
            gate.resume(key, cores)
        return returned and ready

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
        if job.timed and self.capacity.cores is None:  # no gate: alone from start to end
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
            # nothing can run beside it until it ends: every core, and a timed job is alone
            return Slot(tuple(free_cores), len(free_cores), alone=job.timed)
        return Slot(tuple(free_cores[:wanted]), wanted)

    def _more_ready(self, job: Job, waiting: list[Job], finished: set[int]) -> bool:
        """Whether another waiting job could start now beside ``job``."""
        return any(
            j is not job
            and not (j.timed and self.capacity.cores is None)
            and j.work is not None
            and all(id(a) in finished for a in j.after)
            for j in waiting
        )
