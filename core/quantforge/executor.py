"""Start a worker process per unit of work, watch it, and say plainly how it ended."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A long step's progress, as the worker last wrote it (see StepContext.progress).
ProgressCallback = Callable[[dict[str, Any]], None]
POLL_SECONDS = 1.0
HOST_PID = "QUANTFORGE_HOST_PID"  # the worker dies with this process (see worker.py)


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


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker and everything it started (it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_job(
    job: dict[str, Any],
    work_dir: Path,
    stem: str,
    timeout: float,
    on_progress: ProgressCallback | None = None,
) -> JobOutcome:
    """Run one job in a fresh ``python -m quantforge.worker`` beside ``work_dir``'s files
    ``STEM.job.json``, ``STEM.result.json``, ``STEM.log`` and ``STEM.progress.json``; kill it
    at ``timeout``. ``on_progress`` gets what a long step reports, as it reports it."""
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
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quantforge.worker", str(job_path), str(result_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", HOST_PID: str(os.getpid())},
        )
        code: int | None = None
        try:
            while code is None:
                left = deadline - time.perf_counter()
                if left <= 0:
                    _kill_group(proc)
                    return JobOutcome(
                        None,
                        f"timed out after {timeout:g}s",
                        result_path,
                        log_path,
                        time.perf_counter() - started,
                    )
                try:
                    code = proc.wait(timeout=min(POLL_SECONDS, left))
                except subprocess.TimeoutExpired:
                    watcher.poll()
        except BaseException:  # the host is interrupted or terminated: its worker goes too
            _kill_group(proc)
            raise
    seconds = time.perf_counter() - started
    failure = None if code == 0 else describe_exit(code, log_path)
    return JobOutcome(code, failure, result_path, log_path, seconds)


class LocalExecutor:
    """Runs jobs as child processes of this one, one at a time; ``memory_limit`` (bytes)
    caps each worker's address space (RLIMIT_AS), so a step that needs more fails alone."""

    name = "local"

    def __init__(self, work_dir: Path, memory_limit: int | None = None) -> None:
        self.work_dir = work_dir
        self.memory_limit = memory_limit
        work_dir.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def limited(self, job: dict[str, Any]) -> dict[str, Any]:
        """``job`` with the worker memory limit the worker applies to itself."""
        return {**job, "memory_limit": self.memory_limit} if self.memory_limit else job

    def stem(self, label: str) -> str:
        self._count += 1
        return f"{self._count:03d}-{label}".replace("/", "_")

    def run(
        self,
        job: dict[str, Any],
        label: str,
        timeout: float,
        on_progress: ProgressCallback | None = None,
    ) -> JobOutcome:
        return run_job(self.limited(job), self.work_dir, self.stem(label), timeout, on_progress)

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
        """Nothing to release."""


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

    def run(
        self,
        job: dict[str, Any],
        label: str,
        timeout: float,
        on_progress: ProgressCallback | None = None,
    ) -> JobOutcome:
        import traceback

        from quantforge import worker

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
        from quantforge.plugins import load_plugins

        methods = load_plugins().methods
        return any(getattr(methods.get(n), "ends_process_on_error", False) for n in names)


EXECUTORS = ("local", "inline", "ray")


def make_executor(
    kind: str, work_dir: Path, address: str | None = None, memory_limit: int | None = None
) -> LocalExecutor:
    """``local`` (child processes, the default), ``inline`` (this process; for tests and quick
    looks) or ``ray`` (Ray tasks, local or a cluster)."""
    from quantforge.errors import UsageError

    if kind in ("local", "inline"):
        if address:
            raise UsageError("--ray-address goes with --executor ray")
        if kind == "inline" and memory_limit:
            raise UsageError(
                "--worker-memory caps worker processes, and --executor inline starts none",
                hint="use --executor local (the default) or ray",
            )
        return (
            LocalExecutor(work_dir, memory_limit) if kind == "local" else InlineExecutor(work_dir)
        )
    if kind == "ray":
        from quantforge.ray_executor import RayExecutor

        return RayExecutor(work_dir, address, memory_limit)
    from quantforge.errors import UnknownNameError

    raise UnknownNameError("executor", kind, EXECUTORS)
