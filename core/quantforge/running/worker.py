"""The child process that runs steps: ``python -m quantforge.running.worker JOB.json RESULT.json``.

The host (:mod:`quantforge.running.executor`) starts one per unit of work and watches it;
this side loads the plugins again, runs the job and writes JSON results. A crash
here is the host's business: it reads what was written and reports the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantforge.errors import is_disk_full, one_line
from quantforge.interfaces import (
    Artifact,
    CalibrationSet,
    EvalContext,
    Quantizer,
    Runtime,
    StepContext,
)
from quantforge.model import artifacts
from quantforge.plugins.manager import Plugins, load_plugins
from quantforge.running import provenance
from quantforge.running.executor import MACHINE_GATE, THREAD_VARIABLES

# the exit status of a job that failed on its input data (said in its result's "error")
INPUT_ERROR = 3


def _artifact(data: dict[str, Any]) -> Artifact:
    return Artifact(Path(data["path"]), data["format"], data.get("manifest", {}))


def _append(result: Path, record: dict[str, Any]) -> None:
    with result.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def run_steps(plugins: Plugins, job: dict[str, Any], result: Path) -> None:
    """Quantize/export steps sharing one input; the input model is loaded once for all."""
    calibration = None
    if job.get("calibration_path"):
        rows = json.loads(Path(job["calibration_path"]).read_text(encoding="utf-8"))
        calibration = CalibrationSet(rows["samples"], rows["fingerprint"], rows["spec"])
    context = StepContext(
        seed=job.get("seed", 0),
        calibration=calibration,
        log=lambda msg: print(msg, flush=True),
    )
    progress_path = Path(job["progress_path"]) if job.get("progress_path") else None
    failed: dict[str, str] = {}  # step key -> why (a later step of a chain may need it)
    machine = Machine.from_environment()
    for step in job["steps"]:
        if machine is not None:  # between steps: cores that went idle meanwhile are ours
            use_cores(machine.pause())
        context.base_model = Path(step["base_path"]) if step.get("base_path") else None
        if progress_path is not None:
            context.report = _progress_writer(progress_path, step["key"], step["method"])
        method = plugins.methods.get(step["method"])
        built_by = step["source"].get("manifest", {}).get("built_by")
        if built_by in failed:  # a chain: the step before this one failed in this worker
            why = f"its input step failed: {failed[built_by]}"
            _append(result, {"key": step["key"], "ok": False, "error": why})
            failed[step["key"]] = why
            continue
        try:
            method.check_available()
            source = (
                artifacts.read_artifact(Path(step["source"]["path"]))
                if built_by
                else _artifact(step["source"])
            )
            with artifacts.building(Path(step["output"])) as tmp:
                if isinstance(method, Quantizer):
                    method.quantize(source, step["options"], tmp, context)
                else:
                    method.export(source, step["options"], tmp, context)
                artifacts.write_manifest(tmp, step["manifest"])
            _append(result, {"key": step["key"], "ok": True})
        except Exception as exc:
            # the result line first: on a full disk the traceback may not fit in the log
            error = explain(exc, job.get("memory_limit"))
            record = {"key": step["key"], "ok": False, "error": error}
            failed[step["key"]] = error
            if is_disk_full(exc):
                record["disk_full"] = True
            _append(result, record)
            traceback.print_exc()


def _progress_writer(path: Path, key: str, method: str) -> Callable[[int, int, str], None]:
    """Write a step's progress where the host polls it: done, total, elapsed and an estimate
    of what is left (the mean time per unit so far), replaced atomically."""
    import time

    started = time.monotonic()

    def write(done: int, total: int, unit: str) -> None:
        elapsed = time.monotonic() - started
        eta = elapsed / done * (total - done) if 0 < done <= total else None
        record = {
            "key": key,
            "method": method,
            "done": done,
            "total": total,
            "unit": unit,
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
        }
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)

    return write


def tokenize(job: dict[str, Any], result: Path) -> None:
    import hashlib

    from transformers import AutoTokenizer

    text = Path(job["text_path"]).read_text(encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(job["model_path"])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    digest = hashlib.sha256()
    digest.update(text.encode())
    digest.update(json.dumps(ids).encode())
    result.write_text(json.dumps({"token_ids": ids, "fingerprint": "sha256:" + digest.hexdigest()}))


def calibrate(job: dict[str, Any], result: Path) -> None:
    """Tokenize the calibration source into rows; a clear error goes into the result."""
    from quantforge.errors import QuantforgeError
    from quantforge.model.calibration import CalibrationSpec, load_texts, make_rows

    spec = CalibrationSpec(**job["spec"])
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(job["model_path"])
        streams = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in load_texts(spec)]
        rows = make_rows(streams, spec)
    except QuantforgeError as exc:
        result.write_text(json.dumps({"error": str(exc)}))
        raise SystemExit(INPUT_ERROR) from None
    result.write_text(
        json.dumps({"samples": rows, "fingerprint": job["fingerprint"], "spec": job["spec"]})
    )


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> None:
    """Start the address space's high-water mark afresh (Linux >= 4.0; elsewhere a no-op)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


