"""First-party ONNX plugin: HF -> ONNX with a KV cache, ONNX Runtime weight quantization, and
an onnxruntime-genai target.

* ``onnx`` (exporter, hf -> onnx): onnxruntime-genai's model builder writes ``model.onnx``
  (past/present KV inputs and outputs) and the ``genai_config.json`` its generator reads.
* ``ort`` (quantizer, onnx -> onnx+ort): ONNX Runtime's ``MatMulNBitsQuantizer`` (int2/int4/int8
  weights in blocks, RTN or HQQ, embeddings optional) or ``quantize_dynamic`` (int8 weights,
  activations quantized at run time).
* ``onnxruntime`` (target): onnxruntime-genai on this CPU. It scores the HF base's token ids
  (the prefill's logits) and times greedy generation with its KV cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quantforge import (
    Artifact,
    Decoder,
    Exporter,
    GenerationTiming,
    Option,
    OptionSet,
    Quantizer,
    Runtime,
    StepContext,
    Target,
    hookimpl,
)
from quantforge.errors import UnsupportedModelError, UsageError
from quantforge.options import OptionValue

EXTRA = "onnx"
BUILDER_REQUIRES = ("onnxruntime_genai", "onnx", "onnx_ir", "torch", "transformers")


class OnnxExporter(Exporter):
    name = "onnx"
    description = "HF -> ONNX with a KV cache, by onnxruntime-genai's model builder (fp32, CPU)"
    input_format = "hf"
    output_format = "onnx"
    requires = BUILDER_REQUIRES
    extra = EXTRA
    options = OptionSet([])

    def supported_architectures(self) -> frozenset[str] | None:
        return None  # the builder dispatches on architectures, checked in check_model

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        from quantforge_onnx.builder import supported_architectures

        self.check_available()
        known = supported_architectures()
        archs = list(config.get("architectures") or [])
        rope = config.get("rope_parameters")
        if isinstance(rope, dict) and rope and all(isinstance(v, dict) for v in rope.values()):
            import onnxruntime_genai

            raise UnsupportedModelError(
                f"onnx: onnxruntime-genai {onnxruntime_genai.__version__}'s model builder reads "
                "one rope_parameters, and this model has one per attention type "
                f"({', '.join(rope)})",
                hint="export this model to gguf or openvino instead",
            )
        rope_type = (rope or {}).get("rope_type") if isinstance(rope, dict) else None
        original = config.get("original_max_position_embeddings")
        if (
            config.get("model_type") == "phi3"
            and original
            and original != config.get("max_position_embeddings")
            and rope_type != "longrope"
        ):
            raise UnsupportedModelError(
                "onnx: the model builder takes a Phi-3 whose max_position_embeddings "
                f"({config.get('max_position_embeddings')}) differs from "
                f"original_max_position_embeddings ({original}) for a LongRoPE model, and "
                f"this one's rope is {rope_type or 'default'!r}",
                hint="set the two equal (a 4k Phi-3) or export to gguf or openvino",
            )
        if not archs or archs[0] not in known:
            import onnxruntime_genai

            raise UnsupportedModelError(
                f"onnx: onnxruntime-genai {onnxruntime_genai.__version__}'s model builder "
                f"does not support {archs[0] if archs else 'a model without architectures'!r}",
                hint="export this model to another format (gguf, openvino) or use a newer "
                "onnxruntime-genai",
            )

    def export(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        import shutil

        from quantforge_onnx.builder import build

        build(source.path, output)
        # the HF config stays beside the graph: fit checks read the model's shape from it
        shutil.copy(source.path / "config.json", output / "config.json")
        context.log(f"onnx: exported {source.path.name} with onnxruntime-genai's model builder")


class OrtQuantizer(Quantizer):
    name = "ort"
    method = "ONNX Runtime"
    description = "ONNX weights to int2/int4/int8 MatMulNBits (RTN or HQQ) or dynamic int8"
    input_format = "onnx"
    output_format = "onnx+ort"
    requires = ("onnxruntime", "onnx")
    extra = EXTRA
    version = "2"
    options = OptionSet(
        [
            Option(
                "mode",
                str,
                "nbits",
                "nbits: weight-only MatMulNBits; dynamic: int8 weights, int8 activations",
                choices=["nbits", "dynamic"],
            ),
            Option("bits", int, 4, "weight bits (nbits mode)", choices=[2, 4, 8]),
            Option(
                "block_size",
                int,
                32,
                "weights per scale (nbits mode)",
                choices=[16, 32, 64, 128, 256],
            ),
            Option("symmetric", bool, True, "symmetric blocks (no zero point)"),
            Option("algorithm", str, "rtn", "rounding: rtn or hqq", choices=["rtn", "hqq"]),
            Option("embeddings", bool, False, "also quantize the token embeddings (4-bit only)"),
            Option(
                "accuracy_level",
                int,
                4,
                "MatMulNBits compute type: 4 int8, 3 bf16, 2 fp16, 1 fp32, 0 default",
                min=0,
                max=4,
            ),
        ],
        presets={
            "int4": {"mode": "nbits", "bits": 4},
            "int8": {"mode": "nbits", "bits": 8},
            "int2": {"mode": "nbits", "bits": 2},
            "int4-hqq": {"mode": "nbits", "bits": 4, "algorithm": "hqq", "symmetric": False},
            "int8-dynamic": {"mode": "dynamic"},
        },
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        if options["mode"] == "dynamic":
            return 8.0
        bits = int(str(options["bits"]))
        block = int(str(options["block_size"]))
        # one fp32 scale per block, and a zero point when asymmetric: packed at the weight
        # width for RTN, a float for HQQ
        zero = 32 if options["algorithm"] == "hqq" else (0 if options["symmetric"] else bits)
        return bits + (32 + zero) / block

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        if options["mode"] == "dynamic":
            return
        if options["embeddings"] and options["bits"] != 4:
            raise UsageError(
                f"ort: embeddings=true quantizes the embedding Gather, which ONNX Runtime "
                f"supports at 4 bits only (bits={options['bits']})",
                hint="use bits=4 or leave embeddings off",
            )
        if options["algorithm"] == "hqq" and options["symmetric"]:
            raise UsageError(
                "ort: HQQ fits a zero point per block, so it cannot be symmetric",
                hint="use ort:int4-hqq (symmetric=false) or algorithm=rtn",
            )

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_onnx.builder import copy_side_files, quantize_dynamic_int8, quantize_nbits

        if options["mode"] == "dynamic":
            report = quantize_dynamic_int8(source.path, output)
        else:
            report = quantize_nbits(
                source.path,
                output,
                bits=int(str(options["bits"])),
                block_size=int(str(options["block_size"])),
                symmetric=bool(options["symmetric"]),
                accuracy_level=int(str(options["accuracy_level"])),
                algorithm=str(options["algorithm"]),
                embeddings=bool(options["embeddings"]),
            )
        if not report["modules"]:
            raise UsageError(
                "ort: the graph has no MatMul with constant weights to quantize",
                hint="quantize an export made by the `onnx` exporter",
            )
        copy_side_files(source.path, output)
        (output / "quantforge-precision.json").write_text(
            json.dumps(
                {
                    "default_bits": self.bits(options),
                    "mode": options["mode"],
                    "ops": report["ops"],
                    "modules": report["modules"],
                },
                indent=2,
            )
        )
        ops = ", ".join(f"{n} {op}" for op, n in sorted(report["ops"].items()))
        context.log(f"ort: quantized {ops}")


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    description = "this machine's CPU, with onnxruntime-genai (measured)"
    formats = frozenset({"onnx"})
    measured = True
    requires = ("onnxruntime_genai", "torch", "numpy")
    extra = EXTRA
    options = OptionSet(
        [Option("threads", int, 0, "intra-op threads (0: ONNX Runtime's choice)", min=0)]
    )

    def hardware(self) -> str:
        import onnxruntime_genai
        from quantforge_transformers import LocalCPU

        return LocalCPU().hardware() + f", onnxruntime-genai {onnxruntime_genai.__version__}"

    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        import onnxruntime_genai as og

        if not (artifact.path / "genai_config.json").exists():
            raise UsageError(
                f"{artifact.path} has no genai_config.json, so onnxruntime-genai cannot run it",
                hint="export with the `onnx` exporter, which writes one",
            )
        config = og.Config(str(artifact.path))
        threads = int(str(options.get("threads", 0)))
        if threads:
            overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
            config.overlay(json.dumps(overlay))
        genai = json.loads((artifact.path / "genai_config.json").read_text())["model"]
        window = (genai["decoder"].get("sliding_window") or {}).get("window_size") or 0
        return OnnxGenaiRuntime(og.Model(config), int(genai["context_length"]), int(window))


class OnnxGenaiRuntime(Runtime):
    """An ONNX decoder in onnxruntime-genai, fed token ids directly (never re-tokenized)."""

    def __init__(self, model: Any, context_length: int, window: int = 0) -> None:
        self.model = model
        self.context_length = context_length
        self.window = window  # sliding-window attention's window (Gemma 2/3), 0 when none

    def _generator(self, length: int) -> Any:
        import onnxruntime_genai as og

        if length > self.context_length:
            raise UsageError(
                f"{length} tokens exceed the ONNX model's context of {self.context_length}"
            )
        params = og.GeneratorParams(self.model)
        # the KV cache is sized by max_length, and a sliding-window layer needs one at least as
        # long as its window; the caller stops after the tokens it asked for
        capacity = min(self.context_length, max(length, self.window))
        # min_length = max_length: generation runs its full length even past an EOS token
        params.set_search_options(max_length=capacity, min_length=capacity, do_sample=False)
        return og.Generator(self.model, params)

    def logits(self, input_ids: Sequence[int]) -> Any:
        import numpy as np
        import torch

        ids = list(input_ids)
        generator = self._generator(len(ids) + 1)
        generator.append_tokens(ids)
        logits = np.asarray(generator.get_output("logits"), dtype=np.float32)[0]
        return torch.from_numpy(np.ascontiguousarray(logits[: len(ids)]))

    def generate(self, input_ids: Sequence[int], max_new_tokens: int) -> GenerationTiming:
        ids = list(input_ids)
        generator = self._generator(len(ids) + max_new_tokens)

        def prefill() -> None:
            generator.append_tokens(ids)
            # picks the first token from the prefill's logits; no decode step yet
            generator.generate_next_token()

        # each later call runs one decode step on the last token, then picks the next;
        # min_length = max_length keeps it going for exactly max_new_tokens - 1 steps
        return GenerationTiming.measure(
            len(ids),
            max_new_tokens,
            prefill=prefill,
            step=lambda _: generator.generate_next_token(),
        )

    def decoder(self, max_length: int) -> Decoder:
        return _OnnxDecoder(self._generator(max_length))

    def close(self) -> None:
        del self.model


class _OnnxDecoder(Decoder):
    """Appends tokens to an onnxruntime-genai generator and reads its logits output (the
    caller picks each token; the generator's own search is not used)."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def feed(self, tokens: Sequence[int]) -> Any:
        import numpy as np

        self.generator.append_tokens(list(tokens))
        logits = np.asarray(self.generator.get_output("logits"), dtype=np.float32)
        return np.ascontiguousarray(logits[0, -1])


@hookimpl
def register_exporters(register: Callable[[Exporter], None]) -> None:
    register(OnnxExporter())


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(OrtQuantizer())


@hookimpl
def register_targets(register: Callable[[Target], None]) -> None:
    register(OnnxRuntimeTarget())
