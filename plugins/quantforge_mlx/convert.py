"""HF -> MLX and MLX -> quantized MLX with mlx-lm's own loading, quantizing and saving.

The folders are what ``mlx_lm.load`` reads: ``model.safetensors`` (+ index) in MLX's
layout, ``config.json`` with a ``quantization`` entry (per layer where layers differ), and
the base's tokenizer files. Files a model ships as code (``*.py``) are never copied:
mlx-lm's own ``save`` would copy them, so these functions write the folder themselves.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quantforge.errors import UnsupportedModelError, UsageError
from quantforge.interfaces import fitting_group_size
from quantforge.model.artifacts import PRECISION_FILE, TOKENIZER_FILES, copy_files

from quantforge_mlx.library import import_mlx

SIDE_FILES = (*TOKENIZER_FILES, "chat_template.jinja", "generation_config.json")
DTYPES = ("float32", "float16", "bfloat16")
# group sizes MLX's affine kernels take, and the fixed group of each floating-point mode
AFFINE_GROUPS = (32, 64, 128)
MODE_GROUP = {"mxfp4": 32, "nvfp4": 16, "mxfp8": 32}
MODE_BITS = {"mxfp4": 4, "nvfp4": 4, "mxfp8": 8}
RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")


def recipe_bits(recipe: str) -> int:
    """The low width of one of mlx-lm's mixed recipes (``mixed_3_6``: 3)."""
    return int(recipe.split("_")[1])


def _package() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("mlx_lm")
    folders = list(spec.submodule_search_locations or []) if spec else []
    return Path(folders[0]) if folders else None