class Machine:
    """This worker's line to the host's machine gate (:data:`MACHINE_GATE`): ask for the
    whole machine before a timed part, give it back after."""

    def __init__(self, asks: int, grants: int) -> None:
        self.asks = asks
        self.grants = grants

    @classmethod
    def from_environment(cls) -> Machine | None:
        spec = os.environ.pop(MACHINE_GATE, "")
        if not spec:
            return None
        asks, grants = (int(fd) for fd in spec.split(","))
        for fd in (asks, grants):  # not for what this worker starts
            os.set_inheritable(fd, False)
        return cls(asks, grants)

    def acquire(self) -> list[int]:
        """Wait until nothing else runs; return every core of the machine."""
        return self._ask(b"a")

    def release(self) -> list[int]:
        """Give the machine back; return, when the jobs that asked for it meanwhile have
        had it, the cores to run the rest on beside other jobs."""
        return self._ask(b"r")

    def pause(self) -> list[int]:
        """A point where this worker may wait (between steps): a timed part that waits for
        the machine goes first. Return the cores to go on with."""
        return self._ask(b"p")

    def _ask(self, what: bytes) -> list[int]:
        """Send ``what`` and wait for the host's answer: the cores, a JSON line."""
        os.write(self.asks, what)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = os.read(self.grants, 4096)
            if not chunk:
                raise SystemExit("the host stopped while this worker waited for the machine")
            answer += chunk
        return [int(core) for core in json.loads(answer)]


class Pauses:
    """:attr:`EvalContext.pause` in a worker: at most every :attr:`EVERY` seconds, a pause
    point on the line to the host (:meth:`Machine.pause`). A timed part that waits for the
    machine runs while this worker waits there, and the worker goes on with the cores the
    host gives it: its own, and idle ones lent until the next pause. A no-op with no line
    (nothing runs beside this job) and while this worker holds the machine."""

    EVERY = 0.5

    def __init__(self, machine: Machine | None, cores: list[int]) -> None:
        self.machine = machine
        self.cores = list(cores)
        self.runtime: Runtime | None = None
        self.holding = False
        self._last = time.monotonic()

    def __call__(self) -> None:
        if self.machine is None or self.holding:
            return
        if time.monotonic() - self._last < self.EVERY:
            return
        cores = self.machine.pause()
        self._last = time.monotonic()
        if cores and cores != self.cores:
            use_cores(cores)
            self.cores = cores
            if self.runtime is not None:
                # a runtime that cannot resize goes on with its threads on the cores given
                self.runtime.set_threads(len(cores))

    def went_on(self, cores: list[int], runtime: Runtime | None) -> None:
        """The timed part is over: from here on this worker runs on ``cores``."""
        self.holding = False
        self.cores = list(cores)
        self.runtime = runtime
        self._last = time.monotonic()


def use_cores(cores: list[int]) -> None:
    """Run on ``cores``, a thread each, from now on: pinned, torch's pool resized if torch
    is loaded, and the thread variables set for libraries loaded later."""
    pin_cores(cores)
    if cores:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(len(cores))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(len(cores))


