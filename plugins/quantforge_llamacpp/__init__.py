"""First-party llama.cpp plugin: HF -> GGUF export, k-quants and i-quants, and a llama.cpp target.

* ``gguf`` (exporter, hf -> gguf): llama.cpp's own ``convert_hf_to_gguf.py`` from the
  installed llama-cpp-python release (see :mod:`quantforge_llamacpp.converter`).
* ``llamacpp`` (quantizer, gguf -> gguf+quant): ``llama_model_quantize`` to Q8_0 ... IQ1_S,
  with an importance matrix computed from the calibration text when ``imatrix=true``.
* ``llama.cpp`` (target): runs GGUF variants on this CPU for speed, perplexity and KL on
  the same token ids as the HF base.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quantforge import (
    Artifact,
    Decoder,
    Exporter,
    Option,
    OptionSet,
    Quantizer,
    Runtime,
    StepContext,
    Target,
    hookimpl,
)
from quantforge.choosing.budget import budget_option_list, given_budget
from quantforge.errors import QuantforgeError, UnsupportedModelError, UsageError
from quantforge.model.artifacts import copy_files
from quantforge.options import OptionValue

GGUF_FILE = "model.gguf"
REQUIRES = ("llama_cpp", "sentencepiece", "torch", "transformers")


def gguf_file(folder: Path) -> Path:
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise QuantforgeError(f"{folder} holds no .gguf file")
    return files[0]


def _copy_config(source: Path, output: Path) -> None:
    """Keep the HF config beside the GGUF: fit checks read the model's shape from it."""
    copy_files(source, output, ("config.json", "generation_config.json"))


