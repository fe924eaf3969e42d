"""Importing MLX on Linux: the ``mlx-cpu`` wheel, with a fast BLAS when the system has one.

The ``mlx-cpu`` wheel for Linux bundles the reference (netlib) BLAS, which multiplies float
matrices about 50 times slower than OpenBLAS (a 1024 x 1024 float32 product: 0.71 s
against 0.014 s on two cores). MLX calls BLAS through ordinary dynamic symbols, so a BLAS
loaded into the process's global scope *before* MLX loads serves those calls instead. That
is what :func:`load_blas` does when it finds the system's OpenBLAS (Debian's
``libopenblas0-pthread``). MLX's own quantized kernels do not use BLAS and are not affected.
``QUANTFORGE_MLX_BLAS=bundled`` keeps the wheel's BLAS.

Two orderings matter. MLX must load after OpenBLAS, and transformers imports ``mlx.core``
on its own whenever MLX is installed (``is_mlx_array``, called when a tokenizer converts its
output), so the plugin installs an import hook (:func:`blas_before_mlx`) that runs
:func:`load_blas` at the first import of ``mlx.core``, whoever makes it. And PyTorch must
load *before* OpenBLAS: a BLAS in the global scope first would also serve PyTorch's own
LAPACK and BLAS calls, changing what every other runtime in the process measures.
"""

from __future__ import annotations

import ctypes
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

BLAS_ENV = "QUANTFORGE_MLX_BLAS"
# where Debian and most distributions put OpenBLAS's runtime library
OPENBLAS_PATHS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

_blas: dict[str, object] = {}


def _openblas() -> Path | None:
    for candidate in OPENBLAS_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return None


def load_blas() -> str:
    """Load the system's OpenBLAS into the global symbol scope, once, before MLX loads;
    return what MLX's float matrix products run on, for provenance."""
    if "label" in _blas:
        return str(_blas["label"])
    label = "the reference BLAS bundled with mlx-cpu"
    if sys.platform == "darwin":
        label = "Accelerate"
    elif os.environ.get(BLAS_ENV, "").lower() != "bundled" and "mlx.core" not in sys.modules:
        path = _openblas()
        if path is not None:
            if importlib.util.find_spec("torch") is not None:
                import torch  # noqa: F401 - binds its own BLAS before OpenBLAS is global
            library = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            _blas["library"] = library
            label = f"OpenBLAS ({path.name})"
            try:
                config = library.openblas_get_config
                config.restype = ctypes.c_char_p
                label = f"OpenBLAS {config().decode().split()[1]}"
            except (AttributeError, IndexError, UnicodeDecodeError):
                pass
    _blas["label"] = label
    return label


def set_blas_threads(threads: int) -> bool:
    """Resize OpenBLAS's thread pool when it is the BLAS in use; say whether it could."""
    library = _blas.get("library")
    setter = getattr(library, "openblas_set_num_threads", None)
    if setter is None:
        return False
    setter(ctypes.c_int(threads))
    return True


class _BlasBeforeMLX(importlib.abc.MetaPathFinder):
    """Runs :func:`load_blas` when ``mlx.core`` is first imported, then steps aside."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "mlx.core":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            load_blas()
        return None


def blas_before_mlx() -> None:
    """Make the first import of ``mlx.core`` in this process come after :func:`load_blas`
    (cheap: nothing is loaded until then)."""
    if "mlx.core" not in sys.modules and not any(
        isinstance(f, _BlasBeforeMLX) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _BlasBeforeMLX())


def import_mlx() -> ModuleType:
    """``mlx.core``, imported after :func:`load_blas`."""
    load_blas()
    import mlx.core as mx

    return mx
