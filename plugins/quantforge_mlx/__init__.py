"""First-party MLX plugin: HF -> MLX with mlx-lm, mlx-lm's quantizations, and an MLX target.

Built as any third party could build it: entry points and the public hooks only.

* ``mlx`` (exporter, hf -> mlx): mlx-lm loads the HF folder into its own model classes and
  the folder is saved in MLX's layout, weights in float32, float16 or bfloat16.
* ``mlx-lm`` (quantizer, mlx -> mlx+q): MLX's affine quantization (2-8 bits, group 32/64/128,
  falling back per weight when the default 64 does not divide a width), its floating-point
  modes (mxfp4, nvfp4, mxfp8), mlx-lm's mixed recipes (``mixed_3_6`` ...: more bits for
  value and down projections, as llama.cpp's Q4_K_M does), and mlx-lm's AWQ and GPTQ from
  the calibration rows.
* ``mlx`` (target): MLX's CPU device on this machine (the ``mlx-cpu`` wheel on Linux),
  measured like every other runtime. Apple silicon runs the same folders on its GPU.

Cards of MLX variants carry ``library_name: mlx`` and the usage mlx-community's cards give.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from quantforge import (
    Artifact,
    Exporter,
    Option,
    OptionSet,
    Quantizer,
    Runtime,
    StepContext,
    Target,
    hookimpl,
)
from quantforge.errors import UnsupportedModelError, UsageError
from quantforge.interfaces import check_causal_lm
from quantforge.options import OptionValue

from quantforge_mlx.library import blas_before_mlx

blas_before_mlx()

EXTRA = "mlx"
REQUIRES = ("mlx", "mlx_lm", "transformers")
DEFAULT_GROUP = 64
ALGORITHMS = ["rtn", "awq", "gptq", "dynamic"]
MODES = ["affine", "mxfp4", "nvfp4", "mxfp8"]


def _mlx_lm_version() -> str:
    try:
        return metadata.version("mlx-lm")
    except metadata.PackageNotFoundError:
        return "unknown"


def mlx_card_usage(repo_id: str, revision: str | None) -> str:
    """The usage section mlx-community's model cards carry, for ``repo_id``."""
    rev = f', revision="{revision}"' if revision else ""
    cli_rev = f" --revision {revision}" if revision else ""
    return f"""Converted to MLX format with mlx-lm version **{_mlx_lm_version()}**.

```bash
pip install mlx-lm
```

```python
from mlx_lm import load, generate

model, tokenizer = load("{repo_id}"{rev})
prompt = "hello"
if tokenizer.chat_template is not None:
    messages = [{{"role": "user", "content": prompt}}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
response = generate(model, tokenizer, prompt=prompt, verbose=True)
```

Or from the command line: `mlx_lm.generate --model {repo_id}{cli_rev} --prompt "hello"`.
On Linux, `pip install "mlx[cpu]" mlx-lm` runs it on the CPU."""


def _check_mlx_model(owner: str, config: Mapping[str, Any]) -> None:
    """Refuse a model mlx-lm has no model class for, or one that is not a causal LM."""
    from quantforge_mlx.convert import sliding_window_pattern, supported_model_types

    check_causal_lm(owner, config, action="convert")
    sliding_window_pattern(dict(config))
    model_type = config.get("model_type")
    if model_type not in supported_model_types():
        raise UnsupportedModelError(
            f"{owner}: mlx-lm {_mlx_lm_version()} has no model for {model_type!r}",
            hint="`quantforge methods --model PATH` lists the methods that can take it",
        )


