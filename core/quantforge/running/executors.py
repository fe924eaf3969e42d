"""Choosing an executor by name: ``local``, ``inline`` or ``ray``. The local and Ray
executors sit beside each other; only this module knows both.
"""

from __future__ import annotations

from pathlib import Path

from quantforge.running.executor import Executor
from quantforge.running.local_executor import InlineExecutor, LocalExecutor

EXECUTORS = ("local", "inline", "ray")


def make_executor(
    kind: str,
    work_dir: Path,
    address: str | None = None,
    memory_limit: int | None = None,
    shared: tuple[Path, ...] = (),
    jobs: int | None = None,
) -> Executor:
    """``local`` (child processes, the default), ``inline`` (this process; for tests and quick
    looks) or ``ray`` (Ray tasks, local or a cluster; every node must see ``work_dir`` and
    the folders in ``shared``)."""
    from quantforge.errors import UsageError

    if kind in ("local", "inline"):
        if address:
            raise UsageError("--ray-address goes with --executor ray")
        if kind == "inline" and memory_limit:
            raise UsageError(
                "--worker-memory caps worker processes, and --executor inline starts none",
                hint="use --executor local (the default) or ray",
            )
        if kind == "inline" and jobs and jobs > 1:
            raise UsageError(
                "--executor inline runs one job at a time in this process",
                hint="leave out --jobs, or use --executor local (the default) or ray",
            )
        return (
            LocalExecutor(work_dir, memory_limit) if kind == "local" else InlineExecutor(work_dir)
        )
    if kind == "ray":
        from quantforge.running.ray_executor import RayExecutor

        return RayExecutor(work_dir, address, memory_limit, shared)
    from quantforge.errors import UnknownNameError

    raise UnknownNameError("executor", kind, EXECUTORS)
