"""First-party device target: this machine's CPU, running HF-format variants with transformers."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quantforge import Artifact, Decoder, Option, OptionSet, Runtime, Target, hookimpl
from quantforge.errors import TargetUnavailableError
from quantforge.interfaces import gpu_visible
from quantforge.options import OptionValue


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class LocalCPU(Target):
    """Runs ``hf`` variants (plain, bitsandbytes, RTN, ...) on this machine's CPU."""

    name = "cpu"
    description = "this machine's CPU, with transformers (measured)"
    formats = frozenset({"hf"})
    measured = True
    requires = ("torch", "transformers")
    extra = "torch"
    options = OptionSet([Option("threads", int, 0, "torch threads (0: torch's default)", min=0)])

    def hardware(self) -> str:
        import psutil

        mem = psutil.virtual_memory().total / 2**30
        return f"{_cpu_name()}, {os.cpu_count()} cores, {mem:.1f} GiB RAM ({platform.machine()})"

    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        import torch
        from transformers import AutoModelForCausalLM

        threads = int(options.get("threads", 0))
        if threads:
            torch.set_num_threads(threads)
        model = loader(artifact)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(artifact.path, device_map="cpu")
        model.eval()
        return TransformersRuntime(model, torch)


class LocalCUDA(LocalCPU):
    """Runs ``hf`` variants on this machine's CUDA GPU; available only when one is visible."""

    name = "cuda"
    description = "this machine's CUDA GPU, with transformers (measured; needs a GPU)"
    options = OptionSet([Option("device", int, 0, "CUDA device index", min=0)])

    def unavailable_reason(self) -> str | None:
        missing = super().unavailable_reason()
        if missing:
            return missing
        if not gpu_visible():
            return "no CUDA GPU is visible on this machine (use the cpu target)"
        return None

    def resources(self) -> dict[str, float]:
        return {"GPU": 1}

    def hardware(self) -> str:
        import torch

        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB ({_cpu_name()} host)"

    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        import torch
        from transformers import AutoModelForCausalLM

        if not torch.cuda.is_available():
            raise TargetUnavailableError(
                self.name, "torch sees no CUDA device (a CPU-only torch build?)"
            )
        device = f"cuda:{int(options.get('device', 0))}"
        model = loader(artifact)
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(artifact.path, device_map=device)
        model.eval()
        return TransformersRuntime(model, torch)


class TransformersRuntime(Runtime):
    """A loaded transformers causal LM; generation uses its KV cache."""

    def __init__(self, model: Any, torch: Any) -> None:
        self.model = model
        self.torch = torch

    def logits(self, input_ids: Sequence[int]) -> Any:
        torch = self.torch
        with (
            torch.no_grad()
        ):  # not inference_mode: quanto's packed kernels reject inference tensors
            ids = torch.tensor([list(input_ids)], dtype=torch.long, device=self.model.device)
            return self.model(input_ids=ids).logits[0].float().cpu()

    def decoder(self, max_length: int) -> Decoder:
        return _TransformersDecoder(self.model, self.torch)

    def set_threads(self, threads: int) -> bool:
        self.torch.set_num_threads(threads)
        return True

    def close(self) -> None:
        del self.model


class _TransformersDecoder(Decoder):
    """Feeds tokens with the model's ``past_key_values``."""

    def __init__(self, model: Any, torch: Any) -> None:
        self.model = model
        self.torch = torch
        self.cache: Any = None

    def feed(self, tokens: Sequence[int]) -> Any:
        torch = self.torch
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.model.device)
        # not inference_mode: quanto's packed kernels reject inference tensors
        with torch.no_grad():
            out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[0, -1].float().cpu().numpy()


@hookimpl
def register_targets(register: Callable[[Target], None]) -> None:
    register(LocalCPU())
    register(LocalCUDA())
