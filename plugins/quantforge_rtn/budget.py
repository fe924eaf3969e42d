"""RTN to a budget: each linear layer's bits (4, 8, or left in float) chosen from measured
sensitivities, the same knapsack ``gguf-mix`` uses (:mod:`quantforge.choosing.allocation`),
then built through RTN's own per-layer overrides."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from quantforge.choosing.allocation import Choice, Sensitivity
from quantforge.choosing.budget import FLOAT, layer_rules, sensitivity_file, solve, summary
from quantforge.choosing.sensitivity import KLProbe
from quantforge.model.overrides import Rule
from quantforge.options import OptionValue
from torch import nn

from quantforge_rtn.kernels import dequantize, quantize_weight


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

    def candidates(weight: Any, group_size: int) -> Iterator[tuple[str, int, Any]]:
        yield FLOAT, weight.numel() * weight.element_size(), None
        for bits in (8, 4):
            packed = quantize_weight(weight, bits, group_size, symmetric)
            nbytes = sum(t.numel() * t.element_size() for t in packed.values())
            yield (
                str(bits),
                nbytes,
                dequantize(packed["qweight"], packed["scales"], packed["zeros"], bits, group_size),
            )

    for done, (name, group_size) in enumerate(sorted(layers.items())):
        module = modules[name]
        assert isinstance(module, nn.Linear)
        weight = module.weight.detach()
        choices[name] = probe.choices(f"{name}.weight", candidates(weight, group_size))
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
    keys = ("group_size", "symmetric", "skip")
    cached = sensitivity_file(
        "rtn-sensitivity", [{k: str(options[k]) for k in keys}, rows], weights=source
    )
    known = Sensitivity.load(cached)
    if known is not None:
        choices = known.choices
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
    if known is None:
        sens.save(cached)
    chosen, budget = solve("rtn", sens, options)
    return layer_rules(chosen), summary(sens, chosen, budget, sum(map(len, rows)))
