"""Device profiles: does a variant fit on a device, and how fast could it decode there?

A :class:`DeviceProfile` is a device target that cannot run anything on this
machine; it answers from arithmetic instead. Memory needed is the weights as stored
(:mod:`quantforge.devices.footprint`), plus the KV cache at the requested context length,
plus the runtime's overhead. Decode speed comes from the memory-bandwidth roofline:
generating one token reads every weight and the whole KV cache once, so tokens/s <=
bandwidth / bytes read per token. Every figure is an *estimate* and is labelled so
wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from quantforge.devices.footprint import DEFAULT_CONTEXT, Footprint
from quantforge.errors import PlanError, UsageError
from quantforge.interfaces import Artifact, Runtime, Target
from quantforge.options import Option, OptionSet, OptionValue

GIB = 1024**3


MIB = 1024**2


SCRATCH_TOKENS = 512  # a runtime sizes its activation buffers for one batch of this many tokens


@dataclass(frozen=True)
class RuntimeCost:
    """How one runtime spends memory on a device.

    :ivar name: the runtime (``"llama.cpp"``).
    :ivar family: the format family it runs (``"gguf"``).
    :ivar kv_bytes: bytes per cached key or value element (2 for an f16 cache).
    :ivar overhead_mb: the runtime and its libraries once loaded, in MiB.
    """

    name: str
    family: str
    kv_bytes: float
    overhead_mb: float


@dataclass(frozen=True)
class FitReport:
    """A device's answer for one variant at one context length. All figures are estimates."""

    device: str
    runtime: str
    variant: str
    context: int
    weights_bytes: int
    kv_bytes: float
    overhead_bytes: float
    available_bytes: float
    bandwidth_gbs: float
    efficiency: float
    lines: list[tuple[str, str, str]] = field(default_factory=list)  # what, value, how

    @property
    def needed_bytes(self) -> float:
        return self.weights_bytes + self.kv_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.available_bytes

    @property
    def headroom_bytes(self) -> float:
        return self.available_bytes - self.needed_bytes

    @property
    def decode_tps_bound(self) -> float:
        """Roofline upper bound: every weight and the whole cache read once per token."""
        return self.bandwidth_gbs * 1e9 / (self.weights_bytes + self.kv_bytes)

    @property
    def decode_tps(self) -> float:
        """The bound at the share of peak bandwidth decode reaches in practice."""
        return self.decode_tps_bound * self.efficiency

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "runtime": self.runtime,
            "variant": self.variant,
            "context": self.context,
            "weights_bytes": self.weights_bytes,
            "kv_cache_bytes": self.kv_bytes,
            "overhead_bytes": self.overhead_bytes,
            "needed_bytes": self.needed_bytes,
            "available_bytes": self.available_bytes,
            "fits": self.fits,
            "decode_tps_bound": self.decode_tps_bound,
            "decode_tps_estimate": self.decode_tps,
            "estimate": True,
            "arithmetic": [{"what": w, "value": v, "how": h} for w, v, h in self.lines],
        }


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