def evaluate(plugins: Plugins, job: dict[str, Any], result: Path) -> None:
    """Load one artifact on one target and run the evaluators (or prepare references).

    A measurement with timing-sensitive evaluators started beside other jobs asks the host
    for the whole machine first (:class:`Machine`), and loads and times with every core;
    it gives the machine back after the last timing-sensitive evaluator and runs the others
    on the cores the host gives it then (its own, and idle ones)."""
    target = plugins.targets.get(job["target"])
    artifact = _artifact(job["artifact"])
    tokens: dict[str, Any] = (  # none when no evaluator reads them (size alone)
        json.loads(Path(job["tokens_path"]).read_text(encoding="utf-8"))
        if job.get("tokens_path")
        else {"token_ids": [], "fingerprint": ""}
    )
    evaluators = [(plugins.evaluators.get(e["name"]), e) for e in job["evaluators"]]
    evaluators.sort(key=lambda pair: pair[0].order)
    needs: list[str] = list(target.requires)
    for evaluator, _ in evaluators:
        evaluator.check_available()
        needs.extend(evaluator.requires)
    producer = job.get("producer")

    def loader(a: Artifact) -> Any:
        if producer is None:
            return None
        method = plugins.methods.get(producer)
        needs.extend(method.requires)
        return method.load_model(a) if isinstance(method, Quantizer) else None

    context = EvalContext(
        token_ids=tokens["token_ids"],
        dataset_fingerprint=tokens["fingerprint"],
        seed=job.get("seed", 0),
        baseline_rss_bytes=0,
        base_model=Path(job["base_model"]) if job.get("base_model") else None,
    )
    measuring = job["mode"] == "measure"
    timed = [i for i, (e, _) in enumerate(evaluators) if e.timing_sensitive] if measuring else []
    alone = bool(job.get("alone"))
    line = Machine.from_environment()  # beside other jobs: pause points, and the machine
    pauses = Pauses(line, job.get("cores") or [])
    context.pause = pauses
    machine = line if timed else None  # asked for before the timed part
    bandwidth = None
    kept_in = Path(job["cache_dir"]) if timed and target.measured and job.get("cache_dir") else None
    if kept_in is not None:
        from quantforge.running.bandwidth import kept_bandwidth

        bandwidth = kept_bandwidth(kept_in)
    runtime = None

    def load() -> Runtime:
        return target.load(artifact, job["target_options"], loader)

    if any(e.needs_runtime for e, _ in evaluators) or job["mode"] == "reference":
        target.check_available()
        # Import the runtime's libraries first: memory "added by the model" excludes them.
        import importlib

        for package in target.requires:
            importlib.import_module(package)
        _reset_peak_rss()
        context.baseline_rss_bytes = _rss()
        runtime = load()  # beside other jobs
    if machine is not None:
        cores = machine.acquire()
        use_cores(cores)
        alone = True
        runtime = _with_threads(runtime, len(cores), load)
        pauses.holding = True
    pauses.runtime = runtime
    if kept_in is not None and bandwidth is None:
        from quantforge.running.bandwidth import measure_apart

        # once per machine, alone, in a process of its own (this one's peak stays its own)
        bandwidth = measure_apart(kept_in)
    if bandwidth is not None:
        context.memory_bandwidth = bandwidth.bytes_per_second
    measurements: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for index, (evaluator, spec) in enumerate(evaluators):
        try:
            if job["mode"] == "reference":
                assert runtime is not None
                out_dir = Path(spec["reference_dir"])
                with artifacts.building(out_dir) as tmp:
                    evaluator.prepare_reference(runtime, spec["options"], context, tmp)
                continue
            context.reference_dir = (
                Path(spec["reference_dir"]) if spec.get("reference_dir") else None
            )
            for m in evaluator.evaluate(artifact, runtime, spec["options"], context):
                details = dict(m.details)
                if evaluator.timing_sensitive and ("alone" in job or machine is not None):
                    details["ran_alone"] = alone  # the card says so
                measurements.append(
                    {
                        "metric": m.metric,
                        "value": m.value,
                        "unit": m.unit,
                        "better": m.better,
                        "details": details,
                        "evaluator": evaluator.name,
                        "evaluator_version": spec["version"],
                        "kind": "measured" if target.measured else "estimated",
                    }
                )
        except Exception as exc:
            traceback.print_exc()
            errors[evaluator.name] = explain(exc, job.get("memory_limit"))
        if machine is not None and index == timed[-1]:
            cores = machine.release()  # the rest beside other jobs, on the cores given
            machine = None
            use_cores(cores)
            if index + 1 < len(evaluators) and cores:
                runtime = _with_threads(runtime, len(cores), load)
            pauses.went_on(cores, runtime)
    env = provenance.environment(target.hardware(), needs)
    if bandwidth is not None:
        env["memory_bandwidth_gbs"] = bandwidth.gb_per_s
        env["memory_bandwidth_method"] = bandwidth.method
    if runtime is not None:
        runtime.close()
    result.write_text(
        json.dumps(
            {
                "measurements": measurements,
                "errors": errors,
                "environment": env,
                "dataset_fingerprint": tokens["fingerprint"],
                "measured_at": provenance.now(),
            }
        )
    )


def _with_threads(
    runtime: Runtime | None, threads: int, load: Callable[[], Runtime]
) -> Runtime | None:
    """``runtime`` on ``threads`` threads: its pool resized, or (a runtime that fixes its
    threads when loaded) loaded again."""
    if runtime is None or runtime.set_threads(threads):
        return runtime
    runtime.close()
    return load()


