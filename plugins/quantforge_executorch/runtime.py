"""An ExecuTorch program run by ExecuTorch's own runtime (``executorch.runtime``) on this CPU.

The program keeps its KV cache inside (a static cache of ``max_seq_len`` positions): a call
with ``cache_position`` starting at 0 starts a new sequence, so scoring windows and decoding
passes never see each other's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantforge import Decoder, Runtime
from quantforge.errors import UsageError

from quantforge_executorch.program import PROGRAM_FILE, read_metadata


def load_runtime(folder: Path) -> ExecuTorchRuntime:
    from executorch.runtime import Runtime as ETRuntime

    metadata = read_metadata(folder)
    program = ETRuntime.get().load_program(folder / PROGRAM_FILE)
    return ExecuTorchRuntime(program.load_method("forward"), int(metadata["max_seq_len"]))


class ExecuTorchRuntime(Runtime):
    """The program's ``forward(input_ids, cache_position) -> logits`` method."""

    def __init__(self, method: Any, max_seq_len: int) -> None:
        self.method = method
        # the program's dynamic length stops one short of its cache
        self.context_length = max_seq_len - 1

    def _check(self, n: int) -> None:
        if n > self.context_length:
            raise UsageError(
                f"{n} tokens exceed this ExecuTorch program's {self.context_length}",
                hint="build it with a larger max_seq_len",
            )

    def run(self, tokens: Sequence[int], start: int) -> Any:
        import torch

        ids = torch.tensor([list(tokens)], dtype=torch.long)
        positions = torch.arange(start, start + len(tokens), dtype=torch.long)
        return self.method.execute([ids, positions])[0]

    def logits(self, input_ids: Sequence[int]) -> Any:
        ids = list(input_ids)
        self._check(len(ids))
        return self.run(ids, 0)[0].float()

    def decoder(self, max_length: int) -> Decoder:
        self._check(max_length)
        return _ExecuTorchDecoder(self)

    def close(self) -> None:
        del self.method


class _ExecuTorchDecoder(Decoder):
    """Feeds tokens at the next cache positions of the program's own cache."""

    def __init__(self, runtime: ExecuTorchRuntime) -> None:
        self.runtime = runtime
        self.seen = 0

    def feed(self, tokens: Sequence[int]) -> Any:
        import numpy as np

        out = self.runtime.run(tokens, self.seen)
        self.seen += len(tokens)
        return np.asarray(out[0, -1].float().numpy(), dtype=np.float32)