@functools.cache
def _remapping(package: Path) -> dict[str, str]:
    """mlx-lm's ``MODEL_REMAPPING`` (model types it runs with another type's class), read
    from its source without importing it (which would load MLX and transformers)."""
    import ast

    tree = ast.parse((package / "utils.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "MODEL_REMAPPING" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return {
                k.value: v.value
                for k, v in zip(node.value.keys, node.value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
            }
    return {}


def supported_model_types() -> frozenset[str]:
    """``model_type`` values mlx-lm has a model for (its modules, and the types it maps)."""
    package = _package()
    if package is None:
        return frozenset()
    names = {p.stem for p in (package / "models").glob("*.py")}
    return frozenset(names | set(_remapping(package)))


def model_source(model_type: str) -> str:
    """The source of mlx-lm's model module for ``model_type`` (``""`` when it has none)."""
    package = _package()
    if package is None:
        return ""
    module = package / "models" / f"{_remapping(package).get(model_type, model_type)}.py"
    return module.read_text(encoding="utf-8") if module.exists() else ""


def legacy_config_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The keys mlx-lm's model classes read that transformers 5 writes elsewhere: the
    rotary embedding's, from ``rope_parameters``, and Gemma 3's ``sliding_window_pattern``,
    from ``layer_types``.

    transformers 5 writes ``rope_theta`` (and the scaling, and the rotated share) only inside
    ``rope_parameters``; mlx-lm 0.32's Llama, Qwen, Gemma ... read a top-level ``rope_theta``
    and fall back to a default (10,000) when it is absent, so SmolLM2 (100,000) would load
    without an error and compute another model. GPT-NeoX's class requires
    ``rotary_emb_base`` and ``rotary_pct``. Keys the config already has are kept."""
    keys: dict[str, Any] = {}
    pattern = sliding_window_pattern(config)
    if pattern:
        keys["sliding_window_pattern"] = pattern
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict):
        return {k: v for k, v in keys.items() if k not in config}
    if "rope_theta" not in rope and rope and all(isinstance(v, dict) for v in rope.values()):
        # one entry per attention kind (Gemma 3: full and sliding)
        local = rope.get("sliding_attention") or {}
        if "rope_theta" in local:
            keys["rope_local_base_freq"] = local["rope_theta"]
        rope = rope.get("full_attention") or next(iter(rope.values()))
    if "rope_theta" in rope:
        keys["rope_theta"] = rope["rope_theta"]
    kind = rope.get("rope_type", "default")
    if kind != "default":
        keys["rope_scaling"] = {**rope, "type": kind, "rope_type": kind}
    if "partial_rotary_factor" in rope:
        keys["partial_rotary_factor"] = rope["partial_rotary_factor"]
    if config.get("model_type") == "gpt_neox":
        keys["rotary_emb_base"] = keys.get("rope_theta", 10000)
        keys["rotary_pct"] = keys.get(
            "partial_rotary_factor", config.get("partial_rotary_factor", 1.0)
        )
    return {k: v for k, v in keys.items() if k not in config}


SLIDING_PATTERN_TYPES = frozenset({"gemma3", "gemma3_text"})


def sliding_window_pattern(config: dict[str, Any]) -> int | None:
    """For the model types whose mlx-lm class places full attention at every N-th layer
    (Gemma 3): N, read from ``layer_types``; ``None`` for other types, or when the config
    has no ``layer_types``. Raises when the layers follow no such pattern (mlx-lm would
    compute another model, or fail)."""
    types = config.get("layer_types")
    if config.get("model_type") not in SLIDING_PATTERN_TYPES or not isinstance(types, list):
        return None
    full = [i for i, kind in enumerate(types) if kind == "full_attention"]
    if full:
        every = full[0] + 1
        if all(
            (kind == "full_attention") == ((i + 1) % every == 0) for i, kind in enumerate(types)
        ):
            return every
    raise UnsupportedModelError(
        f"mlx-lm's {config.get('model_type')} class puts full attention at every N-th layer; "
        f"this model's {len(types)} layers ({', '.join(sorted(set(map(str, types))))}) "
        "follow no such pattern",
        hint="a model with a full-attention layer every N layers (as Gemma 3 ships) converts",
    )


def required_fields(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Fields mlx-lm's model arguments require (no default) that ``config.json`` names
    otherwise: transformers' config object resolves them through its aliases and defaults
    (Qwen3-MoE's ``num_experts`` is saved as ``num_local_experts``; ``mlp_only_layers`` is
    left out when empty)."""
    import dataclasses

    from mlx_lm.utils import _get_classes

    try:
        _, args_class = _get_classes(config)
    except ValueError as exc:
        raise UnsupportedModelError(f"mlx-lm: {exc}") from None
    missing = [
        f.name
        for f in dataclasses.fields(args_class)
        if f.name not in config
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if not missing:
        return {}
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    found = {name: getattr(hf, name) for name in missing if getattr(hf, name, None) is not None}
    return {k: v for k, v in found.items() if isinstance(v, int | float | str | bool | list)}


def _load(folder: Path) -> tuple[Any, dict[str, Any]]:
    import_mlx()
    from mlx_lm.utils import load_model

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    extra = legacy_config_keys(config)
    extra.update(required_fields(folder, {**config, **extra}))
    try:
        return load_model(folder, lazy=True, model_config=extra, trust_remote_code=False)
    except ValueError as exc:
        raise UnsupportedModelError(f"mlx-lm cannot load {folder.name}: {exc}") from None


def _save(model: Any, config: dict[str, Any], source: Path, output: Path) -> None:
    from mlx_lm.utils import save_config, save_model

    output.mkdir(parents=True, exist_ok=True)
    save_model(output, model, donate_model=True)
    save_config(config, config_path=output / "config.json")
    copy_files(source, output, SIDE_FILES)


def export(source: Path, output: Path, dtype: str) -> dict[str, Any]:
    """Write ``source`` (an HF folder) as an MLX folder with floating weights in ``dtype``."""
    mx = import_mlx()
    from mlx.utils import tree_map_with_path

    model, config = _load(source)
    target = getattr(mx, dtype)
    keep = getattr(model, "cast_predicate", lambda _: True)

    def cast(path: str, value: Any) -> Any:
        if keep(path) and mx.issubdtype(value.dtype, mx.floating):
            return value.astype(target)
        return value

    model.update(tree_map_with_path(cast, model.parameters()))
    config["torch_dtype"] = dtype
    _save(model, config, source, output)
    return {"dtype": dtype, "model_type": config.get("model_type")}


def _quantizable(model: Any) -> list[tuple[str, Any]]:
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    leaves = tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
    return [(path, m) for path, m in leaves if hasattr(m, "to_quantized")]


def _plan(
    model: Any,
    *,
    bits: int,
    group_size: int,
    falls_back: bool,
    mode: str,
    recipe: str,
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Each quantizable layer's parameters (``{}`` for none: it stays in float) and the
    group sizes that fell back, by layer."""
    chosen: Callable[[str, Any], Any] = lambda path, module: True  # noqa: E731
    if recipe:
        from mlx_lm.convert import mixed_quant_predicate_builder

        try:
            chosen = mixed_quant_predicate_builder(recipe, model, group_size)
        except ValueError as exc:
            raise UnsupportedModelError(f"mlx-lm: recipe {recipe}: {exc}") from None
    plan: dict[str, dict[str, Any]] = {}
    fallbacks: dict[str, int] = {}
    for path, module in _quantizable(model):
        params = chosen(path, module)
        if params is False:
            plan[path] = {}
            continue
        wanted = dict(params) if isinstance(params, dict) else {}
        wanted.setdefault("bits", bits)
        wanted.setdefault("group_size", group_size)
        wanted.setdefault("mode", mode)
        width = int(module.weight.shape[-1])
        size = int(wanted["group_size"])
        if width % size:
            fitted = fitting_group_size(width, size) if falls_back else None
            if fitted is None or fitted not in AFFINE_GROUPS or mode != "affine":
                plan[path] = {}  # stays in float, as mlx-lm leaves it
                fallbacks[path] = 0
                continue
            wanted["group_size"] = fitted
            fallbacks[path] = fitted
        plan[path] = wanted
    return plan, fallbacks


def _config_with(
    config: dict[str, Any], default: dict[str, Any], layers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``config`` with mlx-lm's ``quantization`` entry: the default, then each layer that
    differs from it (``false`` for a layer left in float)."""
    quantization: dict[str, Any] = dict(default)
    for path, params in layers.items():
        if not params:
            quantization[path] = False
        elif any(params.get(k) != default.get(k) for k in ("bits", "group_size", "mode")):
            quantization[path] = dict(params)
    config = dict(config)
    config["quantization"] = quantization
    config["quantization_config"] = quantization
    return config


def _layer_params(model: Any) -> dict[str, dict[str, Any]]:
    """What each quantizable-or-quantized layer ended as (``{}``: float)."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    layers: dict[str, dict[str, Any]] = {}
    for path, module in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        if hasattr(module, "bits") and hasattr(module, "group_size"):
            layers[path] = {
                "bits": int(module.bits),
                "group_size": int(module.group_size),
                "mode": str(getattr(module, "mode", "affine")),
            }
        elif hasattr(module, "to_quantized"):
            layers[path] = {}
    return layers


def quantize(
    source: Path,
    output: Path,
    *,
    bits: int,
    group_size: int,
    falls_back: bool,
    mode: str,
    recipe: str,
    algorithm: str,
    samples: Sequence[Sequence[int]] | None,
    bpw: float = 0.0,
    high_bits: int = 8,
) -> dict[str, Any]:
    """Quantize the MLX folder ``source`` into ``output``; return what each layer got."""
    mx = import_mlx()
    import mlx.nn as nn

    model, config = _load(source)
    if "quantization" in config:
        raise UsageError(
            f"{source.name} is already quantized",
            hint="quantize the float MLX export (the `mlx` exporter)",
        )
    if mode != "affine":
        group_size, bits = MODE_GROUP[mode], MODE_BITS[mode]
    if recipe:
        bits = recipe_bits(recipe)
    default = {"group_size": group_size, "bits": bits, "mode": mode}
    fallbacks: dict[str, int] = {}
    if algorithm == "rtn":
        plan, fallbacks = _plan(
            model, bits=bits, group_size=group_size, falls_back=falls_back, mode=mode, recipe=recipe
        )

        def predicate(path: str, module: Any) -> Any:
            params = plan.get(path)
            return dict(params) if params else False

        nn.quantize(model, group_size, bits, mode=mode, class_predicate=predicate)
    else:
        if not samples:
            raise UsageError(f"mlx-lm: {algorithm} needs calibration rows (--calibration)")
        width = min(len(row) for row in samples)
        data = mx.array([list(row[:width]) for row in samples])
        mx.random.seed(0)
        if algorithm == "dynamic":
            _dynamic_quantize(model, data[:DYNAMIC_ROWS], bits, high_bits, group_size, bpw)
        elif algorithm == "awq":
            from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS, awq_quantize

            awq_config = AWQ_MODEL_CONFIGS.get(str(config.get("model_type")))
            if awq_config is None:
                raise UnsupportedModelError(
                    f"mlx-lm has no AWQ recipe for {config.get('model_type')!r} models"
                )
            awq_quantize(model, data, awq_config, group_size=group_size, bits=bits)
        elif algorithm == "gptq":
            from mlx_lm.quant.gptq import gptq_quantize

            model, _ = gptq_quantize(
                model, data, bits, group_size, fallback_bits=8, fallback_group_size=group_size
            )
        else:  # pragma: no cover - options restrict the choices
            raise UsageError(f"mlx-lm: unknown algorithm {algorithm!r}")
    layers = _layer_params(model)
    config = _config_with(config, default, layers)
    mx.eval(model.parameters())
    from mlx_lm.utils import compute_bits_per_weight

    bpw = float(compute_bits_per_weight(model))
    _save(model, config, source, output)
    return {"default": default, "layers": layers, "fallbacks": fallbacks, "bits_per_weight": bpw}


DYNAMIC_ROWS = 16  # calibration rows the gradients of mlx-lm's sensitivities run over


def _dynamic_quantize(
    model: Any, data: Any, low: int, high: int, group_size: int, bpw: float
) -> dict[str, Any]:
    """mlx-lm's dynamic quantization, to a budget that holds: mlx-lm's first-order estimate of
    each layer's sensitivity (the gradient of the KL from the float model against the change
    from ``high`` to ``low`` bits), then the knapsack of :mod:`quantforge.choosing.allocation`
    picks which layers get ``high`` bits for the least summed estimate at ``bpw`` bits per
    weight or fewer. (mlx-lm's own threshold search may land above the target.)"""
    import copy

    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities
    from mlx_lm.utils import compute_bits_per_weight
    from quantforge.choosing.allocation import Choice, Sensitivity, choose, predicted_kl

    lowest = copy.deepcopy(model)
    nn.quantize(lowest, group_size, low)
    floor = float(compute_bits_per_weight(lowest))
    if floor > bpw:
        raise UsageError(
            f"mlx-lm: with every layer at {low} bits this model is already {floor:.3f} bits "
            f"per weight (scales and biases are stored in the model's dtype); bpw {bpw:g} "
            "cannot be met",
            hint=f"raise bpw above {floor:.2f}, or export in float16 (-v mlx:float16)",
        )
    total_bits = 8 * sum(v.nbytes for _, v in tree_flatten(lowest.parameters()))
    params = total_bits / floor
    found = dict(estimate_sensitivities(model, data, low, group_size, high, group_size))
    modules = dict(tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module))

    def bits_of(path: str, bits: int) -> int:
        weight = modules[path].weight
        scale_bits = 2 * 8 * weight.dtype.size  # a scale and a bias per group
        return int(weight.size * bits + weight.size // group_size * scale_bits)

    choices = {
        path: [
            Choice(str(low), bits_of(path, low), max(value, 0.0)),
            Choice(str(high), bits_of(path, high), 0.0),
        ]
        for path, value in found.items()
        if path in modules
    }
    fixed = total_bits - sum(c[0].nbytes for c in choices.values())
    chosen = choose(Sensitivity(choices, int(fixed), int(params), 0), bpw * params)
    assert chosen is not None  # every layer low fits: checked above
    raised = {path for path, c in chosen.items() if c.type == str(high)}

    def predicate(path: str, module: Any) -> Any:
        if not hasattr(module, "to_quantized"):
            return False
        return {"bits": high, "group_size": group_size} if path in raised else True

    nn.quantize(model, group_size, low, class_predicate=predicate)
    return {"raised": len(raised), "predicted": predicted_kl(chosen)}


def precision_report(report: dict[str, Any], requested_group: int) -> dict[str, Any]:
    """``quantforge-precision.json``: bits by layer, and where the group size fell back."""
    layers: dict[str, dict[str, Any]] = report["layers"]
    modules = {path: (p["bits"] if p else "float") for path, p in layers.items()}
    precision: dict[str, Any] = {
        "default_bits": report["default"]["bits"],
        "mode": report["default"]["mode"],
        "group_size": report["default"]["group_size"],
        "bits_per_weight": round(report["bits_per_weight"], 4),
        "modules": modules,
    }
    fallbacks: dict[str, int] = report["fallbacks"]
    if fallbacks:
        fitted = {p: s for p, s in fallbacks.items() if s}
        floats = sorted(p for p, s in fallbacks.items() if not s)
        if fitted:
            precision["group_sizes"] = fitted
        parts = []
        if fitted:
            parts.append(
                f"group size {requested_group} does not divide {len(fitted)} weights' width: "
                "those use the largest group MLX takes that does"
            )
        if floats:
            parts.append(
                f"{len(floats)} weights have a width no MLX group size divides and stay in "
                f"float ({', '.join(floats[:3])}{', ...' if len(floats) > 3 else ''})"
            )
        precision["fallback"] = "; ".join(parts)
    return precision


def write_precision(output: Path, precision: dict[str, Any]) -> None:
    (output / PRECISION_FILE).write_text(json.dumps(precision, indent=2), encoding="utf-8")
