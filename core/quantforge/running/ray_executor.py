"""Run the runner's jobs as Ray tasks: a local Ray instance by default, or a cluster by address.

Each job (a variant's steps, a measurement, tokenizing) becomes one Ray task that starts
the same ``python -m quantforge.running.worker`` the local executor starts, on whichever node
has the resources the job asks for: CPUs, memory, a GPU when a step or target needs
one, and custom resources a target declares (a node with a Raspberry Pi attached can
offer ``rpi5``). Every job whose inputs are ready is in flight at once; Ray's resource
accounting holds back what does not fit. Artifacts, logs and results move through the
run and cache folders, which must be on a path every node shares: before any job, a
probe task on each node reads a file the driver wrote there, and a node that cannot
see it stops the run in one line. The results store is written by the driver as with
the local executor. A task whose Ray worker dies is retried once, then reported as that
job's failure; the run goes on.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from quantforge.errors import ExecutorError, MissingDependencyError, one_line
from quantforge.running.executor import JobOutcome, ProgressCallback, ProgressWatcher, run_job
from quantforge.running.graph import Capacity, MachineClaim
from quantforge.running.local_executor import LocalExecutor

RETRIES = 1
IN_FLIGHT = 256  # jobs handed to Ray at once; Ray queues what its nodes cannot take yet


def _run_on_node(job: dict[str, Any], work_dir: str, stem: str, timeout: float) -> JobOutcome:
    """The Ray task: note where and when it ran (``STEM.ray.json``), then run the worker
    there."""
    import json
    import platform
    import time

    import ray

    context = ray.get_runtime_context()
    placement = {
        "node_id": context.get_node_id(),
        "hostname": platform.node(),
        "resources": context.get_assigned_resources(),  # type: ignore[no-untyped-call]
        "requested": job.get("resources"),
        "started": time.time(),
    }
    folder = Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / f"{stem}.ray.json"
    record.write_text(json.dumps(placement), encoding="utf-8")
    outcome = run_job(job, folder, stem, timeout)
    record.write_text(json.dumps({**placement, "ended": time.time()}), encoding="utf-8")
    return outcome


def _sees(path: str, token: str) -> tuple[str, str, bool]:
    """The probe task: whether this node reads ``token`` in the file at ``path``."""
    import platform

    import ray

    try:
        seen = Path(path).read_text(encoding="utf-8") == token
    except OSError:
        seen = False
    return ray.get_runtime_context().get_node_id(), platform.node(), seen


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """``{"CPU": 1, "GPU": 1, "memory": bytes, "rpi5": 1}`` -> ``.options()`` arguments."""
    given = dict(resources)
    options: dict[str, Any] = {"num_cpus": given.pop("CPU", 1)}
    if "GPU" in given:
        options["num_gpus"] = given.pop("GPU")
    if "memory" in given:
        options["memory"] = int(given.pop("memory"))
    if given:
        options["resources"] = given
    return options


def _reachable(address: str) -> None:
    """Refuse fast when nothing listens at ``host:port`` (Ray itself waits minutes)."""
    if address == "auto" or address.startswith("ray://"):
        target = address.removeprefix("ray://")
        if address == "auto":
            return
    else:
        target = address
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
            return
    except (OSError, ValueError) as exc:
        raise ExecutorError(
            f"cannot reach the Ray cluster at {address} ({exc})",
            hint="check --ray-address (HOST:PORT of the head node), or leave out "
            "--executor ray to run on this machine",
        ) from None


class RayExecutor(LocalExecutor):
    """Submits each job as a Ray task with the resources it asks for."""

    name = "ray"

    def __init__(
        self,
        work_dir: Path,
        address: str | None = None,
        memory_limit: int | None = None,
        shared: tuple[Path, ...] = (),
    ) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("--executor ray", ["ray"], "ray") from None
        if address and not ray.is_initialized():
            _reachable(address)
        super().__init__(work_dir, memory_limit)
        self.ray = ray
        self.started_here = False
        if not ray.is_initialized():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self.started_here = True
        self.task = ray.remote(_run_on_node)
        self._refs: set[Any] = set()
        self._refs_lock = threading.Lock()
        try:
            for folder in (work_dir, *shared):
                self.check_shared(folder)
        except BaseException:
            self.close()
            raise

    def check_shared(self, folder: Path) -> None:
        """Refuse when a node with CPUs cannot read a file written in ``folder`` here."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        probe = folder / f".ray-probe-{token}"
        probe.write_text(token, encoding="utf-8")
        try:
            every = self.ray.nodes()  # type: ignore[no-untyped-call]
            nodes = [n for n in every if n.get("Alive") and n["Resources"].get("CPU")]
            task = self.ray.remote(_sees)
            refs = [
                task.options(
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                ).remote(str(probe), token)
                for n in nodes
            ]
            blind = [(node, host) for node, host, seen in self.ray.get(refs) if not seen]
        finally:
            probe.unlink(missing_ok=True)
        if blind:
            node, host = blind[0]
            raise ExecutorError(
                f"Ray node {node[:12]} on {host} cannot see {folder}, where jobs read and "
                "write artifacts and results",
                hint="put the cache (QUANTFORGE_CACHE_DIR) and --out on a path every node "
                "mounts, or run without --executor ray",
            )

    def capacity(self, max_jobs: int | None) -> Capacity:
        """Every ready job in flight (up to ``max_jobs``): Ray places them on its nodes."""
        return Capacity(max_jobs or IN_FLIGHT)

    def run(
        self,
        job: dict[str, Any],
        label: str,
        timeout: float,
        on_progress: ProgressCallback | None = None,
        claim: MachineClaim | None = None,  # never given: Ray places the jobs (Capacity)
    ) -> JobOutcome:
        stem = self.stem(label)
        if self.closed:
            return self.stopped(stem)
        # the worker writes its progress into the shared work folder; the driver reads it
        watcher = ProgressWatcher(self.work_dir / f"{stem}.progress.json", on_progress)
        options = ray_options(job.get("resources") or {"CPU": 1})
        ref = self.task.options(**options, max_retries=RETRIES).remote(
            self.limited(job), str(self.work_dir), stem, timeout
        )
        with self._refs_lock:
            self._refs.add(ref)
        try:
            while not self.ray.wait([ref], timeout=1.0)[0]:
                watcher.poll()
            outcome: JobOutcome = self.ray.get(ref)
            return outcome
        except self.ray.exceptions.RayError as exc:
            log = self.work_dir / f"{stem}.log"
            return JobOutcome(
                None,
                f"the Ray task failed after {RETRIES + 1} tries: {one_line(exc)}",
                self.work_dir / f"{stem}.result.json",
                log,
                0.0,
            )
        finally:
            with self._refs_lock:
                self._refs.discard(ref)

    def close(self) -> None:
        """Cancel the tasks in flight (their workers die with them), then shut down the
        Ray instance this executor started."""
        if self.closed:
            return
        self.closed = True
        with self._refs_lock:
            refs = list(self._refs)
        for ref in refs:
            with contextlib.suppress(Exception):  # finished meanwhile, or Ray is gone
                self.ray.cancel(ref, force=True)
        if self.started_here:
            self.ray.shutdown()
