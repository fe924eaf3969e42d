"""A quantizer that builds to a budget: its options, the check that one budget is given,
and the knapsack's answer to it (:mod:`quantforge.choosing.allocation`), or one line saying
why the budget cannot be met.

A method that measures its own sensitivities (a :class:`~quantforge.choosing.allocation.
Sensitivity`) adds :func:`budget_option_list` to its options, sets
``Quantizer.builds_to_budget``, calls :func:`given_budget` in ``check_model`` and
:func:`solve` in ``quantize``; ``quantforge search --max-size``/``--bpw`` then tries it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

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
from quantforge.options import Option, OptionValue

BUDGET_KEYS = ("bpw", "max_size_mb", "max_kl")
MB = 1_000_000
FLOAT = "float"  # the choice that leaves a layer unquantized


def budget_option_list(what: str) -> list[Option]:
    """The budget options (``bpw``, ``max_size_mb``, ``max_kl``) and ``tokens``, the
    calibration tokens each sensitivity is measured on; ``what``: what each tensor gets
    (``"4, 8 or float bits"``)."""
    return [
        Option(
            "bpw",
            float,
            0.0,
            f"budget: bits per weight of the whole model; each tensor gets {what}, chosen "
            "from measured sensitivities",
            min=0.0,
        ),
        Option("max_size_mb", float, 0.0, "budget: the output's size at most (MB)", min=0.0),
        Option("max_kl", float, 0.0, "budget: predicted KL divergence at most", min=0.0),
        Option(
            "tokens",
            int,
            256,
            "calibration tokens each sensitivity is measured on (with a budget)",
            min=16,
            max=8192,
        ),
    ]


def given_budget(
    method: str, options: Mapping[str, OptionValue], *, required: bool = False
) -> str | None:
    """Which budget option is set (``None``: none). More than one, none when ``required``,
    or a budget beside per-layer ``overrides`` is a :class:`UsageError`."""
    found = [k for k in BUDGET_KEYS if float(str(options[k])) > 0]
    if len(found) > 1 or (required and not found):
        raise UsageError(
            f"{method}: give exactly one budget: bpw, max_size_mb or max_kl"
            + (f" (got {' and '.join(found)})" if found else ""),
            hint=f"e.g. {method},bpw=4.5 or {method},max_size_mb=100",
        )
    if found and str(options.get("overrides", "")):
        raise UsageError(
            f"{method}: a budget chooses every layer's width; it cannot be combined with overrides",
            hint="drop overrides, or the budget",
        )
    return found[0] if found else None


def solve(
    method: str,
    sensitivity: Sensitivity,
    options: Mapping[str, OptionValue],
    *,
    side_bytes: int = 0,
    smaller: str = "raise the budget",
    larger: str = "raise max_kl",
) -> tuple[dict[str, Choice], str]:
    """The choice per tensor that meets the budget in ``options``, and the budget in words.
    ``side_bytes``: files beside the tensors' file that count towards ``max_size_mb``;
    ``smaller``/``larger``: the hint when even the smallest (largest) choices miss it."""
    kind = given_budget(method, options, required=True)
    assert kind is not None
    value = float(str(options[kind]))
    sens = replace(sensitivity, overhead_bytes=sensitivity.overhead_bytes + side_bytes)
    if kind == "max_kl":
        budget = f"predicted KL {value:g}"
        chosen = choose_for_kl(sens, value)
        if chosen is None:
            largest = {n: c[-1] for n, c in sens.choices.items()}
            raise UsageError(
                f"{method}: even the largest choices predict KL {predicted_kl(largest):.4g}, "
                f"above max_kl {value:g}",
                hint=larger,
            )
        return chosen, budget
    if kind == "bpw":
        budget, budget_bytes = f"{value:g} bits per weight", value * sens.params / 8
    else:
        budget, budget_bytes = f"{value:g} MB", value * MB - sens.overhead_bytes
    chosen = choose(sens, budget_bytes)
    if chosen is None:
        least = file_bytes(sens, {n: c[0] for n, c in sens.choices.items()})
        kinds = sorted({c[0].type for c in sens.choices.values()})
        raise UsageError(
            f"{method}: {budget} is below the smallest mix ({'/'.join(kinds)} everywhere): "
            f"{least / MB:.1f} MB, {8 * (least - sens.overhead_bytes) / sens.params:.2f} "
            "bits per weight",
            hint=smaller,
        )
    return chosen, budget


def layer_rules(chosen: Mapping[str, Choice]) -> list[Rule]:
    """Per-layer overrides (``quantforge.model.overrides``) for choices of bit widths
    (``"4"``, ``"8"``, or :data:`FLOAT`: left unquantized), one exact pattern per layer."""
    return [
        (f"^{re.escape(n)}$", None if c.type == FLOAT else int(c.type))
        for n, c in sorted(chosen.items())
    ]


def summary(
    sensitivity: Sensitivity, chosen: Mapping[str, Choice], budget: str, tokens: int
) -> dict[str, Any]:
    """What a precision file says about a choice: the budget, how many tensors got each
    choice, the predicted KL and size."""
    return {
        "budget": budget,
        "chosen": dict(sorted(Counter(c.type for c in chosen.values()).items())),
        "predicted_kl": predicted_kl(chosen),
        "predicted_mb": round(file_bytes(sensitivity, chosen) / MB, 3),
        "sensitivity_tokens": tokens,
    }


def sensitivity_file(kind: str, parts: Any, weights: Path | None = None) -> Path:
    """Where a sensitivity table is kept: ``<cache>/<kind>/<digest>.json``, the digest of
    ``parts`` (JSON: the options and tokens it was measured with) and, when given, of the
    ``*.safetensors`` files of ``weights`` (path, size and modification time)."""
    from quantforge.running.runner import default_cache_dir

    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in sorted(weights.glob("*.safetensors")) if weights is not None else []:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return default_cache_dir() / kind / f"{digest.hexdigest()[:32]}.json"
