"""The torch side of RTN: quantize, pack, save, and load with on-the-fly dequantization."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from quantforge.choosing.budget import given_budget
from quantforge.choosing.sensitivity import cut_rows
from quantforge.errors import UsageError
from quantforge.interfaces import StepContext, fitting_group_size
from quantforge.model.artifacts import PRECISION_FILE, copy_tokenizer_files
from quantforge.model.overrides import Rule, bits_for, parse_overrides
from quantforge.options import OptionValue
from safetensors.torch import load_file, save_file
from torch import nn

from quantforge_rtn.budget import budget_rules
from quantforge_rtn.kernels import dequantize, quantize_weight

CONFIG_FILE = "rtn_config.json"


class RTNLinear(nn.Module):
    """A Linear whose weight lives packed; dequantized for each forward."""

    def __init__(
        self, in_features: int, out_features: int, bits: int, group_size: int, bias: bool
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        packed = in_features // 2 if bits == 4 else in_features
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros(out_features, packed, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize(self.qweight, self.scales, self.zeros, self.bits, self.group_size)
        return nn.functional.linear(x, w.to(x.dtype), self.bias)


def _targets(
    model: nn.Module,
    skip: list[str],
    group_size: int,
    rules: list[Rule],
    bits: int,
    shared: set[str],
) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """Linear layers to quantize with their bits (mixed precision rules applied), the group
    size of those whose width ``group_size`` does not divide, and the layers kept in full
    precision because no group size fits (or because they share their weight with another
    module: a tied ``lm_head``; ``shared`` names such tensors)."""
    chosen: dict[str, int] = {}
    groups: dict[str, int] = {}
    kept: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(name.endswith(s) for s in skip):
            continue
        module_bits = bits_for(name, rules, bits)
        if module_bits is None:
            continue
        size = fitting_group_size(module.in_features, group_size)
        if size is None or f"{name}.weight" in shared:
            kept.append(name)
            continue
        if size != group_size:
            groups[name] = size
        chosen[name] = module_bits
    return chosen, groups, kept


def _shared_weights(model: nn.Module) -> set[str]:
    """Names of tensors that share storage with an earlier one (tied embeddings)."""
    seen: set[int] = set()
    shared: set[str] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        ptr = tensor.data_ptr()
        if ptr in seen:
            shared.add(name)
        seen.add(ptr)
    return shared


def quantize_folder(
    source: Path, output: Path, options: Mapping[str, OptionValue], context: StepContext
) -> None:
    from transformers import AutoModelForCausalLM

    bits, group_size = int(options["bits"]), int(options["group_size"])
    symmetric = bool(options["symmetric"])
    skip = [s.strip() for s in str(options["skip"]).split(",") if s.strip()]
    rules = parse_overrides("rtn", str(options["overrides"]), (4, 8))

    def load_base() -> Any:
        context.log(f"rtn: loading base model from {source}")
        return AutoModelForCausalLM.from_pretrained(source, device_map="cpu")

    # Several RTN variants of one base in one worker load the base once.
    base = context.remember(("hf-model", str(source)), load_base)
    model = copy.deepcopy(base)
    shared = _shared_weights(model)
    chosen: dict[str, Any] = {}
    if given_budget("rtn", options):
        if context.calibration is None:
            raise UsageError("rtn: a budget needs calibration tokens to measure sensitivities")
        layers, fitted, _ = _targets(model, skip, group_size, [], bits, shared)
        rules, chosen = budget_rules(
            model,
            {n: fitted.get(n, group_size) for n in layers},
            options,
            source,
            cut_rows(context.calibration.samples, int(str(options["tokens"]))),
            shared,
            context.log,
            lambda done, total: context.progress(done, total, "layers"),
        )
    targets, groups, kept = _targets(model, skip, group_size, rules, bits, shared)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if name in shared:
            continue  # a tied weight is stored once; tie_weights() restores it on load
        if module in targets and name.endswith(".weight"):
            size = groups.get(module, group_size)
            packed = quantize_weight(tensor, targets[module], size, symmetric)
            for key, value in packed.items():
                tensors[f"{module}.{key}"] = value
        else:
            tensors[name] = tensor.contiguous()
    save_file(tensors, str(output / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(output)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(output)
    spec: dict[str, Any] = {
        "bits": bits,
        "group_size": group_size,
        "symmetric": symmetric,
        "modules": dict(sorted(targets.items())),
    }
    if groups:
        spec["group_sizes"] = dict(sorted(groups.items()))
    (output / CONFIG_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Embedding)]
    precision: dict[str, Any] = {
        "default_bits": bits,
        "group_size": group_size,
        "modules": {n: targets.get(n, "unquantized") for n in sorted(linear)},
        **chosen,
    }
    if groups:
        precision["group_sizes"] = dict(sorted(groups.items()))
        precision["fallback"] = (
            f"group size {group_size} does not divide {len(groups)} layers' input width: "
            "those use the largest power of two that does"
        )
    (output / PRECISION_FILE).write_text(json.dumps(precision, indent=2), encoding="utf-8")
    copy_tokenizer_files(source, output)
    fallback = sorted(set(groups.values()))
    context.log(
        f"rtn: {len(targets)} linear layers at {bits} bits, group {group_size}"
        + (
            f" ({len(groups)} at group {'/'.join(map(str, fallback))}: {group_size} does not divide them)"
            if groups
            else ""
        )
        + (f"; kept in full precision: {', '.join(kept)}" if kept else "")
    )


def load_quantized(path: Path) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    from accelerate import init_empty_weights

    config = AutoConfig.from_pretrained(path)
    # weights on the meta device, buffers real: non-persistent ones (rotary inv_freq, Gemma's
    # embedding scale) are not in the file, and each module computes its own at construction
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    modules = spec["modules"]
    if isinstance(modules, list):  # written before per-module bits existed
        modules = {name: spec["bits"] for name in modules}
    for name, module_bits in modules.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        setattr(
            parent,
            child,
            RTNLinear(
                old.in_features,
                old.out_features,
                module_bits,
                spec.get("group_sizes", {}).get(name, spec["group_size"]),
                old.bias is not None,
            ),
        )
    state = load_file(str(path / "model.safetensors"))
    _, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if unexpected or still_meta:
        raise RuntimeError(
            f"RTN checkpoint {path} does not match its config: "
            f"unexpected {unexpected[:3]}, not loaded {still_meta[:3]}"
        )
    return model.eval()
