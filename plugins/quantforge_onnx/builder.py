"""HF -> ONNX with onnxruntime-genai's model builder, and the ONNX weight quantizers of ONNX Runtime.

The model builder writes a decoder graph with a KV cache (``past_key_values.N.key`` in,
``present.N.key`` out, GroupQueryAttention on CPU) plus the ``genai_config.json`` that
onnxruntime-genai's generator reads. Quantization rewrites that graph's MatMul (and,
when asked, embedding Gather) nodes with ONNX Runtime's own quantizers.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from quantforge.errors import QuantforgeError
from quantforge.model.artifacts import copy_files

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
# Files the builder writes that a quantized copy keeps unchanged.
SIDE_FILES = ("genai_config.json", "tokenizer.json", "tokenizer_config.json", "config.json")


def _builder_source() -> Path:
    spec = importlib.util.find_spec("onnxruntime_genai.models.builder")
    if spec is None or spec.origin is None:
        raise QuantforgeError("onnxruntime-genai's model builder is not installed")
    return Path(spec.origin)


def supported_architectures() -> frozenset[str]:
    """Architectures the builder dispatches on (``config.architectures[0] == "..."``), read
    from its source without importing it (the import pulls in torch and transformers)."""
    tree = ast.parse(_builder_source().read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or not isinstance(node.left, ast.Subscript):
            continue
        if "architectures" not in ast.unparse(node.left):
            continue
        for right in node.comparators:
            if isinstance(right, ast.Constant) and isinstance(right.value, str):
                found.add(right.value)
    return frozenset(found)


def build(model: Path, output: Path, precision: str = "fp32") -> None:
    """Run the model builder on a local HF folder; its last error line goes into the raised error."""
    with tempfile.TemporaryDirectory(prefix="ort-builder-") as cache:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "onnxruntime_genai.models.builder",
                "--input",
                str(model),
                "--output",
                str(output),
                "--precision",
                precision,
                "--execution_provider",
                "cpu",
                "--cache_dir",
                cache,
                "--extra_options",
                "hf_token=false",
            ],
            capture_output=True,
            text=True,
        )
    sys.stderr.write(done.stderr[-20000:])
    if done.returncode or not (output / MODEL_FILE).exists():
        lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        reason = (errors or lines or ["no output"])[-1]
        raise QuantforgeError(
            f"onnxruntime-genai's model builder failed on {model.name}: {reason}",
            hint="see the step log for the builder's full output",
        )


def _quiet_ort_quantization() -> None:
    # ONNX Runtime's quantizers log one INFO line per node.
    for name in ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))


def quantize_nbits(
    source: Path,
    output: Path,
    *,
    bits: int,
    block_size: int,
    symmetric: bool,
    accuracy_level: int,
    algorithm: str,
    embeddings: bool,
) -> dict[str, Any]:
    """Weight-only MatMulNBits (and GatherBlockQuantized for embeddings) with ONNX Runtime's
    ``MatMulNBitsQuantizer``; returns which nodes were quantized."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    _quiet_ort_quantization()
    ops: tuple[str, ...] = ("MatMul", "Gather") if embeddings else ("MatMul",)
    config: Any
    if algorithm == "hqq":
        config = HQQWeightOnlyQuantConfig(
            block_size=block_size, bits=bits, op_types_to_quantize=ops
        )
    else:
        config = DefaultWeightOnlyQuantConfig(
            block_size=block_size,
            is_symmetric=symmetric,
            accuracy_level=accuracy_level or None,
            bits=bits,
            op_types_to_quantize=ops,
        )
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source / MODEL_FILE)), algo_config=config)
    quantizer.process()
    model = quantizer.model.model
    _save(model, output)
    return _node_report(model)


def quantize_dynamic_int8(source: Path, output: Path) -> dict[str, Any]:
    """Classic ONNX Runtime int8: per-channel int8 weights, activations quantized at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quiet_ort_quantization()
    with tempfile.TemporaryDirectory(prefix="ort-int8-", dir=output) as tmp:
        staged = Path(tmp) / MODEL_FILE
        quantize_dynamic(
            str(source / MODEL_FILE),
            str(staged),
            weight_type=QuantType.QInt8,
            per_channel=True,
            use_external_data_format=True,
        )
        model = onnx.load(str(staged))
    _save(model, output)
    return _node_report(model)


def _save(model: Any, output: Path) -> None:
    import onnx

    onnx.save_model(
        model,
        str(output / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS_FILE,
        size_threshold=1024,
    )


def _node_report(model: Any) -> dict[str, Any]:
    """Quantized nodes by op type, and each quantized node's bit width where it has one."""
    counts: dict[str, int] = {}
    modules: dict[str, float | str] = {}
    # weight bits when the node has no ``bits`` attribute (GatherBlockQuantized defaults to 4)
    default_bits = {
        "MatMulNBits": 4,
        "GatherBlockQuantized": 4,
        "DynamicQuantizeMatMul": 8,
        "MatMulInteger": 8,
    }
    for node in model.graph.node:
        if node.op_type not in default_bits:
            continue
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        bits = next((a.i for a in node.attribute if a.name == "bits"), 0)
        modules[node.name] = float(bits or default_bits[node.op_type])
    return {"ops": counts, "modules": modules}


def copy_side_files(source: Path, output: Path) -> None:
    copy_files(source, output, SIDE_FILES)
