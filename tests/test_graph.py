"""The run's job graph and its scheduler (``quantforge.running.graph``), on jobs that sleep:
what runs beside what, on which cores, in which order, and what an error stops."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from quantforge.running.graph import Capacity, Job, Scheduler, Slot, Span


def _sleeper(seconds: float, seen: list[Slot] | None = None) -> Any:
    def work(slot: Slot) -> float:
        if seen is not None:
            seen.append(slot)
        time.sleep(seconds)
        return seconds

    return work


def _overlap(a: Span, b: Span) -> bool:
    return a.started < b.ended and b.started < a.ended


def _most_at_once(spans: list[Span]) -> int:
    edges = sorted([(s.started, 1) for s in spans] + [(s.ended, -1) for s in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_independent_jobs_run_side_by_side_within_the_cores() -> None:
    scheduler = Scheduler(Capacity(max_jobs=2, cores=(0, 1)))
    slots: list[Slot] = []
    for i in range(4):
        scheduler.add(Job(f"job {i}", _sleeper(0.3, slots)))
    started = time.perf_counter()
    scheduler.run()
    took = time.perf_counter() - started
    spans = scheduler.timeline
    assert len(spans) == 4 and _most_at_once(spans) == 2
    assert took < 1.0  # two rounds of 0.3 s, not four
    assert all(len(s.cores) == 1 for s in slots)
    for a in spans:  # two jobs at once never share a core
        for b in spans:
            if a is not b and _overlap(a, b):
                assert set(a.cores).isdisjoint(b.cores)


def test_a_job_starts_after_its_inputs_and_sees_their_results() -> None:
    scheduler = Scheduler(Capacity(max_jobs=4, cores=(0, 1, 2, 3)))
    results: dict[str, Any] = {}

    def record(name: str) -> Any:
        return lambda value: results.__setitem__(name, value)

    first = scheduler.add(Job("first", _sleeper(0.2), record("first")))
    second = scheduler.add(Job("second", lambda slot: results["first"] * 2, record("second")))
    second.after.append(first)
    scheduler.run()
    assert results == {"first": 0.2, "second": 0.4}
    spans = {s.label: s for s in scheduler.timeline}
    assert spans["second"].started >= spans["first"].ended


def test_a_lone_ready_job_gets_every_core() -> None:
    scheduler = Scheduler(Capacity(max_jobs=4, cores=(0, 1, 2, 3)))
    slots: list[Slot] = []
    scheduler.add(Job("alone", _sleeper(0.01, slots)))
    scheduler.run()
    assert slots[0].cores == (0, 1, 2, 3) and slots[0].threads == 4


def test_a_job_asking_for_more_cores_than_there_are_gets_them_all() -> None:
    scheduler = Scheduler(Capacity(max_jobs=2, cores=(0, 1)))
    slots: list[Slot] = []
    scheduler.add(Job("wide", _sleeper(0.05, slots), cpus=8))
    scheduler.add(Job("narrow", _sleeper(0.05, slots)))
    scheduler.run()
    assert slots[0].cores == (0, 1)  # "wide" ran, on every core, with nothing beside it
    assert _most_at_once(scheduler.timeline) == 1


def test_a_timed_job_the_executor_places_runs_with_nothing_beside_it() -> None:
    # Ray places jobs itself (no core ids): a timed job is alone from start to end
    scheduler = Scheduler(Capacity(max_jobs=3))
    slots: list[Slot] = []
    for i in range(3):
        scheduler.add(Job(f"build {i}", _sleeper(0.2)))
    scheduler.add(Job("speed", _sleeper(0.2, slots), timed=True))
    for i in range(3):
        scheduler.add(Job(f"late {i}", _sleeper(0.2)))
    scheduler.run()
    spans = {s.label: s for s in scheduler.timeline}
    speed = spans.pop("speed")
    assert speed.alone and slots[0].alone and slots[0].claim is None
    assert not any(_overlap(speed, other) for other in spans.values())
    assert _most_at_once(list(spans.values())) == 3  # the others did run side by side


def _timed(parts: dict[str, Span], lead: float = 0.1, timed: float = 0.15) -> Any:
    """A measurement: starts up beside others, then asks for the machine for its timed part."""

    def work(slot: Slot) -> None:
        time.sleep(lead)
        assert slot.claim is not None and not slot.alone
        label = slot.claim.label
        cores = slot.claim.acquire(timeout=10)
        assert cores == (0, 1, 2)
        began = time.time()
        time.sleep(timed)
        parts[label] = Span(label, began, time.time(), cores, True)
        slot.claim.release(began)
        time.sleep(lead)  # the untimed rest, beside others again

    return work


def test_only_the_timed_part_of_a_timed_job_runs_alone() -> None:
    scheduler = Scheduler(Capacity(max_jobs=3, cores=(0, 1, 2)))
    parts: dict[str, Span] = {}
    for i in range(2):
        scheduler.add(Job(f"build {i}", _sleeper(0.4)))
    for i in range(3):
        scheduler.add(Job(f"measure {i}", _timed(parts), timed=True))
    for i in range(2):
        scheduler.add(Job(f"late {i}", _sleeper(0.1)))
    scheduler.run()
    spans = [s for s in scheduler.timeline if not s.label.endswith("timed part")]
    assert len(parts) == 3 and len(spans) == 7
    measures = [s for s in spans if s.label.startswith("measure")]
    for label, part in parts.items():  # nothing at work during a timed part
        others = [s for s in spans if s.label != label]
        busy = [s for s in others if _overlap(part, s)]
        # only measurements waiting for the machine themselves may be in flight
        assert all(s.label.startswith("measure") for s in busy), (label, busy)
    timed = list(parts.values())
    assert not any(_overlap(a, b) for a in timed for b in timed if a is not b)
    # the measurements started beside the builds, not after them
    builds = [s for s in spans if s.label.startswith("build")]
    assert any(_overlap(m, b) for m in measures for b in builds)
    logged = [s for s in scheduler.timeline if s.label.endswith("timed part")]
    assert len(logged) == 3 and all(s.alone and s.cores == (0, 1, 2) for s in logged)


def test_a_run_that_stops_tells_a_job_waiting_for_the_machine() -> None:
    def broken(slot: Slot) -> None:
        time.sleep(0.3)
        raise RuntimeError("the build broke")

    answers: list[object] = []

    def measure(slot: Slot) -> None:
        assert slot.claim is not None
        answers.append(slot.claim.acquire())  # waits for "broken", which never gives way

    scheduler = Scheduler(Capacity(max_jobs=2, cores=(0, 1)))
    scheduler.add(Job("broken", broken))
    scheduler.add(Job("measure", measure, timed=True))
    begun = time.perf_counter()
    with pytest.raises(RuntimeError, match="the build broke"):
        scheduler.run()
    assert time.perf_counter() - begun < 5 and answers == [None]


def test_jobs_share_the_memory_budget() -> None:
    scheduler = Scheduler(Capacity(max_jobs=4, cores=(0, 1, 2, 3), memory=1000))
    for i in range(3):
        scheduler.add(Job(f"big {i}", _sleeper(0.15), memory=600))
    scheduler.add(Job("huge", _sleeper(0.05), memory=5000))  # bigger than all: runs alone
    scheduler.run()
    assert _most_at_once(scheduler.timeline) == 1


def test_a_job_with_nothing_to_run_lets_the_ones_after_it_go() -> None:
    scheduler = Scheduler(Capacity(max_jobs=2, cores=(0, 1)))
    ran: list[str] = []
    cached = scheduler.add(Job("cached", lambda slot: ran.append("cached"), ready=lambda: False))
    record = scheduler.add(Job("record", None, after=[cached]))
    scheduler.add(Job("measure", lambda slot: ran.append("measure"), after=[record]))
    scheduler.run()
    assert ran == ["measure"]
    assert [s.label for s in scheduler.timeline] == ["measure"]


def test_an_error_stops_the_run_aborts_what_is_in_flight_and_is_raised() -> None:
    aborted = threading.Event()
    started: list[str] = []

    def slow(slot: Slot) -> None:
        started.append("slow")
        aborted.wait(10)  # as a worker killed by the executor's close

    def broken(slot: Slot) -> None:
        started.append("broken")
        time.sleep(0.1)
        raise OSError(28, "No space left on device")

    scheduler = Scheduler(Capacity(max_jobs=2, cores=(0, 1)), abort=aborted.set)
    scheduler.add(Job("slow", slow))
    scheduler.add(Job("broken", broken))
    later = scheduler.add(Job("later", lambda slot: started.append("later")))
    later.after.extend(scheduler.jobs[:2])
    begun = time.perf_counter()
    with pytest.raises(OSError, match="No space left"):
        scheduler.run()
    assert aborted.is_set() and time.perf_counter() - begun < 5
    assert sorted(started) == ["broken", "slow"]


def test_one_job_at_a_time_runs_in_order_on_this_thread() -> None:
    scheduler = Scheduler(Capacity(max_jobs=1, cores=(0, 1)))
    threads: list[str] = []
    for i in range(3):
        scheduler.add(
            Job(f"job {i}", lambda slot, i=i: threads.append(threading.current_thread().name))
        )
    scheduler.run()
    assert threads == [threading.current_thread().name] * 3
    assert [s.label for s in scheduler.timeline] == ["job 0", "job 1", "job 2"]
    assert _most_at_once(scheduler.timeline) == 1


def test_a_circle_of_jobs_is_refused() -> None:
    scheduler = Scheduler(Capacity(max_jobs=2, cores=(0, 1)))
    a = scheduler.add(Job("a", _sleeper(0)))
    b = scheduler.add(Job("b", _sleeper(0), after=[a]))
    a.after.append(b)
    with pytest.raises(ValueError, match="circle"):
        scheduler.run()


def test_this_machines_capacity_is_its_cores_and_available_memory() -> None:
    import os

    capacity = Capacity.of_this_machine()
    assert capacity.cores == tuple(sorted(os.sched_getaffinity(0)))
    assert capacity.max_jobs == len(capacity.cores)
    assert capacity.memory is not None and capacity.memory > 0
    assert Capacity.of_this_machine(1).max_jobs == 1


def test_a_job_going_on_after_its_timed_part_gets_the_cores_no_one_else_can_use() -> None:
    def measure(resumed: list[tuple[int, ...] | None]) -> Any:
        def work(slot: Slot) -> None:
            assert slot.claim is not None and len(slot.cores) == 1
            began = time.time()
            assert slot.claim.acquire(timeout=10) == (0, 1, 2)
            resumed.append(slot.claim.release(began, timeout=10))

        return work

    alone: list[tuple[int, ...] | None] = []
    scheduler = Scheduler(Capacity(max_jobs=3, cores=(0, 1, 2)))
    scheduler.add(Job("build", _sleeper(0.3)))
    scheduler.add(Job("measure", measure(alone), timed=True))
    scheduler.run()
    assert alone == [(0, 1, 2)]  # the build is over and nothing waits: every core
    spans = {s.label: s for s in scheduler.timeline}
    assert spans["measure"].cores == (0, 1, 2)

    shared: list[tuple[int, ...] | None] = []
    scheduler = Scheduler(Capacity(max_jobs=2, cores=(0, 1, 2)))
    scheduler.add(Job("build", _sleeper(0.3)))
    scheduler.add(Job("measure", measure(shared), timed=True))
    scheduler.add(Job("late", _sleeper(0.1)))  # ready, held back while the machine is taken
    scheduler.run()
    (cores,) = shared
    spans = {s.label: s for s in scheduler.timeline}
    # "late" starts first, on a core of its own; the measurement goes on with the rest
    assert cores is not None and 1 in cores and set(spans["late"].cores).isdisjoint(cores)
    assert set(cores) | set(spans["late"].cores) == {0, 1, 2}


def test_idle_cores_lent_at_a_pause_come_back_at_the_next_for_a_job_that_became_ready() -> None:
    seen: list[tuple[int, ...]] = []

    def reference(slot: Slot) -> None:  # scores windows, pausing between them
        assert slot.claim is not None
        seen.append(slot.cores)
        end = time.perf_counter() + 1.5
        while time.perf_counter() < end:
            time.sleep(0.05)
            cores = slot.claim.pause(timeout=10)
            assert cores is not None
            if cores != seen[-1]:
                seen.append(cores)

    scheduler = Scheduler(Capacity(max_jobs=3, cores=(0, 1, 2)))
    scheduler.add(Job("reference", reference))
    scheduler.add(Job("short", _sleeper(0.2)))
    long = scheduler.add(Job("long", _sleeper(0.6)))
    scheduler.add(Job("wide", _sleeper(0.2), after=[long], cpus=2))
    scheduler.run()
    spans = {s.label: s for s in scheduler.timeline}
    # "short" ended and nothing could start: its core was lent to the reference ...
    assert seen[0] == (0,) and (0, 1) in seen
    # ... and came back at a pause once "wide" was ready, which ran beside the reference
    assert spans["wide"].cores == (1, 2) and spans["wide"].ended < spans["reference"].ended
    assert (0,) in seen[seen.index((0, 1)) :]
    # and once "wide" was over, every idle core was lent again
    assert seen[-1] == (0, 1, 2)
