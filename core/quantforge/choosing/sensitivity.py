"""Sensitivity of a model to one tensor: the KL divergence of its next-token distribution
from the base's when only that tensor changes, on fixed tokens.

:class:`KLProbe` holds the base's log-probabilities and measures a changed model against
them; the decoder blocks before the changed tensor's block are replayed from a recording
of the base's pass rather than recomputed (:class:`LayerReplay`), which halves the cost on
average and changes nothing (their inputs and weights are the base's).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from quantforge.choosing.allocation import Choice


def cut_rows(samples: Sequence[Sequence[int]], tokens: int) -> list[list[int]]:
    """Calibration rows cut to ``tokens`` tokens in all (the last row shortened)."""
    rows: list[list[int]] = []
    left = tokens
    for row in samples:
        if left <= 0:
            break
        rows.append(list(row[:left]))
        left -= len(rows[-1])
    return rows


class LayerReplay:
    """Skips the decoder blocks before the one a tensor is in: their outputs do not change,
    so they are recorded once (on the base) and returned as they were. Blocks are the
    numbered children of the model's longest ``ModuleList`` (``model.layers``, ``h``, ...)."""

    def __init__(self, model: Any) -> None:
        import torch

        self.layers: Any = None
        self.prefix = ""
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and (
                self.layers is None or len(module) > len(self.layers)
            ):
                self.layers, self.prefix = module, name + "."
        self.outputs: dict[int, Any] = {}

    def block_of(self, param_name: str) -> int | None:
        if self.layers is None or not param_name.startswith(self.prefix):
            return None
        index = param_name[len(self.prefix) :].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    @contextmanager
    def recording(self) -> Iterator[None]:
        hooks = []
        for i, layer in enumerate(self.layers or []):

            def keep(_m: Any, _a: Any, out: Any, i: int = i) -> None:
                self.outputs[i] = out

            hooks.append(layer.register_forward_hook(keep))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    @contextmanager
    def replaying(self, block: int | None) -> Iterator[None]:
        patched = []
        for i in range(block or 0):
            if i not in self.outputs:
                break
            layer = self.layers[i]
            layer.forward = lambda *_a, _out=self.outputs[i], **_k: _out
            patched.append(layer)
        try:
            yield
        finally:
            for layer in patched:
                del layer.forward


class KLProbe:
    """The base's log-probabilities on ``rows`` (cut to one length), and the mean KL per token
    of the model as it is now against them."""

    def __init__(self, model: Any, rows: Sequence[Sequence[int]]) -> None:
        import torch

        width = min(len(r) for r in rows)
        self.model = model
        self.ids = torch.tensor([list(r[:width]) for r in rows], dtype=torch.long)
        self.replay = LayerReplay(model)
        with self.replay.recording():
            self.reference = self._log_probs()
        self.probs = self.reference.exp()
        self.tokens = self.ids.numel()

    def _log_probs(self) -> Any:
        import torch

        with torch.inference_mode():
            return torch.log_softmax(self.model(self.ids).logits.double(), -1)

    def block_of(self, param_name: str) -> int | None:
        return self.replay.block_of(param_name)

    def kl(self, block: int | None = None) -> float:
        """KL now; ``block``: the first decoder block whose weights differ from the base's
        (``None``: anything may differ, run every block)."""
        with self.replay.replaying(block):
            got = self._log_probs()
        return max(float((self.probs * (self.reference - got)).sum()) / self.tokens, 0.0)

    def choices(
        self, param_name: str, candidates: Iterable[tuple[str, int, Any | None]]
    ) -> list[Choice]:
        """Each way ``param_name`` can be stored, measured alone: ``candidates`` yields its
        type, its bytes and the values the model then computes with (a tensor of the
        parameter's shape; ``None``: the base's own values, KL 0). The parameter is restored
        afterwards. Returns the choices smallest first."""
        import torch

        param = self.model.get_parameter(param_name)
        original = param.detach().clone()
        block = self.block_of(param_name)
        found: list[Choice] = []
        try:
            for kind, nbytes, values in candidates:
                if values is None:
                    found.append(Choice(kind, nbytes, 0.0))
                    continue
                with torch.no_grad():
                    param.copy_(values.reshape(param.shape).to(param.dtype))
                found.append(Choice(kind, nbytes, self.kl(block)))
        finally:
            with torch.no_grad():
                param.copy_(original)
        return sorted(found, key=lambda c: c.nbytes)
