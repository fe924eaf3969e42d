"""Executors on this machine: worker processes, as many at once as the cores and memory
allow (``local``), or jobs in this process one at a time (``inline``, for tests and quick
looks).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from quantforge.running.executor import (
    STOPPED,
    JobOutcome,
    ProgressCallback,
    describe_exit,
    kill_group,
    run_job,
)
from quantforge.running.graph import Capacity, MachineClaim


class LocalExecutor:
    """Runs jobs as child processes of this one, several at once when the run's scheduler
    asks (``run`` is called from its threads); ``memory_limit`` (bytes) caps each worker's
    address space (RLIMIT_AS), so a step that needs more fails alone."""

    name = "local"

    def __init__(self, work_dir: Path, memory_limit: int | None = None) -> None:
        self.work_dir = work_dir
        self.memory_limit = memory_limit
        work_dir.mkdir(parents=True, exist_ok=True)
        self._count = 0
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen[bytes]] = set()
        self.closed = False

    def capacity(self, max_jobs: int | None) -> Capacity:
        """This machine's cores and available memory (see :class:`Capacity`)."""
        return Capacity.of_this_machine(max_jobs)

    def limited(self, job: dict[str, Any]) -> dict[str, Any]:
        """``job`` with the worker memory limit the worker applies to itself."""
        return {**job, "memory_limit": self.memory_limit} if self.memory_limit else job

    def stem(self, label: str) -> str:
        with self._lock:
            self._count += 1
            count = self._count
        return f"{count:03d}-{label}".replace("/", "_")

    def stopped(self, stem: str) -> JobOutcome:
        """What a job asked for after :meth:`close` gets."""
        return JobOutcome(
            None,
            STOPPED,
            self.work_dir / f"{stem}.result.json",
            self.work_dir / f"{stem}.log",
            0.0,
        )

    def run(
        self,
        job: dict[str, Any],
        label: str,
        timeout: float,
        on_progress: ProgressCallback | None = None,
        claim: MachineClaim | None = None,
    ) -> JobOutcome:
        stem = self.stem(label)
        if self.closed:
            return self.stopped(stem)
        return run_job(
            self.limited(job), self.work_dir, stem, timeout, on_progress, self._live, claim
        )

    def move_to(self, work_dir: Path) -> None:
        """Carry the files of jobs run so far to ``work_dir`` and write there from now on."""
        work_dir.parent.mkdir(parents=True, exist_ok=True)
        if work_dir.exists():
            for item in self.work_dir.iterdir():
                shutil.move(str(item), str(work_dir / item.name))
            shutil.rmtree(self.work_dir, ignore_errors=True)
        else:
            shutil.move(str(self.work_dir), str(work_dir))
        self.work_dir = work_dir

    def close(self) -> None:
        """Kill the workers still running (each with what it started)."""
        self.closed = True
        for proc in list(self._live):
            kill_group(proc)


class InlineExecutor(LocalExecutor):
    """Runs jobs in this process, one after another, each job's output in its ``STEM.log``.

    Heavy imports are paid once per run instead of once per job, so a run of many small
    variants (the support-matrix tests, a quick look at a tiny model) is several times
    faster. There is no isolation and no timeout: a crash ends the run, and a measurement
    of peak memory sees what earlier jobs left; only steps whose library may end the
    interpreter on an error (``Step.ends_process_on_error``), and measurements of what they
    built, still get a worker process. Use
    ``local`` for real runs.
    """

    name = "inline"

    def capacity(self, max_jobs: int | None) -> Capacity:
        """One job at a time: jobs share this process's standard output and error."""
        return Capacity(1, Capacity.of_this_machine().cores)

    def run(
        self,
        job: dict[str, Any],
        label: str,
        timeout: float,
        on_progress: ProgressCallback | None = None,
        claim: MachineClaim | None = None,  # one job at a time: each is alone anyway
    ) -> JobOutcome:
        import traceback

        from quantforge.running import worker

        if self._needs_a_process(job):
            return super().run(job, label, timeout, on_progress)
        stem = self.stem(label)
        job_path = self.work_dir / f"{stem}.job.json"
        result_path = self.work_dir / f"{stem}.result.json"
        log_path = self.work_dir / f"{stem}.log"
        job = {**job, "progress_path": str(self.work_dir / f"{stem}.progress.json")}
        job_path.write_text(json.dumps(job), encoding="utf-8")
        result_path.unlink(missing_ok=True)
        started = time.perf_counter()
        code, failure = 0, None
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        log_path.write_bytes(b"")
        # both in append mode: what libraries write to the descriptors and what Python code
        # prints (sys.stdout may be another object: pytest's, rich's) land in order
        with (
            log_path.open("ab") as log,
            log_path.open("a", encoding="utf-8", buffering=1) as text,
            contextlib.redirect_stdout(text),
            contextlib.redirect_stderr(text),
        ):
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                code = worker.run_job(job, result_path)
            except SystemExit as exc:  # as the interpreter would: a message is printed, exit 1
                code = exc.code if isinstance(exc.code, int) else 1
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                    failure = exc.code
            except Exception as exc:
                traceback.print_exc()
                code, failure = 1, f"{type(exc).__name__}: {str(exc).strip()[:300]}"
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        if code and failure is None:
            failure = describe_exit(code, log_path)
        return JobOutcome(code, failure, result_path, log_path, time.perf_counter() - started)

    @staticmethod
    def _needs_a_process(job: dict[str, Any]) -> bool:
        """Steps whose library may end the interpreter, and measurements of what they built
        (their kernels run then), get a worker process."""
        if job.get("kind") == "steps":
            names = [step["method"] for step in job["steps"]]
        elif job.get("kind") == "evaluate" and job.get("producer"):
            names = [job["producer"]]
        else:
            return False
        from quantforge.plugins.manager import load_plugins

        methods = load_plugins().methods
        return any(getattr(methods.get(n), "ends_process_on_error", False) for n in names)
