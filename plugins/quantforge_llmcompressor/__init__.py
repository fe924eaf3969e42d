"""First-party llm-compressor plugin: compressed-tensors checkpoints that vLLM serves.

Built as any third party could build it: entry points and the public hooks only.

* ``llm-compressor`` (quantizer, hf -> hf+compressed-tensors): llm-compressor's ``oneshot``
  with a compressed-tensors scheme (W4A16, W8A16, W8A8 int8, FP8 dynamic), rounded to
  nearest or by GPTQ on the calibration rows, saved compressed. vLLM serves the folder as it
  is; transformers (with the ``compressed-tensors`` package) loads it on this CPU, where the
  cpu target measures it like every other checkpoint.

llm-compressor pins an older transformers than quantforge's, so it runs in a worker
environment of its own (:mod:`quantforge_llmcompressor.environment` says how it is made);
the step sends it the job as JSON and reads back the checkpoint and a report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from quantforge import Artifact, Option, OptionSet, Quantizer, StepContext, hookimpl
from quantforge.errors import MissingDependencyError, QuantforgeError, UsageError
from quantforge.interfaces import check_causal_lm
from quantforge.options import OptionValue

from quantforge_llmcompressor.environment import LLMCOMPRESSOR, MAKE_COMMAND

EXTRA = "llmcompressor"
# compressed-tensors preset -> (weight bits, what the activations get in vLLM)
SCHEMES: dict[str, tuple[int, str]] = {
    "W4A16": (4, "16-bit"),
    "W4A16_ASYM": (4, "16-bit"),
    "W8A16": (8, "16-bit"),
    "W8A8": (8, "int8, dynamic per token"),
    "FP8_DYNAMIC": (8, "fp8, dynamic per token"),
}
GROUPED = {"W4A16", "W4A16_ASYM"}  # the others have one scale per output channel
DEFAULT_GROUP = 128


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _group_sizes(options: Mapping[str, OptionValue]) -> list[int]:
    """The sizes each layer tries in turn: the one asked for, or the default and then the
    powers of two below it down to 16 (the first that divides a layer's width wins)."""
    if str(options["scheme"]) not in GROUPED:
        return [0]
    chosen = int(str(options["group_size"]))
    if chosen:
        return [chosen]
    sizes, size = [], DEFAULT_GROUP
    while size >= 16:
        sizes.append(size)
        size //= 2
    return sizes


def _run_streamed(command: list[str]) -> tuple[int, str]:
    """Run ``command``, passing its output on to this process's stderr (the step's log) as it
    comes; return its exit status and its last lines."""
    from collections import deque

    tail: deque[str] = deque(maxlen=200)
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line)
    return proc.returncode, "".join(tail)


def _failure_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1]