class GGUFExporter(Exporter):
    name = "gguf"
    description = "HF -> GGUF with llama.cpp's convert_hf_to_gguf.py (f16, bf16 or f32)"
    input_format = "hf"
    output_format = "gguf"
    requires = REQUIRES
    extra = "gguf"
    options = OptionSet(
        [
            Option(
                "outtype", str, "f16", "tensor type of the export", choices=["f16", "bf16", "f32"]
            )
        ],
        presets={"f16": {"outtype": "f16"}, "bf16": {"outtype": "bf16"}, "f32": {"outtype": "f32"}},
    )

    def supported_architectures(self) -> frozenset[str] | None:
        from quantforge_llamacpp.converter import cached_converter, supported_architectures

        folder = cached_converter()
        return supported_architectures(folder) if folder else None

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        from quantforge_llamacpp.converter import converter_dir, supported_architectures

        self.check_available()
        folder = converter_dir()
        known = supported_architectures(folder)
        for arch in config.get("architectures") or []:
            if arch not in known:
                from quantforge_llamacpp.converter import llama_cpp_version

                raise UnsupportedModelError(
                    f"gguf: llama.cpp's converter (llama-cpp-python {llama_cpp_version()}) "
                    f"says: Architecture {arch!r} not supported!",
                    hint="export this model to another format (onnx, openvino) or "
                    "use a newer llama-cpp-python",
                )

    def check_files(self, options: Mapping[str, OptionValue], model: Path) -> None:
        from quantforge_llamacpp.converter import llama_cpp_version, vocab_problem

        problem = vocab_problem(model)
        if problem is not None:
            raise UnsupportedModelError(
                f"gguf: llama.cpp (llama-cpp-python {llama_cpp_version()}) cannot take this "
                f"model: {problem}",
                hint="export to onnx or openvino instead",
            )

    def export(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_llamacpp.converter import convert

        convert(source.path, output / GGUF_FILE, str(options["outtype"]))
        _copy_config(source.path, output)
        context.log(f"gguf: exported {source.path.name} as {options['outtype']}")


def _quant_presets() -> dict[str, dict[str, OptionValue]]:
    from quantforge_llamacpp.quantize import FTYPES

    return {t.lower(): {"type": t} for t in FTYPES}


class LlamaCppQuantizer(Quantizer):
    name = "llamacpp"
    method = "llama.cpp"
    description = "GGUF k-quants and i-quants with llama_model_quantize (optional imatrix)"
    input_format = "gguf"
    output_format = "gguf+quant"
    requires = REQUIRES
    extra = "gguf"
    version = "2"

    def __init__(self) -> None:
        from quantforge_llamacpp.quantize import FTYPES

        self.options = OptionSet(
            [
                Option("type", str, "Q4_K_M", "llama.cpp quantization type", choices=list(FTYPES)),
                Option(
                    "imatrix",
                    bool,
                    False,
                    "guide rounding with an importance matrix from the calibration text",
                ),
                Option(
                    "threads",
                    int,
                    0,
                    "quantization threads (0: every core this job may use)",
                    min=0,
                ),
            ],
            presets=_quant_presets(),
        )

    def calibrates(self, options: Mapping[str, OptionValue]) -> bool:
        return bool(options.get("imatrix"))

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        from quantforge_llamacpp.quantize import FTYPES

        return FTYPES[str(options["type"])][1]

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        from quantforge_llamacpp.quantize import NEEDS_IMATRIX

        qtype = str(options["type"])
        if qtype in NEEDS_IMATRIX and not options.get("imatrix"):
            raise UsageError(
                f"llamacpp: {qtype} needs an importance matrix, and imatrix is off",
                hint=f"use llamacpp:{qtype.lower()},imatrix=true with --calibration FILE",
            )

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_llamacpp.converter import converter_dir
        from quantforge_llamacpp.quantize import (
            gguf_facts,
            importance_matrix,
            quantize_gguf,
            write_json,
        )

        qtype = str(options["type"])
        src = gguf_file(source.path)
        gguf_py = converter_dir() / "gguf-py"
        imatrix = None
        if options.get("imatrix"):
            if context.calibration is None or context.base_model is None:
                raise UsageError("llamacpp: imatrix=true needs calibration data and the HF base")
            facts = gguf_facts(src, gguf_py)
            imatrix = importance_matrix(
                context.base_model,
                context.calibration.samples,
                facts["arch"],
                facts["n_layers"],
                gguf_py,
            )
            context.log(f"llamacpp: importance matrix over {len(imatrix)} tensors")
        threads = int(options["threads"]) or len(os.sched_getaffinity(0))
        report = quantize_gguf(src, output / GGUF_FILE, qtype, imatrix, threads)
        for fb in report["fallbacks"]:
            context.log(
                f"llamacpp: {fb['tensor']} has {fb['columns']} columns, not a multiple of "
                f"{fb['block']}: stored as {fb['used']} instead of {fb['wanted']}"
            )
        types = report["tensor_types"] or gguf_facts(output / GGUF_FILE, gguf_py)["tensor_types"]
        write_json(
            output / "quantforge-precision.json",
            {
                "default_bits": self.bits(options),
                "type": qtype,
                "imatrix": report["imatrix"],
                "fallbacks": report["fallbacks"],
                # matrices only: llama.cpp keeps 1-D tensors (norms) in F32 whatever the type
                "modules": {
                    name: _type_bits(t)
                    for name, t in sorted(types.items())
                    if not name.endswith("norm.weight") and t != "F32"
                },
            },
        )
        _copy_config(source.path, output)
        context.log(
            f"llamacpp: {qtype}{' with imatrix' if imatrix else ''}, "
            f"{len(report['fallbacks'])} tensor(s) fell back to another type"
        )


class GGUFMixQuantizer(Quantizer):
    """Per-tensor GGUF types to a budget: see :mod:`quantforge_llamacpp.mix`."""

    name = "gguf-mix"
    method = "llama.cpp"
    description = (
        "GGUF with a type per tensor, chosen from measured sensitivities to a size "
        "(bpw, max_size_mb) or KL (max_kl) budget"
    )
    input_format = "gguf"
    output_format = "gguf+quant"
    requires = REQUIRES
    extra = "gguf"
    needs_calibration = True  # sensitivities are measured on the calibration tokens
    builds_to_budget = True
    version = "2"  # the precision file says "chosen"
    options = OptionSet(
        [
            *budget_option_list("one of the candidate types"),
            Option("types", str, "", "candidate ggml types (default Q3_K to Q8_0 and IQ4_NL)"),
            Option(
                "probes",
                int,
                0,
                "types whose KL is measured per linear weight (0: every type; 1 or 2: the rest "
                "estimated from their output error, several times faster)",
                min=0,
                max=2,
            ),
            Option(
                "threads", int, 0, "quantization threads (0: every core this job may use)", min=0
            ),
        ]
    )

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        bpw = float(str(options["bpw"]))
        return bpw or None

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        from quantforge_llamacpp.mix import DEFAULT_TYPES, parse_types

        given_budget(self.name, options, required=True)
        parse_types(str(options["types"]) or DEFAULT_TYPES)

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_llamacpp.mix_build import build_mix

        if context.calibration is None or context.base_model is None:
            raise UsageError("gguf-mix needs calibration tokens and the HF base model")
        from quantforge_llamacpp.quantize import write_json

        report = build_mix(source, options, output / GGUF_FILE, context)
        types = report.pop("modules")
        report["modules"] = {n: _type_bits(t) for n, t in sorted(types.items())}
        write_json(output / "quantforge-precision.json", report)
        _copy_config(source.path, output)


def _type_bits(ggml_type: str) -> float | str:
    """Bits per weight of a ggml tensor type (``Q4_K`` -> 4.5), or its name when unknown."""
    per_weight = {
        "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5,
        "Q5_0": 5.5, "Q5_1": 6, "Q4_K": 4.5, "Q4_0": 4.5, "Q4_1": 5, "IQ4_NL": 4.5,
        "IQ4_XS": 4.25, "Q3_K": 3.4375, "IQ3_S": 3.4375, "IQ3_XXS": 3.0625, "Q2_K": 2.625,
        "IQ2_S": 2.5, "IQ2_XS": 2.3125, "IQ2_XXS": 2.0625, "IQ1_M": 1.75, "IQ1_S": 1.5625,
    }  # fmt: skip
    return per_weight.get(ggml_type, ggml_type)


class LlamaCppTarget(Target):
    name = "llama.cpp"
    description = "this machine's CPU, with llama.cpp (measured)"
    formats = frozenset({"gguf"})
    measured = True
    requires = ("llama_cpp", "torch", "numpy")
    extra = "gguf"
    options = OptionSet(
        [
            Option("threads", int, 0, "llama.cpp threads (0: every core this job may use)", min=0),
            Option("n_ctx", int, 0, "context size (0: the model's, at most 4096)", min=0),
        ]
    )

    def hardware(self) -> str:
        from quantforge_transformers import LocalCPU

        return LocalCPU().hardware() + ", llama.cpp"

    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        import llama_cpp

        n_ctx = int(options.get("n_ctx", 0))
        if not n_ctx:
            config = artifact.path / "config.json"
            longest = 4096
            if config.exists():
                longest = int(json.loads(config.read_text()).get("max_position_embeddings", 4096))
            n_ctx = min(longest, 4096)
        threads = int(options.get("threads", 0)) or len(os.sched_getaffinity(0))
        model = llama_cpp.Llama(
            model_path=str(gguf_file(artifact.path)),
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 512),
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
        )
        return LlamaCppRuntime(model, n_ctx)