class DeviceProfile(Target):
    """A device described by its numbers: fit checks and roofline estimates, never measurements.

    Subclass it and set the class attributes; register the instance with
    ``register_targets``. ``formats`` follows from ``runtimes``.

    :cvar memory_gib: memory the device has (shared by CPU and GPU where it is unified).
    :cvar reserved_gib: what the operating system and the rest of the device keep for themselves.
    :cvar bandwidth_gbs: peak memory bandwidth in GB/s (1e9 bytes/s).
    :cvar efficiency: share of peak bandwidth that decoding reaches in practice.
    :cvar runtimes: the runtimes it runs, one per format family.
    :cvar processor: the chip, for listings.
    :cvar source: where the memory and bandwidth figures come from.
    """

    measured = False
    memory_gib: ClassVar[float]
    reserved_gib: ClassVar[float]
    bandwidth_gbs: ClassVar[float]
    efficiency: ClassVar[float] = 0.6
    runtimes: ClassVar[tuple[RuntimeCost, ...]]
    processor: ClassVar[str] = ""
    source: ClassVar[str] = ""
    options = OptionSet(
        [Option("context", int, DEFAULT_CONTEXT, "context length to check (tokens)", min=1)],
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "runtimes" in cls.__dict__:
            cls.formats = frozenset(r.family for r in cls.runtimes)

    def unavailable_reason(self) -> str | None:
        return "a device profile: it estimates, it does not run models here"

    def hardware(self) -> str:
        return (
            f"{self.description}: {self.memory_gib:g} GiB, {self.bandwidth_gbs:g} GB/s "
            f"(profile, estimates)"
        )

    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        raise UsageError(f"{self.name} is a device profile and cannot run models on this machine")

    def runtime_for(self, family: str) -> RuntimeCost:
        for runtime in self.runtimes:
            if runtime.family == family:
                return runtime
        runs = ", ".join(sorted(self.formats))
        raise PlanError(
            f"{self.name} does not run {family} models (it runs {runs})",
            hint="export the variant to one of those formats",
        )

    def fit(self, footprint: Footprint, context: int) -> FitReport:
        """Memory needed against memory available at ``context`` tokens, with the arithmetic."""
        if context < 1:
            raise UsageError(f"context must be at least 1 token, not {context}")
        if footprint.max_context and context > footprint.max_context:
            raise UsageError(
                f"context {context} is longer than {footprint.name} supports "
                f"({footprint.max_context} tokens, max_position_embeddings)",
                hint=f"pass --context {footprint.max_context} or less",
            )
        runtime = self.runtime_for(footprint.family)
        kv = footprint.kv_bytes(context, runtime.kv_bytes)
        scratch = SCRATCH_TOKENS * (footprint.vocab_size + 4 * footprint.hidden_size) * 4
        overhead = runtime.overhead_mb * MIB + scratch
        available = (self.memory_gib - self.reserved_gib) * GIB
        report = FitReport(
            device=self.name,
            runtime=runtime.name,
            variant=footprint.name,
            context=context,
            weights_bytes=footprint.weights_bytes,
            kv_bytes=kv,
            overhead_bytes=overhead,
            available_bytes=available,
            bandwidth_gbs=self.bandwidth_gbs,
            efficiency=self.efficiency,
        )
        f = footprint
        report.lines.extend(
            [
                ("weights", _mib(f.weights_bytes), "the weight files as stored"),
                (
                    "KV cache",
                    _mib(kv),
                    f"2 x {f.layers} layers x {f.kv_heads} kv heads x {f.head_dim} dims"
                    f" x {context} tokens x {runtime.kv_bytes:g} B",
                ),
                (
                    "runtime overhead",
                    _mib(overhead),
                    f"{runtime.name} {runtime.overhead_mb:g} MiB + scratch of {SCRATCH_TOKENS}"
                    f" tokens x ({f.vocab_size} vocab + 4 x {f.hidden_size} hidden) x 4 B",
                ),
                ("needed", _mib(report.needed_bytes), "weights + KV cache + overhead"),
                (
                    "usable",
                    _mib(available),
                    f"{self.memory_gib:g} GiB - {self.reserved_gib:g} GiB kept by the system",
                ),
                (
                    "fits",
                    "yes" if report.fits else "NO",
                    f"{'headroom' if report.fits else 'short by'} {_mib(abs(report.headroom_bytes))}",
                ),
                (
                    "decode (estimate)",
                    f"{report.decode_tps:.1f} tok/s",
                    f"{self.bandwidth_gbs:g} GB/s x {self.efficiency:g} efficiency"
                    f" / {_mib(f.weights_bytes + kv)} read per token"
                    f" (roofline bound {report.decode_tps_bound:.1f} tok/s)",
                ),
            ]
        )
        return report