class LLMCompressorQuantizer(Quantizer):
    name = "llm-compressor"
    method = "llm-compressor"
    description = "compressed-tensors (W4A16, W8A8, FP8) for vLLM, via llm-compressor's oneshot"
    output_format = "hf+compressed-tensors"
    requires = ("compressed_tensors", "torch", "transformers")
    extra = EXTRA
    group_size_fallback = True
    quantizes_experts = False  # oneshot targets nn.Linear; fused 3-D experts stay float
    card_library = "vllm"
    options = OptionSet(
        [
            Option(
                "scheme",
                str,
                "W4A16",
                "compressed-tensors preset: int4 weights (W4A16, W4A16_ASYM), int8 weights "
                "(W8A16), int8 weights and activations (W8A8), fp8 (FP8_DYNAMIC)",
                choices=list(SCHEMES),
            ),
            Option(
                "algorithm",
                str,
                "rtn",
                "round to nearest, or GPTQ on the calibration rows",
                choices=["rtn", "gptq"],
            ),
            Option(
                "group_size",
                int,
                0,
                f"int4 weights per scale (0: {DEFAULT_GROUP}, falling back per layer to a "
                "power of two that divides its width)",
                choices=[0, 16, 32, 64, 128, 256],
            ),
            Option("damp", float, 0.01, "GPTQ's Hessian dampening", min=0.0001, max=1.0),
            Option(
                "dtype",
                str,
                "bfloat16",
                "dtype of what stays unquantized (embeddings, norms, lm_head) and of the "
                "scales; vLLM serves bfloat16 or float16 checkpoints ('auto': the base's)",
                choices=["bfloat16", "float16", "float32", "auto"],
            ),
        ],
        presets={
            "w4a16": {"scheme": "W4A16"},
            "w4a16-gptq": {"scheme": "W4A16", "algorithm": "gptq"},
            "w8a16": {"scheme": "W8A16"},
            "w8a8": {"scheme": "W8A8"},
            "w8a8-gptq": {"scheme": "W8A8", "algorithm": "gptq"},
            "fp8": {"scheme": "FP8_DYNAMIC"},
        },
    )

    def calibrates(self, options: Mapping[str, OptionValue]) -> bool:
        return options["algorithm"] == "gptq"

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        return float(SCHEMES[str(options["scheme"])][0])

    def missing_packages(self) -> list[str]:
        from quantforge_llmcompressor.environment import missing_reason

        missing = super().missing_packages()
        return missing + (["llmcompressor (worker environment)"] if missing_reason() else [])

    def check_available(self) -> None:
        from quantforge_llmcompressor.environment import missing_reason

        missing = super().missing_packages()  # this environment's packages first
        if missing:
            raise MissingDependencyError(self.name, missing, self.extra)
        why = missing_reason()
        if why:
            raise MissingDependencyError(
                self.name,
                [f"llmcompressor {LLMCOMPRESSOR}"],
                None,
                reason=why,
                hint=f"make it once with `{MAKE_COMMAND}` (about 1.5 GB, a few minutes)",
            )

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        self.check_available()
        check_causal_lm(self.name, config, "quantize")
        scheme = str(options["scheme"])
        if int(str(options["group_size"])) and scheme not in GROUPED:
            raise UsageError(
                f"{self.name}: {scheme} has one scale per output channel; group_size applies "
                "to W4A16 and W4A16_ASYM",
                hint="drop group_size, or use scheme=W4A16",
            )

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge.model.artifacts import PRECISION_FILE, copy_tokenizer_files

        from quantforge_llmcompressor.environment import worker_python

        python = worker_python()
        if python is None:
            self.check_available()
            raise AssertionError("unreachable")
        scheme = str(options["scheme"])
        calibration = context.calibration.samples if self.calibrates(options) else []
        if self.calibrates(options) and not calibration:
            raise UsageError(f"{self.name}: GPTQ needs calibration rows and was given none")
        job = {
            "source": str(source.path),
            "output": str(output),
            "scheme": scheme,
            "algorithm": str(options["algorithm"]),
            "damp": float(str(options["damp"])),
            "group_sizes": _group_sizes(options),
            "ignore": ["lm_head"],
            "calibration": [list(row) for row in calibration],
            "seed": context.seed,
            "dtype": str(options["dtype"]),
        }
        script = Path(__file__).with_name("oneshot_script.py")
        with tempfile.TemporaryDirectory(prefix="llmcompressor-") as tmp:
            job_file, report_file = Path(tmp) / "job.json", Path(tmp) / "report.json"
            job_file.write_text(json.dumps(job), encoding="utf-8")
            context.log(f"llm-compressor {LLMCOMPRESSOR}: {scheme}, {job['algorithm']} ({python})")
            returncode, tail = _run_streamed(
                [str(python), str(script), str(job_file), str(report_file)]
            )
            if returncode or not report_file.is_file():
                raise QuantforgeError(
                    f"llm-compressor's oneshot failed on {source.path.name}: {_failure_line(tail)}",
                    hint="its log is above; `quantforge methods --model PATH` lists other methods",
                )
            report = json.loads(report_file.read_text(encoding="utf-8"))
        copy_tokenizer_files(source.path, output)
        bits, activations = SCHEMES[scheme]
        precision: dict[str, Any] = {
            "default_bits": float(bits),
            "scheme": scheme,
            "algorithm": str(options["algorithm"]),
            "activations": activations,
            "dtype": str(options["dtype"]),
            "measured_here": "transformers on CPU decompresses the weights to float and "
            "simulates the scheme's activation quantization (quantize-dequantize); vLLM runs "
            "the same arithmetic in its int8/fp8/int4 kernels",
            "skipped": ["lm_head", *report["float"]],
            "llmcompressor": LLMCOMPRESSOR,
        }
        if scheme in GROUPED:
            sizes = {int(k): v for k, v in report["group_sizes"].items()}
            precision["group_size"] = max(sizes) if sizes else DEFAULT_GROUP
            fitted = {n: s for n, s in report["modules"].items() if s != precision["group_size"]}
            if fitted:
                precision["group_sizes"] = fitted
            if fitted or report["float"]:
                precision["fallback"] = (
                    f"group size {precision['group_size']} does not divide the width of "
                    f"{len(fitted) + len(report['float'])} layers: {len(fitted)} use the "
                    f"largest power of two that does; {len(report['float'])} stay in float"
                )
        (output / PRECISION_FILE).write_text(json.dumps(precision, indent=2), encoding="utf-8")

    def card_usage(self, repo_id: str, revision: str | None) -> str | None:
        rev = f" --revision {revision}" if revision else ""
        rev_py = f', revision="{revision}"' if revision else ""
        return f"""A compressed-tensors checkpoint made with llm-compressor **{LLMCOMPRESSOR}**
(compressed-tensors {_version("compressed-tensors")} reads it here). vLLM serves it as it is:

```bash
pip install vllm
vllm serve {repo_id}{rev}
```

```python
from vllm import LLM

llm = LLM("{repo_id}"{rev_py})
print(llm.generate("The quick brown fox")[0].outputs[0].text)
```

transformers loads it too (`pip install compressed-tensors`), decompressing the weights:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo_id}"{rev_py})
tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{rev_py})
```"""


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(LLMCompressorQuantizer())
