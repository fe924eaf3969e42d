"""Progress of a step that walks a model's decoder blocks in order (GPTQ, AWQ, ...).

Calibrated methods quantize one decoder block after another and can take minutes to
hours. :func:`blocks_progress` watches the blocks' forwards: when block ``i`` runs for
the first time, the ``i`` blocks before it are done. It reports through
:meth:`quantforge.interfaces.StepContext.progress`, which the host shows with the
elapsed time and an estimate of what is left. Any library that forwards the blocks
in order works with it; nothing of the library's is patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from quantforge.interfaces import StepContext


def decoder_blocks(model: Any) -> list[Any]:
    """The longest ``ModuleList`` in ``model`` (a decoder's blocks: ``model.layers``,
    ``transformer.h``, ...), or ``[]``."""
    from torch import nn

    root = getattr(model, "model", model) if not isinstance(model, nn.Module) else model
    if not isinstance(root, nn.Module):
        return []
    best: list[Any] = []
    for _, module in root.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            best = list(module)
    return best


@contextlib.contextmanager
def blocks_progress(model: Any, context: StepContext, unit: str = "layers") -> Iterator[None]:
    """Report ``done/total`` blocks while the body runs; all done when it returns."""
    blocks = decoder_blocks(model)
    total = len(blocks)
    if not total:
        yield
        return
    reached = [-1]

    def watcher(index: int) -> Any:
        def pre_hook(_module: Any, _args: Any) -> None:
            if index > reached[0]:
                reached[0] = index
                context.progress(index, total, unit)

        return pre_hook

    handles = [block.register_forward_pre_hook(watcher(i)) for i, block in enumerate(blocks)]
    context.progress(0, total, unit)
    try:
        yield
        context.progress(total, total, unit)
    finally:
        for handle in handles:
            handle.remove()
