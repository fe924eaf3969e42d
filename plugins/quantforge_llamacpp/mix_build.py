"""The ``gguf-mix`` step: candidate files, sensitivities (kept in the cache), the knapsack,
and llama.cpp's build of the chosen types (see :mod:`quantforge_llamacpp.mix`)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, StepContext
from quantforge.choosing.allocation import Choice, Sensitivity
from quantforge.choosing.budget import sensitivity_file, solve, summary
from quantforge.choosing.sensitivity import cut_rows
from quantforge.errors import QuantforgeError
from quantforge.options import OptionValue

from quantforge_llamacpp.mix import (
    DEFAULT_TYPES,
    TYPE_FTYPES,
    measure,
    parse_types,
)

MB = 1_000_000
SIDE_FILES = ("config.json", "generation_config.json")  # copied beside the GGUF


def build_mix(
    source: Artifact, options: Mapping[str, OptionValue], output: Path, context: StepContext
) -> dict[str, Any]:
    """Write the mix to ``output`` (a .gguf path) and return what the precision file says."""
    from quantforge_llamacpp import gguf_file
    from quantforge_llamacpp.converter import converter_dir
    from quantforge_llamacpp.quantize import gguf_facts, quantize_gguf

    assert context.calibration is not None and context.base_model is not None
    gguf_py = converter_dir() / "gguf-py"
    if str(gguf_py) not in sys.path:
        sys.path.insert(1, str(gguf_py))
    import gguf

    src = gguf_file(source.path)
    types = parse_types(str(options["types"]) or DEFAULT_TYPES)
    rows = cut_rows(context.calibration.samples, int(str(options["tokens"])))
    threads = int(str(options["threads"])) or len(os.sched_getaffinity(0))
    probes = int(str(options["probes"]))
    with tempfile.TemporaryDirectory(prefix="gguf-mix-", dir=output.parent) as tmp:
        typed = {}
        for t in types:
            path = Path(tmp) / f"{t}.gguf"
            quantize_gguf(src, path, TYPE_FTYPES[t], None, threads, pure=True)
            typed[t] = path
        from quantforge_llamacpp.converter import llama_cpp_version

        cached = sensitivity_file(
            "gguf-sensitivity",
            [
                source.path.name,
                str(source.manifest.get("key", "")),
                llama_cpp_version(),
                types,
                rows,
                *([probes] if probes else []),
            ],
        )
        sens = Sensitivity.load(cached)
        if sens is not None:
            context.log(f"gguf-mix: sensitivities from {cached}")
        else:
            context.log(
                f"gguf-mix: measuring {probes or len(types)} of {len(types)} types per matrix on "
                f"{sum(map(len, rows))} tokens"
            )
            sens = measure(
                context.base_model,
                src,
                typed,
                rows,
                gguf,
                lambda done, total: context.progress(done, total, "tensors"),
                probes,
            )
            sens.save(cached)
        if not sens.choices:
            raise QuantforgeError(
                "gguf-mix: no matrix of the GGUF matched a weight of the HF base",
                hint="use llamacpp:TYPE for this model",
            )
        side = sum(
            (source.path / n).stat().st_size for n in SIDE_FILES if (source.path / n).is_file()
        )
        chosen, budget = solve(
            "gguf-mix",
            sens,
            options,
            side_bytes=side,
            smaller="raise the budget or add a smaller type (types=Q2_K,...)",
            larger="raise max_kl or add a larger type (types=...,Q8_0)",
        )
        top = max(types, key=lambda t: typed[t].stat().st_size)
        overrides = {n: int(gguf.GGMLQuantizationType[c.type]) for n, c in chosen.items()}
        quantize_gguf(
            src, output, TYPE_FTYPES[top], None, threads, pure=True, tensor_types=overrides
        )
    written = gguf_facts(output, gguf_py)["tensor_types"]
    wrong = {n: (c.type, written.get(n)) for n, c in chosen.items() if written.get(n) != c.type}
    if wrong:
        raise QuantforgeError(f"gguf-mix: llama.cpp wrote other types than chosen: {wrong}")
    return _report(sens, chosen, budget, types, rows, written)


def _report(
    sens: Sensitivity,
    chosen: Mapping[str, Choice],
    budget: str,
    types: list[str],
    rows: list[list[int]],
    written: Mapping[str, str],
) -> dict[str, Any]:
    tensor_bytes = sum(c.nbytes for c in chosen.values()) + sens.fixed_bytes
    return {
        "default_bits": round(8 * tensor_bytes / sens.params, 3),
        "type": "mix",
        "candidates": types,
        **summary(sens, chosen, budget, sum(map(len, rows))),
        "imatrix": False,
        "modules": {
            n: t for n, t in written.items() if not n.endswith("norm.weight") and t != "F32"
        },
    }