# what allocators say when the address space is used up (Python, PyTorch, C++, glibc)
OUT_OF_MEMORY = ("can't allocate memory", "cannot allocate memory", "bad_alloc", "out of memory")


def explain(exc: BaseException, memory_limit: int | None) -> str:
    """One line for ``exc``; one that ran out of memory under the worker's cap says so."""
    line = one_line(exc)
    if memory_limit and (
        isinstance(exc, MemoryError) or any(t in line.lower() for t in OUT_OF_MEMORY)
    ):
        return (
            f"ran out of memory within the worker limit of {memory_limit / 2**30:.2f} GB "
            f"(--worker-memory; raise it or free memory): {line}"
        )
    return line


def limit_memory(limit: int | None) -> None:
    """Cap this process's address space at ``limit`` bytes (RLIMIT_AS; POSIX only)."""
    if not limit:
        return
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def start_on(cores: list[int] | None) -> None:
    """Pin this fresh worker to ``cores`` before it imports its libraries, in a way that
    lets it use more cores later (:func:`use_cores`)."""
    if cores:
        load_openmp()
    pin_cores(cores)


def load_openmp() -> None:
    """Load the OpenMP runtime this job's libraries use before the worker pins itself.

    GNU OpenMP counts the CPUs a process may use once, when it loads, and throttles its
    threads' spinning whenever more threads run than it counted. A worker pinned to one
    core before torch loaded it could later be handed the whole machine (a timed part)
    and run two threads, but they would wait on each other through the kernel: decode ran
    at 1.0 cores' worth of CPU instead of 1.9, 15-40% slower than in a fresh process.
    Loaded first, it counts every core, and the thread variables still size its pool."""
    import ctypes
    import ctypes.util
    import importlib.util

    spec = importlib.util.find_spec("torch")  # torch ships its own, which it loads first
    found: list[str | None] = (
        [str(p) for p in sorted(Path(spec.origin).parent.glob("lib/libgomp*.so*"))]
        if spec and spec.origin
        else []
    )
    if not found:  # the system's (it runs ldconfig: only when torch has none)
        found = [ctypes.util.find_library("gomp")]
    for library in found:
        if library:
            with contextlib.suppress(OSError):
                ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
                return


def pin_cores(cores: list[int] | None) -> None:
    """Run on the cores the run's scheduler gave this job (Linux), so that jobs beside each
    other do not share cores; libraries that size their thread pools by the cores they may
    use (``os.sched_getaffinity``) follow."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return
    # every thread: an affinity is a thread's own, and threads the libraries started on
    # the cores this job had before (a thread pool) would stay there
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for thread in threads:
        with contextlib.suppress(OSError):  # a core gone offline, a thread gone: go on
            os.sched_setaffinity(thread, cores)


def _die_with_the_host() -> None:
    """When the host dies, by any signal, this worker and every process it started go too.

    The worker leads its own process group (the executor starts it so). On Linux the kernel
    sends it SIGTERM when its parent dies (the parent-death signal), and the handler kills
    the whole group, so a converter or compiler the step started does not outlive it. A
    watchdog thread does the same within half a second if the handler cannot run (the main
    thread inside a long call that holds the interpreter).
    """
    import signal
    import threading
    import time

    host = os.environ.get("QUANTFORGE_HOST_PID")
    if not host or os.getpgrp() != os.getpid():  # started by hand: not ours to police
        return

    def end_group(*_: object) -> None:
        os.killpg(os.getpgrp(), signal.SIGKILL)

    signal.signal(signal.SIGTERM, end_group)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    def watch() -> None:
        while str(os.getppid()) == host:
            time.sleep(0.5)
        end_group()

    if str(os.getppid()) != host:  # the host died before any of this took effect
        end_group()
    threading.Thread(target=watch, name="host-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    _die_with_the_host()
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    limit_memory(job.get("memory_limit"))  # before the job imports its libraries
    start_on(job.get("cores"))
    return run_job(job, Path(args[1]))


def run_job(job: dict[str, Any], result: Path) -> int:
    """Do one job and write its result; the executor's worker process, or the inline
    executor in its own process, calls it."""
    if job["kind"] == "tokenize":
        tokenize(job, result)
        return 0
    if job["kind"] == "calibrate":
        calibrate(job, result)
        return 0
    plugins = load_plugins()
    if job["kind"] == "steps":
        run_steps(plugins, job, result)
    elif job["kind"] == "evaluate":
        evaluate(plugins, job, result)
    else:
        raise SystemExit(f"unknown job kind {job['kind']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
