"""RTN to a budget: each linear layer's bits (4, 8, or left in float) chosen from measured
sensitivities, the same knapsack ``gguf-mix`` uses (:mod:`quantforge.choosing.allocation`),
then built through RTN's own per-layer overrides."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from quantforge.choosing.allocation import (
    Choice,
    Sensitivity,
    choose,
    choose_for_kl,
    file_bytes,
    predicted_kl,
)
from quantforge.errors import UsageError
from quantforge.model.overrides import Rule
from quantforge.model.sensitivity import KLProbe
from quantforge.options import OptionValue
from torch import nn

from quantforge_rtn.kernels import dequantize, quantize_weight

FLOAT = "float"
MB = 1_000_000


def budget_of(options: Mapping[str, OptionValue]) -> str | None:
    """Which budget option is set (``None``: none, a plain RTN run)."""
    found = [k for k in ("bpw", "max_size_mb", "max_kl") if float(str(options[k])) > 0]
    if len(found) > 1:
        raise UsageError(
            f"rtn: give one budget, not {' and '.join(found)}",
            hint="e.g. rtn,bpw=6 or rtn,max_size_mb=300",
        )
    if found and str(options["overrides"]):
        raise UsageError(
            "rtn: a budget chooses every layer's bits; it cannot be combined with overrides",
            hint="drop overrides, or the budget",
        )
    return found[0] if found else None


def _cache_file(source: Path, options: Mapping[str, OptionValue], rows: list[list[int]]) -> Path:
    from quantforge.running.runner import default_cache_dir

    digest = hashlib.sha256()
    for path in sorted(source.glob("*.safetensors")):
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    keys = ("group_size", "symmetric", "skip")
    digest.update(json.dumps([{k: str(options[k]) for k in keys}, rows]).encode())
    return default_cache_dir() / "rtn-sensitivity" / f"{digest.hexdigest()[:32]}.json"


def _measure(
    model: nn.Module,
    layers: Mapping[str, int],
    symmetric: bool,
    rows: list[list[int]],
    progress: Callable[[int, int], None],
) -> dict[str, list[Choice]]:
    """Each layer's bytes and KL at 4 and 8 bits (group sizes as ``layers`` gives them) and
    in float, each alone."""
    probe = KLProbe(model, rows)
    modules = dict(model.named_modules())
    choices: dict[str, list[Choice]] = {}
    for done, (name, group_size) in enumerate(sorted(layers.items())):
        module = modules[name]
        assert isinstance(module, nn.Linear)
        original = module.weight.detach().clone()
        block = probe.block_of(f"{name}.weight")
        found = [Choice(FLOAT, original.numel() * original.element_size(), 0.0)]
        for bits in (8, 4):
            packed = quantize_weight(original, bits, group_size, symmetric)
            nbytes = sum(t.numel() * t.element_size() for t in packed.values())
            restored = dequantize(
                packed["qweight"], packed["scales"], packed["zeros"], bits, group_size
            )
            with torch.no_grad():
                module.weight.copy_(restored.to(original.dtype))
            found.append(Choice(str(bits), nbytes, probe.kl(block)))
        with torch.no_grad():
            module.weight.copy_(original)
        choices[name] = sorted(found, key=lambda c: c.nbytes)
        progress(done + 1, len(layers))
    return choices


def budget_rules(
    model: nn.Module,
    layers: Mapping[str, int],
    options: Mapping[str, OptionValue],
    source: Path,
    rows: list[list[int]],
    shared: set[str],
    log: Callable[[str], None],
    progress: Callable[[int, int], None],
) -> tuple[list[Rule], dict[str, Any]]:
    """Overrides that meet the budget in ``options`` (one rule per layer), and what the
    precision file says about the choice."""
    cached = _cache_file(source, options, rows)
    if cached.is_file():
        choices = Sensitivity.from_dict(json.loads(cached.read_text(encoding="utf-8"))).choices
        log(f"rtn: sensitivities from {cached}")
    else:
        log(f"rtn: measuring {len(layers)} layers at 4 and 8 bits on {sum(map(len, rows))} tokens")
        choices = _measure(model, layers, bool(options["symmetric"]), rows, progress)
    state = model.state_dict()
    params = sum(t.numel() for n, t in state.items() if n not in shared)
    decided = {f"{n}.weight" for n in layers}
    fixed = sum(
        t.numel() * t.element_size()
        for n, t in state.items()
        if n not in shared and n not in decided
    )
    side = sum(
        p.stat().st_size for p in source.iterdir() if p.is_file() and p.suffix != ".safetensors"
    )
    sens = Sensitivity(choices, fixed, params, side + 4096)  # 4 KB: headers, rtn_config.json
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(sens.as_dict()), encoding="utf-8")
        partial.replace(cached)
    kind = budget_of(options)
    value = float(str(options[kind or "bpw"]))
    if kind == "max_kl":
        chosen, budget = choose_for_kl(sens, value), f"predicted KL {value:g}"
    elif kind == "bpw":
        chosen, budget = choose(sens, value * params / 8), f"{value:g} bits per weight"
    else:
        chosen, budget = choose(sens, value * MB - sens.overhead_bytes), f"{value:g} MB"
    if chosen is None:
        least = {n: c[0] for n, c in choices.items()}
        raise UsageError(
            f"rtn: {budget} cannot be met: the smallest choice (every layer at 4 bits) is "
            f"{file_bytes(sens, least) / MB:.1f} MB, "
            f"{8 * (file_bytes(sens, least) - sens.overhead_bytes) / params:.2f} bits per weight",
            hint="raise the budget",
        )
    rules: list[Rule] = [
        (f"^{re.escape(n)}$", None if c.type == FLOAT else int(c.type)) for n, c in chosen.items()
    ]
    counts: dict[str, int] = {}
    for c in chosen.values():
        counts[c.type] = counts.get(c.type, 0) + 1
    report = {
        "budget": budget,
        "chosen_bits": dict(sorted(counts.items())),
        "predicted_kl": predicted_kl(chosen),
        "predicted_mb": round(file_bytes(sens, chosen) / MB, 3),
        "sensitivity_tokens": sum(map(len, rows)),
    }
    return rules, report
