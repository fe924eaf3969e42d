"""An MLX folder loaded by mlx-lm and run on MLX's CPU device, fed the HF base's token ids."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantforge import Decoder, Runtime
from quantforge.errors import UsageError

from quantforge_mlx.library import import_mlx, set_blas_threads


def load_runtime(folder: Path) -> MLXRuntime:
    """The model in ``folder`` (an MLX export or quantization), loaded by mlx-lm."""
    import_mlx()
    from mlx_lm.utils import load_model

    try:
        model, config = load_model(folder, lazy=False, trust_remote_code=False)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(
            f"mlx-lm cannot load {folder}: {exc}", hint="export it with the `mlx` exporter"
        ) from None
    context = int(config.get("max_position_embeddings") or 4096)
    return MLXRuntime(model, context)


class MLXRuntime(Runtime):
    """An mlx-lm model; logits come back as float32 torch tensors, like every runtime's."""

    def __init__(self, model: Any, context_length: int) -> None:
        self.model = model
        self.context_length = context_length

    def _check(self, n: int) -> None:
        if n > self.context_length:
            raise UsageError(f"{n} tokens exceed the model's context of {self.context_length}")

    def logits(self, input_ids: Sequence[int]) -> Any:
        import numpy as np
        import torch

        mx = import_mlx()
        ids = list(input_ids)
        self._check(len(ids))
        out = self.model(mx.array([ids])).astype(mx.float32)
        return torch.from_numpy(np.array(out[0], copy=True))

    def decoder(self, max_length: int) -> Decoder:
        self._check(max_length)
        return _MLXDecoder(self.model)

    def set_threads(self, threads: int) -> bool:
        # MLX's own CPU kernels size themselves; only the BLAS behind its float products
        # keeps a pool, and it can be resized in place when it is OpenBLAS
        return set_blas_threads(threads)

    def close(self) -> None:
        del self.model


class _MLXDecoder(Decoder):
    """mlx-lm's KV cache (``make_prompt_cache``), fed token ids."""

    def __init__(self, model: Any) -> None:
        from mlx_lm.models.cache import make_prompt_cache

        self.model = model
        self.cache = make_prompt_cache(model)

    def feed(self, tokens: Sequence[int]) -> Any:
        import numpy as np

        mx = import_mlx()
        out = self.model(mx.array([list(tokens)]), cache=self.cache)
        return np.array(out[0, -1].astype(mx.float32), copy=True)
