"""GGUF -> quantized GGUF with ``llama_model_quantize``, optionally guided by an importance matrix.

The importance matrix is what llama.cpp's ``llama-imatrix`` computes: for every matrix
multiplication, the mean of the squared input activations per input column over the
calibration tokens. It is computed here with PyTorch forward hooks on the HF base model
and handed to llama.cpp by tensor name (``blk.0.attn_q.weight``) through
``llama_model_quantize_params.imatrix``.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from quantforge.errors import QuantforgeError

# llama_ftype values (llama.h) and the nominal bits per weight of each type.
FTYPES: dict[str, tuple[int, float]] = {
    "F16": (1, 16),
    "BF16": (32, 16),
    "Q8_0": (7, 8.5),
    "Q6_K": (18, 6.56),
    "Q5_K_M": (17, 5.69),
    "Q5_K_S": (16, 5.54),
    "Q5_0": (8, 5.5),
    "Q5_1": (9, 6),
    "Q4_K_M": (15, 4.89),
    "Q4_K_S": (14, 4.58),
    "Q4_0": (2, 4.5),
    "Q4_1": (3, 5),
    "IQ4_NL": (25, 4.5),
    "IQ4_XS": (30, 4.25),
    "Q3_K_L": (13, 4.27),
    "Q3_K_M": (12, 3.91),
    "Q3_K_S": (11, 3.5),
    "IQ3_M": (27, 3.66),
    "IQ3_S": (26, 3.44),
    "IQ3_XS": (22, 3.3),
    "IQ3_XXS": (23, 3.06),
    "Q2_K": (10, 3.35),
    "Q2_K_S": (21, 2.96),
    "IQ2_M": (29, 2.7),
    "IQ2_S": (28, 2.5),
    "IQ2_XS": (20, 2.31),
    "IQ2_XXS": (19, 2.06),
    "IQ1_M": (31, 1.75),
    "IQ1_S": (24, 1.56),
}
# Types llama.cpp refuses to make without an importance matrix (llama-quant.cpp,
# tensor_requires_imatrix): their grids are too coarse to round well blind. IQ3_XS
# writes some tensors as IQ3_XXS, so it is refused too.
NEEDS_IMATRIX = frozenset(
    {"IQ3_XS", "IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "Q2_K_S"}
)

_FALLBACK = re.compile(
    r"(\S+)\s+-\s+ncols\s+(\d+)\s+not divisible by\s+(\d+) \(required for type\s+(\w+)\)"
    r".*?falling back to\s+(\w+)"
)


def importance_matrix(
    base: Path, rows: Sequence[Sequence[int]], gguf_arch: str, n_layers: int, gguf_py: Path
) -> dict[str, list[float]]:
    """Mean squared input activation per column of every linear layer, by GGUF tensor name."""
    import torch
    from transformers import AutoModelForCausalLM

    if str(gguf_py) not in sys.path:
        sys.path.insert(1, str(gguf_py))
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == gguf_arch)
    names = gguf.get_tensor_name_map(arch, n_layers)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for hf_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        gguf_name = names.get_name(hf_name + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            continue

        def hook(_mod: Any, inputs: tuple[Any, ...], _out: Any, key: str = gguf_name) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[key] = sums.get(key, 0) + (x * x).sum(0)
            counts[key] = counts.get(key, 0) + x.shape[0]

        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for row in rows:
            model(input_ids=torch.tensor([list(row)], dtype=torch.long))
    for h in hooks:
        h.remove()
    return {k: (sums[k] / counts[k]).float().tolist() for k in sums}


class _LogCapture:
    """Collects llama.cpp's log lines (and echoes them to stderr) while it quantizes."""

    def __init__(self, llama_cpp: Any) -> None:
        self.lines: list[str] = []
        self._partial = ""
        self._llama_cpp = llama_cpp

        def callback(_level: int, text: bytes, _user: Any) -> None:
            chunk = text.decode("utf-8", "replace")
            sys.stderr.write(chunk)
            self._partial += chunk
            *done, self._partial = self._partial.split("\n")
            self.lines.extend(done)

        self._callback = llama_cpp.llama_log_callback(callback)

    def __enter__(self) -> _LogCapture:
        self._llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._partial:
            self.lines.append(self._partial)
        self._llama_cpp.llama_log_set(self._llama_cpp.llama_log_callback(0), ctypes.c_void_p(0))