class LlamaCppRuntime(Runtime):
    """A GGUF model in llama.cpp, fed token ids directly (never re-tokenized)."""

    def __init__(self, model: Any, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx

    def _check(self, n: int) -> None:
        if n > self.n_ctx:
            raise UsageError(f"{n} tokens exceed the llama.cpp context of {self.n_ctx}")

    def logits(self, input_ids: Sequence[int]) -> Any:
        import numpy as np
        import torch

        ids = list(input_ids)
        self._check(len(ids))
        self.model.reset()
        self.model.eval(ids)
        scores = np.array(self.model.scores[: len(ids)], dtype=np.float32)
        return torch.from_numpy(scores)

    def decoder(self, max_length: int) -> Decoder:
        self._check(max_length)
        self.model.reset()
        return _LlamaCppDecoder(self.model)

    def set_threads(self, threads: int) -> bool:
        self.model._ctx.set_n_threads(threads, threads)  # llama_set_n_threads on the context
        self.model.n_threads = self.model.n_threads_batch = threads
        return True

    def close(self) -> None:
        self.model.close()


class _LlamaCppDecoder(Decoder):
    """Feeds tokens into the llama.cpp context (its KV cache) after a reset."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def feed(self, tokens: Sequence[int]) -> Any:
        import numpy as np

        self.model.eval(list(tokens))
        return np.array(self.model.scores[self.model.n_tokens - 1], dtype=np.float32)


@hookimpl
def register_exporters(register: Callable[[Exporter], None]) -> None:
    register(GGUFExporter())


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(LlamaCppQuantizer())
    register(GGUFMixQuantizer())


@hookimpl
def register_targets(register: Callable[[Target], None]) -> None:
    register(LlamaCppTarget())
