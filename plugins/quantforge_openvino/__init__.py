"""First-party OpenVINO plugin: HF -> OpenVINO IR, NNCF weight compression, an OpenVINO target.

* ``openvino`` (exporter, hf -> openvino): OpenVINO's PyTorch frontend converts the decoder,
  and OpenVINO's make-stateful transformation keeps the KV cache inside the infer request
  (see :mod:`quantforge_openvino.convert`).
* ``nncf`` (quantizer, openvino -> openvino+nncf): ``nncf.compress_weights`` to int8 or int4
  (group size, ratio, AWQ, scale estimation and GPTQ from the calibration rows).
* ``openvino`` (target): the OpenVINO CPU plugin on this machine, fed the HF base's token ids.
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
    Option,
    OptionSet,
    Quantizer,
    Runtime,
    StepContext,
    Target,
    hookimpl,
)
from quantforge.errors import UsageError
from quantforge.interfaces import check_causal_lm
from quantforge.options import OptionValue

EXTRA = "openvino"
MODES = ["int8_asym", "int8_sym", "int4_sym", "int4_asym", "nf4"]
DEFAULT_GROUP = 128


class OpenVINOExporter(Exporter):
    name = "openvino"
    description = "HF -> OpenVINO IR with a stateful KV cache, by OpenVINO's PyTorch frontend"
    input_format = "hf"
    output_format = "openvino"
    requires = ("openvino", "torch", "transformers")
    extra = EXTRA
    options = OptionSet(
        [
            Option(
                "weights",
                str,
                "f32",
                "how the IR stores weights (f16 halves the file; the CPU computes in f32)",
                choices=["f32", "f16"],
            )
        ],
        presets={"f32": {"weights": "f32"}, "f16": {"weights": "f16"}},
    )

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        check_causal_lm("openvino", config)

    def export(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_openvino.convert import convert

        facts = convert(source.path, output, str(options["weights"]))
        context.log(
            f"openvino: stateful IR with {facts['layers']} layers of KV cache, "
            f"weights stored as {facts['weights']}"
        )


class NNCFQuantizer(Quantizer):
    name = "nncf"
    method = "NNCF"
    description = (
        "OpenVINO weights to int8 / int4 / nf4 with NNCF (group size, ratio, AWQ, scale estimation)"
    )
    input_format = "openvino"
    output_format = "openvino+nncf"
    group_size_fallback = True  # the default (0: 128) adjusts per weight
    requires = ("nncf", "openvino")
    extra = EXTRA
    version = "1"
    options = OptionSet(
        [
            Option("mode", str, "int4_sym", "NNCF compression mode", choices=MODES),
            Option(
                "group_size",
                int,
                0,
                "weights per scale for 4-bit modes (0: 128, falling back per weight to a power of "
                "two that divides its width; -1: one per output channel)",
                min=-1,
            ),
            Option(
                "ratio",
                float,
                1.0,
                "share of layers in the 4-bit mode; the rest stay int8 (4-bit modes)",
                min=0.0,
                max=1.0,
            ),
            Option(
                "all_layers",
                bool,
                False,
                "4-bit embeddings and last layer too (NNCF keeps them int8 by default)",
            ),
            Option("awq", bool, False, "activation-aware scaling from the calibration rows"),
            Option(
                "scale_estimation",
                bool,
                False,
                "fit each group's scale to the calibration activations",
            ),
            Option("gptq", bool, False, "GPTQ rounding from the calibration rows"),
        ],
        presets={
            "int8": {"mode": "int8_asym"},
            "int4": {"mode": "int4_sym"},
            "int4-asym": {"mode": "int4_asym"},
            "int4-awq": {"mode": "int4_sym", "awq": True, "scale_estimation": True},
            "int4-gptq": {"mode": "int4_sym", "gptq": True},
            "nf4": {"mode": "nf4"},
        },
    )

    def calibrates(self, options: Mapping[str, OptionValue]) -> bool:
        return bool(options["awq"] or options["scale_estimation"] or options["gptq"])

    def group_size(self, options: Mapping[str, OptionValue]) -> int:
        size = int(str(options["group_size"]))
        return DEFAULT_GROUP if size == 0 else size

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        mode = str(options["mode"])
        if mode.startswith("int8"):
            return 8.0
        group = self.group_size(options)
        # an f16 scale per group (and a 4-bit zero point when asymmetric)
        overhead = 0.0 if group < 0 else (16 + (4 if mode == "int4_asym" else 0)) / group
        ratio = float(str(options["ratio"]))
        return ratio * (4 + overhead) + (1 - ratio) * 8

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        mode = str(options["mode"])
        if mode.startswith("int8"):
            data_aware = [k for k in ("awq", "scale_estimation", "gptq") if options[k]]
            changed = [
                k
                for k in ("group_size", "ratio", "all_layers")
                if options[k] not in (0, 1.0, False)
            ]
            if data_aware or changed:
                raise UsageError(
                    f"nncf: {mode} compresses every layer per channel; "
                    f"{', '.join(data_aware + changed)} apply to 4-bit modes only",
                    hint="use mode=int4_sym (nncf:int4) for those options",
                )
            return
        if options["gptq"] and options["awq"]:
            raise UsageError(
                "nncf: choose AWQ or GPTQ, not both",
                hint="nncf:int4-awq or nncf:int4-gptq",
            )
        # the default (0: 128) falls back per weight; a size the user writes is checked by the
        # host in preflight, as for every method with a group_size option

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_openvino.compress import compress
        from quantforge_openvino.convert import copy_side_files

        samples = None
        if self.calibrates(options):
            if context.calibration is None:
                raise UsageError("nncf: AWQ, scale estimation and GPTQ need calibration data")
            samples = context.calibration.samples
        report = compress(
            source.path,
            output,
            mode=str(options["mode"]),
            group_size=self.group_size(options),
            ratio=float(str(options["ratio"])),
            all_layers=bool(options["all_layers"]),
            awq=bool(options["awq"]),
            scale_estimation=bool(options["scale_estimation"]),
            gptq=bool(options["gptq"]),
            samples=samples,
            adjust_group_size=int(str(options["group_size"])) == 0,
        )
        copy_side_files(source.path, output)
        (output / "quantforge-precision.json").write_text(
            json.dumps(
                {
                    "default_bits": self.bits(options),
                    "mode": options["mode"],
                    "element_types": report["element_types"],
                    "modules": report["modules"],
                    **(
                        {
                            "group_size": self.group_size(options),
                            "group_sizes": report["group_sizes"],
                            "fallback": f"group size {self.group_size(options)} does not "
                            f"divide {len(report['group_sizes'])} weights' width: those use "
                            "the largest power of two that does",
                        }
                        if report.get("group_sizes")
                        else {}
                    ),
                },
                indent=2,
            )
        )
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(report["element_types"].items()))
        used = [k for k in ("awq", "scale_estimation", "gptq") if options[k]]
        context.log(
            f"nncf: {options['mode']} weights ({kinds})"
            + (f" with {', '.join(used)} over {len(samples or [])} rows" if used else "")
        )


class OpenVINOTarget(Target):
    name = "openvino"
    description = "this machine's CPU, with the OpenVINO runtime (measured)"
    formats = frozenset({"openvino"})
    measured = True
    requires = ("openvino", "torch", "numpy")
    extra = EXTRA
    options = OptionSet(
        [
            Option("threads", int, 0, "inference threads (0: OpenVINO's choice)", min=0),
            Option(
                "precision",
                str,
                "f32",
                "activation precision (bf16/f16 are faster where the CPU has them)",
                choices=["f32", "bf16", "f16"],
            ),
        ]
    )

    def hardware(self) -> str:
        import openvino
        from quantforge_transformers import LocalCPU

        return LocalCPU().hardware() + f", OpenVINO {openvino.get_version().split('-')[0]}"

    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        import openvino as ov

        from quantforge_openvino.convert import MODEL_XML

        xml = artifact.path / MODEL_XML
        if not xml.exists():
            raise UsageError(
                f"{artifact.path} has no {MODEL_XML}", hint="export with the `openvino` exporter"
            )
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": str(options.get("precision", "f32"))}
        threads = int(str(options.get("threads", 0)))
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = ov.Core().compile_model(xml, "CPU", config)
        context = 4096
        hf_config = artifact.path / "config.json"
        if hf_config.exists():
            context = int(json.loads(hf_config.read_text()).get("max_position_embeddings", context))
        return OpenVINORuntime(compiled, context)


class OpenVINORuntime(Runtime):
    """A stateful OpenVINO decoder: the KV cache lives in the infer request."""

    def __init__(self, compiled: Any, context_length: int) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.context_length = context_length

    def _run(self, ids: Sequence[int], total: int) -> Any:
        import numpy as np

        out = self.request.infer(
            {
                "input_ids": np.asarray([ids], dtype=np.int64),
                "attention_mask": np.ones((1, total), dtype=np.int64),
            }
        )
        return out["logits"]

    def _check(self, n: int) -> None:
        if n > self.context_length:
            raise UsageError(f"{n} tokens exceed the model's context of {self.context_length}")

    def logits(self, input_ids: Sequence[int]) -> Any:
        import numpy as np
        import torch

        ids = list(input_ids)
        self._check(len(ids))
        self.request.reset_state()
        logits = np.array(self._run(ids, len(ids))[0], dtype=np.float32)
        return torch.from_numpy(logits)

    def decoder(self, max_length: int) -> Decoder:
        self._check(max_length)
        self.request.reset_state()
        return _OpenVINODecoder(self)

    def close(self) -> None:
        del self.request
        del self.compiled


class _OpenVINODecoder(Decoder):
    """Feeds tokens into the infer request, whose state holds the KV cache."""

    def __init__(self, runtime: OpenVINORuntime) -> None:
        self.runtime = runtime
        self.seen = 0

    def feed(self, tokens: Sequence[int]) -> Any:
        import numpy as np

        self.seen += len(tokens)
        return np.array(self.runtime._run(list(tokens), self.seen)[0, -1], dtype=np.float32)


@hookimpl
def register_exporters(register: Callable[[Exporter], None]) -> None:
    register(OpenVINOExporter())


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(NNCFQuantizer())


@hookimpl
def register_targets(register: Callable[[Target], None]) -> None:
    register(OpenVINOTarget())
