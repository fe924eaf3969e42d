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


def input_energy(model: Any, ids: Any) -> dict[str, Any]:
    """Each ``nn.Linear``'s inputs on ``ids`` (one pass of the model as it is), as the sum of
    their squares per input column: the diagonal of XᵀX, which weighs each column's weight
    error in the layer's output (what llama.cpp's importance matrix holds)."""
    import torch

    energy: dict[str, Any] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):

            def keep(_m: Any, args: Any, name: str = name) -> None:
                x = args[0].detach().double()
                found = x.reshape(-1, x.shape[-1]).square().sum(0)
                energy[name] = energy[name] + found if name in energy else found

            hooks.append(module.register_forward_pre_hook(keep))
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return energy


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

    def estimated_choices(
        self,
        param_name: str,
        candidates: Iterable[tuple[str, int, Any | None]],
        energy: Any,
        measured: int = 2,
    ) -> list[Choice]:
        """Like :meth:`choices`, measuring only ``measured`` (1 or 2) of the candidates: the
        smallest, and the one in the middle by size. The others' KL is estimated from their
        output error, ``e = Σ_j energy_j Σ_i ΔW_ij²`` (``energy``: :func:`input_energy` of the
        layer), by the power law ``KL = c·e^b`` through the measured points (``b`` = 1 with
        one point; KL is quadratic in a small change of the logits, as ``e`` is)."""
        import math

        base = self.model.get_parameter(param_name).detach().double()
        found: list[tuple[str, int, Any, float]] = []
        for kind, nbytes, values in candidates:
            if values is None:
                found.append((kind, nbytes, None, 0.0))
                continue
            delta = values.reshape(base.shape).double() - base
            found.append((kind, nbytes, values, float((delta.square().sum(0) * energy).sum())))
        quantized = sorted((f for f in found if f[2] is not None), key=lambda f: f[1])
        picks = quantized[:1]
        if measured > 1 and len(quantized) > 2:
            picks.append(quantized[len(quantized) // 2])
        kls = {c.type: c.kl for c in self.choices(param_name, [f[:3] for f in picks])}
        points = [(f[3], kls[f[0]]) for f in picks if f[3] > 0 and kls[f[0]] > 0]
        exponent, scale = 1.0, 0.0
        if len(points) == 2 and points[0][0] != points[1][0]:
            (e1, k1), (e2, k2) = points
            exponent = min(max(math.log(k2 / k1) / math.log(e2 / e1), 0.5), 2.0)
        if points:
            scale = points[0][1] / points[0][0] ** exponent
        result = [
            Choice(kind, nbytes, kls[kind] if kind in kls else scale * error**exponent)
            for kind, nbytes, _values, error in found
        ]
        return sorted(result, key=lambda c: c.nbytes)
