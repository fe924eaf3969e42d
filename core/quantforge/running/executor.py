"""What every executor does (:class:`Executor`), and the worker process it starts: start a
``python -m quantforge.running.worker`` per unit of work, watch it, and say plainly how it
ended (:class:`JobOutcome`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from quantforge.running.graph import Capacity, MachineClaim

STOPPED = "the run was stopped"  # what a job in flight when the run stops gets

# A long step's progress, as the worker last wrote it (see StepContext.progress).
ProgressCallback = Callable[[dict[str, Any]], None]


POLL_SECONDS = 1.0


HOST_PID = "QUANTFORGE_HOST_PID"  # the worker dies with this process (see worker.py)

# "ASKS,GRANTS": the worker's pipe descriptors for asking this process for the whole
# machine: it writes b"a" and reads back the cores as a JSON line; it writes b"r" when its
# timed part is over, or b"p" at a point where it may wait (between steps), and reads back,
# when it may go on, the cores to go on with (see graph.MachineGate)
MACHINE_GATE = "QUANTFORGE_MACHINE_GATE"

# what the libraries a worker loads read for their thread count
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class JobOutcome:
    """How a worker ended. ``failure`` is ``None`` when it exited 0."""

    returncode: int | None
    failure: str | None
    result_path: Path
    log_path: Path
    seconds: float

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.result_path.read_text(encoding="utf-8")))

    def lines(self) -> list[dict[str, Any]]:
        if not self.result_path.exists():
            return []
        return [
            json.loads(line)
            for line in self.result_path.read_text(encoding="utf-8").splitlines()
            if line
        ]


class Executor(Protocol):
    """Runs the runner's jobs (a variant's steps, a measurement, tokenizing) somewhere:
    child processes here, this process, or Ray tasks. Logs and results land in
    ``work_dir``; the runner chooses none of this, its caller does (``executors``)."""

    name: str
    work_dir: Path

    def run(
        self,
        job: dict[str, Any],
        label: str,
        timeout: float,
        on_progress: ProgressCallback | None = None,
        claim: MachineClaim | None = None,
    ) -> JobOutcome:
        """Run ``job`` to its end (or ``timeout`` seconds) and say how it ended. With a
        ``claim`` (a timed job beside others) the worker may ask for the whole machine for
        its timed part; an executor that cannot hand it over gets no claim (the scheduler
        runs such jobs alone instead)."""
        ...

    def move_to(self, work_dir: Path) -> None:
        """Carry the files of jobs run so far to ``work_dir`` and write there from now on."""
        ...

    def capacity(self, max_jobs: int | None) -> Capacity:
        """How many jobs may run at once (at most ``max_jobs``; ``None``: as many as fit)
        and on what: this machine's cores and memory, or ``cores=None`` where the executor
        places jobs itself."""
        ...

    def close(self) -> None:
        """Stop jobs still in flight and release what the executor holds (a Ray instance it
        started); a job asked for after this fails at once. Safe to call twice."""
        ...


def _last_error_line(log: Path) -> str:
    try:
        lines = [
            ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    for line in reversed(lines):
        if "Error" in line or "error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def describe_exit(returncode: int, log: Path) -> str:
    if returncode == -signal.SIGKILL or returncode == 137:
        return "worker was killed (SIGKILL: out of memory?)"
    if returncode < 0:
        detail = _last_error_line(log)
        why = " (out of memory: std::bad_alloc)" if "bad_alloc" in detail else ""
        return f"worker died from signal {signal.Signals(-returncode).name}{why}"
    detail = _last_error_line(log)
    return f"worker exited with status {returncode}" + (f": {detail}" if detail else "")


class ProgressWatcher:
    """Reads the worker's ``STEM.progress.json`` when it changes and hands it on."""

    def __init__(self, path: Path, callback: ProgressCallback | None) -> None:
        self.path = path
        self.callback = callback
        self.seen: int | None = None
        path.unlink(missing_ok=True)

    def poll(self) -> None:
        if self.callback is None:
            return
        try:
            stamp = self.path.stat().st_mtime_ns
            if stamp == self.seen:
                return
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # not written yet, or being replaced
            return
        self.seen = stamp
        self.callback(data)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker and everything it started (it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _GateLine:
    """The host's end of a worker's line to the machine gate (see :data:`MACHINE_GATE`)."""

    def __init__(self, claim: MachineClaim) -> None:
        self.claim = claim
        self.asks, self.asks_child = os.pipe()
        self.grants_child, self.grants = os.pipe()
        self.held_since: float | None = None

    def child_fds(self) -> tuple[int, int]:
        return self.asks_child, self.grants_child

    def started(self) -> None:
        """The worker has its copies; drop ours, so that its exit reads as the end."""
        os.close(self.asks_child)
        os.close(self.grants_child)

    def serve(self, wait: float, deadline: float) -> bool | None:
        """Answer what the worker asked within ``wait`` seconds. ``True``: the line is open;
        ``False``: the worker closed it (it ended); ``None``: the machine never came (the
        run stopped, or the deadline passed)."""
        readable, _, _ = select.select([self.asks], [], [], wait)
        if not readable:
            return True
        data = os.read(self.asks, 64)
        if not data:
            return False
        for byte in data:
            if byte == ord("a"):
                cores = self.claim.acquire(timeout=max(0.0, deadline - time.perf_counter()))
                if cores is None:
                    return None
                self.held_since = time.time()
                self._answer(json.dumps(list(cores)))
            elif byte in (ord("r"), ord("p")):
                held_since, self.held_since = self.held_since, None
                left = max(0.0, deadline - time.perf_counter())
                if held_since is not None:
                    cores = self.claim.release(held_since, timeout=left)
                else:
                    cores = self.claim.pause(timeout=left)
                if cores is None:
                    return None
                self._answer(json.dumps(list(cores)))
        return True

    def _answer(self, line: str) -> None:
        with contextlib.suppress(BrokenPipeError):  # the worker is gone: its exit tells
            os.write(self.grants, (line + "\n").encode())

    def give_back(self) -> None:
        """The worker ended holding the machine: give it back (the scheduler forgets the
        job once it ends)."""
        if self.held_since is not None:
            self.claim.gate.release(self.claim.key, timeout=0)
            self.held_since = None

    def close(self) -> None:
        self.give_back()
        for fd in (self.asks, self.grants):
            with contextlib.suppress(OSError):
                os.close(fd)


def run_job(
    job: dict[str, Any],
    work_dir: Path,
    stem: str,
    timeout: float,
    on_progress: ProgressCallback | None = None,
    live: set[subprocess.Popen[bytes]] | None = None,
    claim: MachineClaim | None = None,
) -> JobOutcome:
    """Run one job in a fresh ``python -m quantforge.running.worker`` beside ``work_dir``'s files
    ``STEM.job.json``, ``STEM.result.json``, ``STEM.log`` and ``STEM.progress.json``; kill it
    at ``timeout``. ``on_progress`` gets what a long step reports, as it reports it. The
    worker uses ``job["threads"]`` threads (OpenMP, MKL) when the job says; while it runs
    it is in ``live``, where whoever stops the run finds it. With a ``claim`` the worker
    can ask for the whole machine (:data:`MACHINE_GATE`); the wait counts towards
    ``timeout``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    job_path = work_dir / f"{stem}.job.json"
    result_path = work_dir / f"{stem}.result.json"
    log_path = work_dir / f"{stem}.log"
    watcher = ProgressWatcher(work_dir / f"{stem}.progress.json", on_progress)
    job = {**job, "progress_path": str(watcher.path)}
    job_path.write_text(json.dumps(job), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    started = time.perf_counter()
    deadline = started + timeout
    env = {**os.environ, "PYTHONUNBUFFERED": "1", HOST_PID: str(os.getpid())}
    if job.get("threads"):
        for name in THREAD_VARIABLES:
            env[name] = str(job["threads"])
    line = _GateLine(claim) if claim is not None else None
    if line is not None:
        env[MACHINE_GATE] = ",".join(map(str, line.child_fds()))

    def ended(failure: str) -> JobOutcome:
        return JobOutcome(None, failure, result_path, log_path, time.perf_counter() - started)

    with log_path.open("wb") as log:
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "quantforge.running.worker",
                    str(job_path),
                    str(result_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
                pass_fds=line.child_fds() if line is not None else (),
            )
        finally:
            if line is not None:
                line.started()
        if live is not None:
            live.add(proc)
        code: int | None = None
        try:
            while code is None:
                left = deadline - time.perf_counter()
                if left <= 0:
                    kill_group(proc)
                    return ended(f"timed out after {timeout:g}s")
                if line is not None:
                    served = line.serve(min(POLL_SECONDS, left), deadline)
                    if served is None:
                        kill_group(proc)
                        if time.perf_counter() >= deadline:
                            return ended(f"timed out after {timeout:g}s")
                        return ended(STOPPED)
                    if not served:
                        line.close()
                        line = None
                    code = proc.poll()
                    if code is None:
                        watcher.poll()
                    continue
                try:
                    code = proc.wait(timeout=min(POLL_SECONDS, left))
                except subprocess.TimeoutExpired:
                    watcher.poll()
        except BaseException:  # the host is interrupted or terminated: its worker goes too
            kill_group(proc)
            raise
        finally:
            if live is not None:
                live.discard(proc)
            if line is not None:
                line.close()
    seconds = time.perf_counter() - started
    failure = None if code == 0 else describe_exit(code, log_path)
    return JobOutcome(code, failure, result_path, log_path, seconds)
