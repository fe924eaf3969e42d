"""Per-tensor GGUF types chosen to a budget: measured sensitivities and a knapsack over them.

1. llama.cpp quantizes the source GGUF once per candidate type, *pure* (every matrix that
   type, or llama.cpp's own fallback where a width does not fit its block).
2. Sensitivity: each matrix of the HF base is replaced, alone, by its dequantized bytes from
   each candidate file (gguf-py reads them; rows are matched to the HF weight's rows, so
   llama.cpp's permutations of Q/K rows are undone), and the KL divergence of the model's
   next-token distribution from the base's is measured on calibration tokens.
3. A multiple-choice knapsack (dynamic programming over bytes) picks one type per matrix
   that minimises the summed KL under a size budget; for a KL budget, the smallest size whose
   optimum meets it (bisection over the size budget).
4. llama.cpp builds the chosen mix through its per-tensor overrides (``tt_overrides``).

The summed single-tensor KLs are a prediction (the errors are close to additive when they
are small); the variant is then measured like any other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from quantforge.choosing.allocation import Choice, Sensitivity
from quantforge.choosing.sensitivity import KLProbe, input_energy
from quantforge.errors import UsageError

# candidate ggml type -> the llama.cpp ftype whose pure quantization writes it
TYPE_FTYPES: dict[str, str] = {
    "Q2_K": "Q2_K",
    "Q3_K": "Q3_K_S",
    "IQ4_NL": "IQ4_NL",
    "Q4_0": "Q4_0",
    "Q4_K": "Q4_K_S",
    "Q5_0": "Q5_0",
    "Q5_K": "Q5_K_S",
    "Q6_K": "Q6_K",
    "Q8_0": "Q8_0",
}
DEFAULT_TYPES = "Q3_K,IQ4_NL,Q4_K,Q5_0,Q5_K,Q6_K,Q8_0"


def parse_types(text: str) -> list[str]:
    """The candidate types of a ``types=`` option, checked."""
    types = [t.strip().upper() for t in text.split(",") if t.strip()]
    unknown = [t for t in types if t not in TYPE_FTYPES]
    if unknown or len(types) < 2:
        raise UsageError(
            f"gguf-mix: types {text!r} "
            + (f"names unknown {unknown}" if unknown else "name fewer than two"),
            hint=f"choose two or more of {', '.join(TYPE_FTYPES)}",
        )
    return types


def _row_order(gguf_rows: Any, hf_rows: Any) -> Any | None:
    """``order`` with ``gguf_rows[k] == hf_rows[order[k]]`` for every row, or ``None``."""
    import numpy as np

    if gguf_rows.shape != hf_rows.shape:
        return None
    where = {
        hashlib.blake2b(r.tobytes(), digest_size=12).digest(): i for i, r in enumerate(hf_rows)
    }
    order = [where.get(hashlib.blake2b(r.tobytes(), digest_size=12).digest()) for r in gguf_rows]
    if any(i is None for i in order) or len(set(order)) != len(order):
        return None
    return np.asarray(order)


def measure(
    base: Path,
    source: Path,
    typed: Mapping[str, Path],
    rows: Sequence[Sequence[int]],
    gguf: Any,
    progress: Callable[[int, int], None] = lambda done, total: None,
    probes: int = 0,
) -> Sensitivity:
    """Each matrix's KL at each candidate type (``typed``: type -> its pure GGUF), alone.
    ``probes`` 1 or 2: the KL of that many types per linear weight is measured and the rest
    estimated from their output error (:meth:`KLProbe.estimated_choices`); 0: all measured."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    reader = gguf.GGUFReader(source)
    readers = {t: gguf.GGUFReader(p) for t, p in typed.items()}
    field = reader.fields["general.architecture"]
    arch_name = bytes(field.parts[field.data[0]]).decode()
    blocks = reader.fields[f"{arch_name}.block_count"]
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    names = gguf.get_tensor_name_map(arch, int(blocks.parts[blocks.data[0]][0]))

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.eval()
    params = dict(model.named_parameters())
    by_gguf = {}
    for hf_name in params:
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None:
            by_gguf[gguf_name] = hf_name

    sources = {t.name: t for t in reader.tensors}
    tensors = {t: {x.name: x for x in r.tensors} for t, r in readers.items()}
    decided: dict[str, tuple[str, Any]] = {}
    for name, tensor in sources.items():
        hf_name = by_gguf.get(name)
        if hf_name is None or len(tensor.shape) != 2:
            continue
        weight = params[hf_name].detach().numpy()
        order = _row_order(np.asarray(tensor.data), weight.astype(tensor.data.dtype))
        if order is not None:
            decided[name] = (hf_name, order)

    probe = KLProbe(model, rows)

    def candidates(name: str, shape: Any, order: Any) -> Any:
        seen = set()
        for found in tensors.values():
            quantized = found[name]
            actual = quantized.tensor_type.name
            if actual in seen:  # llama.cpp fell back to a type already measured
                continue
            seen.add(actual)
            values = gguf.quants.dequantize(quantized.data, quantized.tensor_type)
            values = np.asarray(values, dtype=np.float32).reshape(shape)
            restored = np.empty_like(values)
            restored[order] = values
            yield actual, int(quantized.n_bytes), torch.from_numpy(restored)

    energy = input_energy(model, probe.ids) if probes else {}
    choices: dict[str, list[Choice]] = {}
    for done, (name, (hf_name, order)) in enumerate(sorted(decided.items())):
        shape = tuple(params[hf_name].shape)
        found = candidates(name, shape, order)
        layer = hf_name.removesuffix(".weight")
        if layer in energy:
            choices[name] = probe.estimated_choices(hf_name, found, energy[layer], probes)
        else:  # embeddings, and everything when probes is 0
            choices[name] = probe.choices(hf_name, found)
        progress(done + 1, len(decided))

    top = max(typed, key=lambda t: sum(x.n_bytes for x in readers[t].tensors))
    fixed = sum(x.n_bytes for x in readers[top].tensors if x.name not in choices)
    file_bytes = typed[top].stat().st_size
    overhead = file_bytes - sum(x.n_bytes for x in readers[top].tensors)
    count = sum(int(np.prod(t.shape)) for t in reader.tensors)
    return Sensitivity(choices, fixed, count, overhead)
