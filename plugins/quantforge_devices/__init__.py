"""First-party device profiles: edge devices described by their memory and bandwidth.

Each profile answers "does this variant fit, and how fast could it decode?" with the
arithmetic of :mod:`quantforge.devices.profiles`. Figures are estimates; the sources say where
each device's numbers come from. Add a device by subclassing
:class:`quantforge.devices.DeviceProfile` in your own plugin.
"""

from __future__ import annotations

from collections.abc import Callable

from quantforge import Target, hookimpl
from quantforge.devices import DeviceProfile, RuntimeCost

# What each runtime costs on a CPU: the KV cache type it keeps by default and the
# memory it takes once loaded (libraries, allocator, thread pools).
LLAMA_CPP = RuntimeCost("llama.cpp", "gguf", kv_bytes=2, overhead_mb=40)
ONNXRUNTIME_CPU = RuntimeCost("onnxruntime", "onnx", kv_bytes=4, overhead_mb=80)
OPENVINO_CPU = RuntimeCost("openvino", "openvino", kv_bytes=2, overhead_mb=150)
TRANSFORMERS_CPU = RuntimeCost("transformers", "hf", kv_bytes=4, overhead_mb=400)
# On a CUDA GPU: half-precision caches, and a CUDA context of several hundred MiB.
LLAMA_CPP_CUDA = RuntimeCost("llama.cpp (CUDA)", "gguf", kv_bytes=2, overhead_mb=350)
ONNXRUNTIME_CUDA = RuntimeCost("onnxruntime (CUDA)", "onnx", kv_bytes=2, overhead_mb=450)
TRANSFORMERS_CUDA = RuntimeCost("transformers (CUDA, fp16)", "hf", kv_bytes=2, overhead_mb=900)


class RaspberryPi5(DeviceProfile):
    name = "rpi5"
    description = "Raspberry Pi 5, 8 GB"
    processor = "Broadcom BCM2712, 4x Cortex-A76 @ 2.4 GHz"
    memory_gib = 8
    reserved_gib = 1.0
    bandwidth_gbs = 17.1  # LPDDR4X-4267 on a 32-bit bus
    efficiency = 0.6
    runtimes = (LLAMA_CPP, ONNXRUNTIME_CPU, OPENVINO_CPU, TRANSFORMERS_CPU)
    source = (
        "Raspberry Pi 5 product brief (raspberrypi.com): LPDDR4X-4267, 32-bit bus "
        "= 4267 MT/s x 4 B = 17.1 GB/s peak"
    )


class JetsonOrinNano(DeviceProfile):
    name = "jetson-orin-nano"
    description = "NVIDIA Jetson Orin Nano Super, 8 GB"
    processor = "6x Cortex-A78AE + 1024-core Ampere GPU, unified memory"
    memory_gib = 8
    reserved_gib = 1.5
    bandwidth_gbs = 102
    efficiency = 0.7
    runtimes = (LLAMA_CPP_CUDA, ONNXRUNTIME_CUDA, TRANSFORMERS_CUDA)
    source = (
        "NVIDIA Jetson Orin Nano Super Developer Kit datasheet: 8 GB 128-bit LPDDR5, "
        "102 GB/s in MAXN SUPER mode (68 GB/s in the original 15 W mode)"
    )


class FlagshipPhone(DeviceProfile):
    name = "flagship-phone"
    description = "Flagship Android phone (Snapdragon 8 Elite, 12 GB)"
    processor = "Qualcomm Snapdragon 8 Elite, 2x Oryon @ 4.32 GHz + 6x @ 3.53 GHz"
    memory_gib = 12
    reserved_gib = 6.0  # Android and its low-memory killer leave about half to one app
    bandwidth_gbs = 84.8  # LPDDR5X-10600 on a 64-bit bus
    efficiency = 0.45  # thermal limits and big cores only
    runtimes = (LLAMA_CPP, ONNXRUNTIME_CPU)
    source = (
        "Qualcomm Snapdragon 8 Elite product brief: LPDDR5X up to 5.3 GHz, 64-bit bus "
        "= 10600 MT/s x 8 B = 84.8 GB/s peak; 12 GB as in Galaxy S25 Ultra"
    )


class EdgePC(DeviceProfile):
    name = "x86-edge"
    description = "x86 edge PC, 16 GB (Intel N100 class)"
    processor = "Intel N100, 4 E-cores @ 3.4 GHz, single-channel DDR5-4800"
    memory_gib = 16
    reserved_gib = 1.5
    bandwidth_gbs = 38.4
    efficiency = 0.6
    runtimes = (LLAMA_CPP, ONNXRUNTIME_CPU, OPENVINO_CPU, TRANSFORMERS_CPU)
    source = "Intel ARK, Processor N100: max memory bandwidth 38.4 GB/s (DDR5-4800, 1 channel)"


class FreeCPUSpace(DeviceProfile):
    name = "cpu-space"
    description = "Hugging Face Space, free CPU basic (2 vCPU, 16 GB)"
    processor = "2 vCPUs of a shared cloud server"
    memory_gib = 16
    reserved_gib = 1.0  # the container, Python and the Gradio app itself
    bandwidth_gbs = 20  # assumed: what two vCPUs of a shared socket reach, not a published figure
    efficiency = 0.6
    runtimes = (LLAMA_CPP, ONNXRUNTIME_CPU, OPENVINO_CPU, TRANSFORMERS_CPU)
    source = (
        "huggingface.co/docs/hub/spaces-overview (CPU basic: 2 vCPU, 16 GB RAM); the "
        "bandwidth is an assumption for two vCPUs of a shared server"
    )


PROFILES: tuple[type[DeviceProfile], ...] = (
    RaspberryPi5,
    JetsonOrinNano,
    FlagshipPhone,
    EdgePC,
    FreeCPUSpace,
)


@hookimpl
def register_targets(register: Callable[[Target], None]) -> None:
    for profile in PROFILES:
        register(profile())