def quantize_gguf(
    source: Path,
    output: Path,
    qtype: str,
    imatrix: dict[str, list[float]] | None,
    threads: int,
    *,
    pure: bool = False,
    tensor_types: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Quantize ``source`` into ``output``; returns what llama.cpp did (fallbacks, sizes).

    ``pure``: every matrix gets ``qtype``'s base type (no mixes such as Q4_K_M's Q6_K layers).
    ``tensor_types``: ggml types for tensors by exact name, through llama.cpp's own per-tensor
    overrides (``llama_model_quantize_params.tt_overrides``).
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[qtype][0]
    params.nthread = threads
    params.pure = pure
    keep: list[Any] = []
    if tensor_types:
        overrides = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for i, (name, ggml_type) in enumerate(sorted(tensor_types.items())):
            pattern = f"^{re.escape(name)}$".encode()
            keep.append(pattern)
            overrides[i].pattern = pattern
            overrides[i].type = ggml_type
        overrides[len(tensor_types)].pattern = None  # terminator
        keep.append(overrides)
        params.tt_overrides = ctypes.cast(
            overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override)
        )
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            data = (ctypes.c_float * len(values))(*values)
            encoded = name.encode()
            keep.extend([data, encoded])
            entries[i].name = encoded
            entries[i].data = ctypes.cast(data, ctypes.POINTER(ctypes.c_float))
            entries[i].size = len(values)
        entries[len(imatrix)].name = None  # terminator
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    with _LogCapture(llama_cpp) as log:
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(output).encode(), ctypes.byref(params)
        )
    if status != 0 or not output.exists():
        said = [ln.strip() for ln in log.lines if "error" in ln.lower() or "failed" in ln.lower()]
        raise QuantforgeError(
            f"llama.cpp could not quantize to {qtype}: {(said or ['status ' + str(status)])[-1]}"
        )
    fallbacks = [
        {"tensor": m[1], "columns": int(m[2]), "block": int(m[3]), "wanted": m[4], "used": m[5]}
        for m in (_FALLBACK.search(line) for line in log.lines)
        if m
    ]
    return {
        "type": qtype,
        "imatrix": bool(imatrix),
        "fallbacks": fallbacks,
        "tensor_types": tensor_types_said(log.lines),
    }


# llama.cpp's line per tensor as it writes it: "[  2/ 272] token_embd.weight - [ 576,
# 49152, 1, 1], type = f16, converting to q8_0 .. size = ..." (or "size = ..." as it was)
_TENSOR_LINE = re.compile(
    r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+-\s+\[[^\]]*\],\s+type =\s+(\w+),"
    r"\s+(?:converting to\s+(\w+)|size)"
)


def tensor_types_said(lines: list[str]) -> dict[str, str] | None:
    """Each tensor's type in the file llama.cpp wrote (``Q4_K``, ``F32``: gguf-py's names),
    read from its log, which names every tensor: reading the file back with gguf-py takes
    seconds on a real vocabulary. ``None`` when the log does not name every tensor (a
    llama.cpp that words it otherwise): read the file then (:func:`gguf_facts`)."""
    types: dict[str, str] = {}
    total = None
    for line in lines:
        m = _TENSOR_LINE.match(line.strip())
        if m:
            total = int(m[2])
            types[m[3]] = (m[5] or m[4]).upper()
    return types if types and len(types) == total else None


def gguf_facts(path: Path, gguf_py: Path) -> dict[str, Any]:
    """Architecture, block count and tensor types of a GGUF file (read with gguf-py)."""
    if str(gguf_py) not in sys.path:
        sys.path.insert(1, str(gguf_py))
    import gguf

    reader = gguf.GGUFReader(path)
    field = reader.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    blocks = reader.fields[f"{arch}.block_count"]
    n_layers = int(blocks.parts[blocks.data[0]][0])
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    return {"arch": arch, "n_layers": n_layers, "tensor_types": types}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