class MLXExporter(Exporter):
    name = "mlx"
    description = "HF -> MLX (mlx-lm's model classes, safetensors in MLX's layout)"
    input_format = "hf"
    output_format = "mlx"
    requires = REQUIRES
    extra = EXTRA
    card_library = "mlx"
    options = OptionSet(
        [
            Option(
                "dtype",
                str,
                "float32",
                "floating weights (MLX's CPU kernels are fastest in float32; Apple GPUs in "
                "bfloat16/float16)",
                choices=["float32", "float16", "bfloat16"],
            )
        ],
        presets={
            "float32": {"dtype": "float32"},
            "float16": {"dtype": "float16"},
            "bfloat16": {"dtype": "bfloat16"},
        },
    )

    def supported_architectures(self) -> frozenset[str] | None:
        from quantforge_mlx.convert import supported_model_types

        return supported_model_types() if not self.missing_packages() else None

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        self.check_available()
        _check_mlx_model("mlx", config)

    def export(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_mlx.convert import export

        facts = export(source.path, output, str(options["dtype"]))
        context.log(f"mlx: {facts['model_type']} in mlx-lm's classes, weights in {facts['dtype']}")

    def card_usage(self, repo_id: str, revision: str | None) -> str | None:
        return mlx_card_usage(repo_id, revision)


class MLXQuantizer(Quantizer):
    name = "mlx-lm"
    method = "MLX"
    description = (
        "MLX weights to 2-8 bits with mlx-lm (affine groups, mxfp4/nvfp4/mxfp8, mixed "
        "recipes, AWQ, GPTQ)"
    )
    input_format = "mlx"
    output_format = "mlx+q"
    requires = REQUIRES
    extra = EXTRA
    group_size_fallback = True
    card_library = "mlx"
    version = "1"
    options = OptionSet(
        [
            Option("bits", int, 4, "bits per weight (affine mode)", choices=[2, 3, 4, 5, 6, 8]),
            Option(
                "group_size",
                int,
                0,
                f"weights per scale and bias (0: {DEFAULT_GROUP}, falling back per weight to "
                "32 where 64 does not divide its width)",
                choices=[0, 32, 64, 128],
            ),
            Option(
                "mode",
                str,
                "affine",
                "affine (scale and bias per group) or a floating-point format with its own "
                "fixed group (mxfp4: 32, nvfp4: 16, mxfp8: 32)",
                choices=MODES,
            ),
            Option(
                "recipe",
                str,
                "",
                "mlx-lm's mixed precision (sets the bits): the low width it names, and the high "
                "one for the value and down projections of some layers and for the LM head",
                choices=["", "mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"],
            ),
            Option(
                "algorithm",
                str,
                "rtn",
                "round to nearest, or mlx-lm's AWQ, GPTQ or dynamic quantization (bits per "
                "layer to a bpw budget, from gradient sensitivities) from the calibration rows",
                choices=ALGORITHMS,
            ),
            Option(
                "bpw",
                float,
                0.0,
                "dynamic: the bits per weight to land at (each layer gets bits or high_bits)",
                min=0.0,
            ),
            Option(
                "high_bits", int, 8, "dynamic: the bits of the sensitive layers", choices=[5, 6, 8]
            ),
        ],
        presets={
            "4bit": {"bits": 4},
            "8bit": {"bits": 8},
            "3bit": {"bits": 3},
            "6bit": {"bits": 6},
            "mixed_3_6": {"recipe": "mixed_3_6"},
            "mixed_4_6": {"recipe": "mixed_4_6"},
            "mxfp4": {"mode": "mxfp4"},
            "mxfp8": {"mode": "mxfp8"},
            "awq": {"bits": 4, "algorithm": "awq"},
            "gptq": {"bits": 4, "algorithm": "gptq"},
            "dynamic": {"bits": 4, "algorithm": "dynamic", "bpw": 5.5},
        },
    )

    def calibrates(self, options: Mapping[str, OptionValue]) -> bool:
        return options["algorithm"] != "rtn"

    def group_size(self, options: Mapping[str, OptionValue]) -> int:
        from quantforge_mlx.convert import MODE_GROUP

        mode = str(options["mode"])
        if mode != "affine":
            return MODE_GROUP[mode]
        size = int(str(options["group_size"]))
        return DEFAULT_GROUP if size == 0 else size

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        from quantforge_mlx.convert import MODE_BITS, recipe_bits

        mode, recipe = str(options["mode"]), str(options["recipe"])
        if recipe:
            return float(recipe_bits(recipe))
        return float(MODE_BITS[mode] if mode != "affine" else int(str(options["bits"])))

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        self.check_available()
        _check_mlx_model("mlx-lm", config)
        mode, recipe, algorithm = (str(options[k]) for k in ("mode", "recipe", "algorithm"))
        if mode != "affine":
            changed = [k for k in ("recipe", "algorithm") if options[k] not in ("", "rtn")]
            changed += ["group_size"] if int(str(options["group_size"])) else []
            changed += ["bits"] if int(str(options["bits"])) != 4 else []
            if changed:
                raise UsageError(
                    f"mlx-lm: mode {mode} fixes its own bits and group; "
                    f"{', '.join(changed)} apply to mode=affine only",
                    hint="drop those options, or use mode=affine",
                )
        if recipe and algorithm != "rtn":
            raise UsageError(
                f"mlx-lm: recipe {recipe} rounds to nearest; it does not combine with {algorithm}",
                hint="choose a recipe or an algorithm",
            )
        if recipe and not self._has_down_projections(config):
            raise UnsupportedModelError(
                f"mlx-lm: recipe {recipe} raises the bits of the down projections, and mlx-lm's "
                f"{config.get('model_type')!r} model has none",
                hint="use a uniform width (mlx-lm:4bit) for this model",
            )
        bpw = float(str(options["bpw"]))
        if (algorithm == "dynamic") != (bpw > 0):
            raise UsageError(
                "mlx-lm: bpw is the budget of algorithm=dynamic, and each needs the other",
                hint="use mlx-lm:dynamic,bpw=5.5 (or drop bpw)",
            )
        if algorithm == "dynamic":
            self._check_dynamic(options, config, bpw)
        if algorithm == "awq":
            awq_types = self._awq_model_types()
            if config.get("model_type") not in awq_types:
                raise UnsupportedModelError(
                    f"mlx-lm has no AWQ recipe for {config.get('model_type')!r} models "
                    f"(it has one for {', '.join(sorted(awq_types))})",
                    hint="use mlx-lm:gptq or mlx-lm:4bit",
                )

    def _check_dynamic(
        self, options: Mapping[str, OptionValue], config: Mapping[str, Any], bpw: float
    ) -> None:
        from quantforge.interfaces import model_widths

        low, high = int(str(options["bits"])), int(str(options["high_bits"]))
        size = self.group_size(options)
        if not low < high:
            raise UsageError(
                f"mlx-lm: dynamic mixes bits={low} with high_bits={high}; bits must be lower",
                hint="e.g. mlx-lm:dynamic,bits=4,high_bits=8,bpw=5",
            )
        # each width plus a scale and a bias per group, 16 or 32 bits each by the dtype
        if not low + 32 / size < bpw < high + 64 / size:
            raise UsageError(
                f"mlx-lm: bpw {bpw:g} is outside what {low} and {high} bits at group {size} "
                f"reach (from {low + 32 / size:g} in float16 to {high + 64 / size:g} in float32)",
                hint="choose a bpw between them",
            )
        odd = {k: w for k, w in model_widths(config).items() if w % size}
        if odd:
            raise UnsupportedModelError(
                f"mlx-lm: dynamic quantization quantizes every layer at group {size}, and "
                + ", ".join(f"{k} {w}" for k, w in odd.items())
                + " is not a multiple of it",
                hint="use another group_size, or mlx-lm:4bit (which falls back per weight)",
            )

    def budget_options(
        self, max_size_mb: float | None, bpw: float | None
    ) -> dict[str, OptionValue] | None:
        if bpw is None:
            return None  # MLX's bits per weight are its budget; a size needs the parameters
        return {"algorithm": "dynamic", "bpw": bpw}

    @staticmethod
    def _awq_model_types() -> frozenset[str]:
        from quantforge_mlx.library import import_mlx

        import_mlx()
        from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS

        return frozenset(AWQ_MODEL_CONFIGS)

    @staticmethod
    def _has_down_projections(config: Mapping[str, Any]) -> bool:
        """Whether mlx-lm's model for this type names a layer ``down_proj`` (what its mixed
        recipes look for), read from the model's source without building it."""
        from quantforge_mlx.convert import model_source

        return "down_proj" in model_source(str(config.get("model_type")))

    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        from quantforge_mlx.convert import precision_report, quantize, write_precision

        samples = None
        if self.calibrates(options):
            if context.calibration is None:
                raise UsageError(
                    f"mlx-lm: {options['algorithm']} needs calibration data",
                    hint="pass --calibration FILE",
                )
            samples = context.calibration.samples
        requested = int(str(options["group_size"]))
        report = quantize(
            source.path,
            output,
            bits=int(str(options["bits"])),
            group_size=self.group_size(options),
            falls_back=requested == 0,
            mode=str(options["mode"]),
            recipe=str(options["recipe"]),
            algorithm=str(options["algorithm"]),
            samples=samples,
            bpw=float(str(options["bpw"])),
            high_bits=int(str(options["high_bits"])),
        )
        precision = precision_report(report, self.group_size(options))
        write_precision(output, precision)
        context.log(
            f"mlx-lm: {options['mode']} {report['default']['bits']}-bit, group "
            f"{report['default']['group_size']}, {precision['bits_per_weight']:.3f} bits per "
            "weight" + (f" ({options['algorithm']} over {len(samples)} rows)" if samples else "")
        )

    def card_usage(self, repo_id: str, revision: str | None) -> str | None:
        return mlx_card_usage(repo_id, revision)


class MLXTarget(Target):
    name = "mlx"
    description = "this machine's CPU, with MLX through mlx-lm (measured)"
    formats = frozenset({"mlx"})
    measured = True
    requires = ("mlx", "mlx_lm", "torch", "numpy")
    extra = EXTRA

    def hardware(self) -> str:
        from quantforge_transformers import LocalCPU

        from quantforge_mlx.library import import_mlx, load_blas

        mx = import_mlx()
        return (
            LocalCPU().hardware()
            + f", MLX {mx.__version__} on its CPU device (float products: {load_blas()})"
        )

    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        from quantforge_mlx.runtime import load_runtime

        return load_runtime(artifact.path)


@hookimpl
def register_exporters(register: Callable[[Exporter], None]) -> None:
    register(MLXExporter())


@hookimpl
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    register(MLXQuantizer())


@hookimpl
def register_targets(register: Callable[[Target], None]) -> None:
    register(MLXTarget())
