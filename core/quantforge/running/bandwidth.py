"""This machine's memory-read bandwidth, measured once per machine and kept in the cache.

Decoding one token reads every weight once, so a runtime decodes at most
``bandwidth / bytes of weights`` tokens a second: the roofline that the speed evaluator
compares its decode speed against (``roofline_pct``). The bandwidth is measured by
summing a buffer much larger than the caches with every core this process may use (torch's
threaded sum; numpy's single-threaded one where torch is absent, which the method says),
best of several passes. It is kept per machine (host name, CPU, memory) in
``CACHE/machine/``, so every measurement on a machine shares one figure, and it goes into
each measurement's provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BUFFER_BYTES = 512 * 2**20
PASSES = 5


@dataclass(frozen=True)
class Bandwidth:
    """A machine's measured memory-read bandwidth, and how it was measured."""

    bytes_per_second: float
    method: str
    machine: str
    measured_at: str

    @property
    def gb_per_s(self) -> float:
        return self.bytes_per_second / 1e9


def machine_key() -> str:
    """What tells one machine from another: host name, processor, memory size."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        pages = 0
    cpu = platform.processor() or platform.machine()
    return f"{socket.gethostname()} {cpu} {pages}"


def _kept_at(cache_dir: Path, key: str) -> Path:
    return cache_dir / "machine" / f"bandwidth-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def kept_bandwidth(cache_dir: Path) -> Bandwidth | None:
    """The bandwidth of this machine as ``cache_dir`` keeps it, or ``None`` (not measured)."""
    try:
        return Bandwidth(**json.loads(_kept_at(cache_dir, machine_key()).read_text("utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def machine_bandwidth(cache_dir: Path) -> Bandwidth:
    """The bandwidth of this machine from ``cache_dir``, measured now if it is not there."""
    kept = kept_bandwidth(cache_dir)
    if kept is not None:
        return kept
    from quantforge.running import provenance

    key = machine_key()
    path = _kept_at(cache_dir, key)

    per_second, method = measure()
    found = Bandwidth(per_second, method, key, provenance.now())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(found)), encoding="utf-8")
    tmp.replace(path)
    return found


def measure_apart(cache_dir: Path) -> Bandwidth:
    """:func:`machine_bandwidth` in a process of its own: a measurement worker that needs
    the figure keeps its own peak memory free of the buffer (it runs this alone, holding
    the machine)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "quantforge.running.bandwidth", str(cache_dir)],
        capture_output=True,
        text=True,
    )
    kept = kept_bandwidth(cache_dir)
    if done.returncode or kept is None:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"measuring the memory bandwidth failed: {lines[-1]}")
    return kept


def measure(size: int = BUFFER_BYTES, passes: int = PASSES) -> tuple[float, str]:
    """Bytes a second read by summing ``size`` bytes of float32, best of ``passes``."""
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        buffer = torch.ones(size // 4, dtype=torch.float32)
        threads = torch.get_num_threads()

        def once() -> None:
            buffer.sum()

        method = f"torch sum of {size // 2**20} MiB float32, {threads} threads, best of {passes}"
    else:
        import numpy

        array = numpy.ones(size // 4, dtype=numpy.float32)

        def once() -> None:
            array.sum()

        method = f"numpy sum of {size // 2**20} MiB float32, 1 thread, best of {passes}"
    once()  # pages touched, code warm
    best = min(_timed(once) for _ in range(passes))
    return size / best, method


def _timed(call: object) -> float:
    assert callable(call)
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


if __name__ == "__main__":
    import sys

    print(json.dumps(asdict(machine_bandwidth(Path(sys.argv[1])))))
