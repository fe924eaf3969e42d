"""The ``gguf-mix`` step: candidate files, sensitivities (kept in the cache), the knapsack,
and llama.cpp's build of the chosen types (see :mod:`quantforge_llamacpp.mix`)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quantforge import Artifact, StepContext
from quantforge.choosing.allocation import (
    Choice,
    Sensitivity,
    choose,
    choose_for_kl,
    file_bytes,
    predicted_kl,
)
from quantforge.errors import QuantforgeError, UsageError
from quantforge.model.sensitivity import cut_rows
from quantforge.options import OptionValue

from quantforge_llamacpp.mix import (
    DEFAULT_TYPES,
    TYPE_FTYPES,
    measure,
    parse_types,
)

MB = 1_000_000
SIDE_FILES = ("config.json", "generation_config.json")  # copied beside the GGUF


def _cache_file(source: Artifact, types: list[str], rows: list[list[int]]) -> Path:
    from quantforge.running.runner import default_cache_dir

    from quantforge_llamacpp.converter import llama_cpp_version

    digest = hashlib.sha256()
    for part in (source.path.name, str(source.manifest.get("key", "")), llama_cpp_version()):
        digest.update(part.encode() + b"\0")
    digest.update(json.dumps([types, rows]).encode())
    return default_cache_dir() / "gguf-sensitivity" / f"{digest.hexdigest()[:32]}.json"


def _budget(
    options: Mapping[str, OptionValue], sens: Sensitivity, source: Path
) -> tuple[str, float]:
    bpw = float(str(options["bpw"]))
    if bpw:
        return f"{bpw:g} bits per weight", bpw * sens.params / 8
    size = float(str(options["max_size_mb"]))
    side = sum((source / n).stat().st_size for n in SIDE_FILES if (source / n).is_file())
    return f"{size:g} MB", size * MB - sens.overhead_bytes - side


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
    with tempfile.TemporaryDirectory(prefix="gguf-mix-", dir=output.parent) as tmp:
        typed = {}
        for t in types:
            path = Path(tmp) / f"{t}.gguf"
            quantize_gguf(src, path, TYPE_FTYPES[t], None, threads, pure=True)
            typed[t] = path
        cached = _cache_file(source, types, rows)
        if cached.is_file():
            sens = Sensitivity.from_dict(json.loads(cached.read_text(encoding="utf-8")))
            context.log(f"gguf-mix: sensitivities from {cached}")
        else:
            context.log(
                f"gguf-mix: measuring {len(types)} types per matrix on {sum(map(len, rows))} tokens"
            )
            sens = measure(
                context.base_model,
                src,
                typed,
                rows,
                gguf,
                lambda done, total: context.progress(done, total, "tensors"),
            )
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(sens.as_dict()), encoding="utf-8")
            partial.replace(cached)
        if not sens.choices:
            raise QuantforgeError(
                "gguf-mix: no matrix of the GGUF matched a weight of the HF base",
                hint="use llamacpp:TYPE for this model",
            )
        max_kl = float(str(options["max_kl"]))
        if max_kl:
            budget = f"predicted KL {max_kl:g}"
            chosen = choose_for_kl(sens, max_kl)
            smallest = None
        else:
            budget, budget_bytes = _budget(options, sens, source.path)
            chosen = choose(sens, budget_bytes)
            smallest = {n: c[0] for n, c in sens.choices.items()}
        if chosen is None:
            if smallest is not None:
                least = file_bytes(sens, smallest)
                raise UsageError(
                    f"gguf-mix: {budget} is below the smallest mix of types {','.join(types)} "
                    f"({least / MB:.1f} MB, {8 * (least - sens.overhead_bytes) / sens.params:.2f} bpw)",
                    hint="raise the budget or add a smaller type (types=Q2_K,...)",
                )
            largest = {n: c[-1] for n, c in sens.choices.items()}
            raise UsageError(
                f"gguf-mix: even the largest types predict KL {predicted_kl(largest):.4g}, "
                f"above max_kl {max_kl:g}",
                hint="raise max_kl or add a larger type (types=...,Q8_0)",
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
    counts: dict[str, int] = {}
    for c in chosen.values():
        counts[c.type] = counts.get(c.type, 0) + 1
    return {
        "default_bits": round(8 * tensor_bytes / sens.params, 3),
        "type": "mix",
        "budget": budget,
        "candidates": types,
        "chosen_types": dict(sorted(counts.items())),
        "predicted_kl": predicted_kl(chosen),
        "predicted_mb": round(file_bytes(sens, chosen) / MB, 3),
        "sensitivity_tokens": sum(map(len, rows)),
        "imatrix": False,
        "modules": {
            n: t for n, t in written.items() if not n.endswith("norm.weight") and t != "F32"
        },
    }
