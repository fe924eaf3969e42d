"""Locks that let several runs share one cache: one process builds a thing, the others wait.

A lock is an advisory ``flock`` on a small file under ``CACHE/locks``. The kernel drops it
when its holder exits by any means (SIGKILL included), so a killed run never leaves a
stale lock behind. Lock files are never deleted: deleting one while another process
waits on it would let two holders in.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def held(
    cache_dir: Path, names: Iterable[str], on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold the locks ``names`` (taken in sorted order, so two runs never deadlock);
    ``on_wait`` is called once if another process holds one of them."""
    folder = cache_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        waited = False
        for name in sorted(set(names)):
            fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            stack.callback(os.close, fd)
            if not _try_lock(fd):
                if on_wait is not None and not waited:
                    on_wait()
                    waited = True
                _lock(fd)
        yield


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process locking
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)
