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
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
BINS = 20_000  # resolution of the size axis of the knapsack


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


@dataclass(frozen=True)
class Choice:
    type: str
    nbytes: int
    kl: float


@dataclass
class Sensitivity:
    """What each decided matrix costs at each type, and what the rest of the file weighs."""

    choices: dict[str, list[Choice]]  # GGUF tensor name -> its distinct types
    fixed_bytes: int  # tensors not decided (norms; matrices no HF weight matches)
    params: int  # every tensor's element count
    overhead_bytes: int  # the file's header, metadata and alignment

    def as_dict(self) -> dict[str, Any]:
        return {
            "choices": {
                name: [[c.type, c.nbytes, c.kl] for c in options]
                for name, options in self.choices.items()
            },
            "fixed_bytes": self.fixed_bytes,
            "params": self.params,
            "overhead_bytes": self.overhead_bytes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        return cls(
            {
                n: [Choice(str(t), int(b), float(k)) for t, b, k in o]
                for n, o in data["choices"].items()
            },
            int(data["fixed_bytes"]),
            int(data["params"]),
            int(data["overhead_bytes"]),
        )


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
) -> Sensitivity:
    """Each matrix's KL at each candidate type (``typed``: type -> its pure GGUF), alone."""
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

    width = min(len(r) for r in rows)
    ids = torch.tensor([list(r[:width]) for r in rows], dtype=torch.long)
    replay = _LayerReplay(model, [decided[n][0] for n in decided])

    def log_probs() -> Any:
        with torch.inference_mode():
            return torch.log_softmax(model(ids).logits.double(), -1)

    with replay.recording():
        reference = log_probs()
    probs = reference.exp()
    tokens = ids.numel()

    def kl(block: int | None) -> float:
        with replay.replaying(block):
            got = log_probs()
        return float((probs * (reference - got)).sum()) / tokens

    choices: dict[str, list[Choice]] = {}
    for done, (name, (hf_name, order)) in enumerate(sorted(decided.items())):
        param = params[hf_name]
        original = param.detach().clone()
        seen: dict[str, Choice] = {}
        for _label, found in tensors.items():
            quantized = found[name]
            actual = quantized.tensor_type.name
            if actual in seen:
                continue
            values = gguf.quants.dequantize(quantized.data, quantized.tensor_type)
            values = np.asarray(values, dtype=np.float32).reshape(original.shape)
            restored = np.empty_like(values)
            restored[order] = values
            with torch.no_grad():
                param.copy_(torch.from_numpy(restored))
            seen[actual] = Choice(
                actual, int(quantized.n_bytes), max(kl(replay.block_of(hf_name)), 0.0)
            )
        with torch.no_grad():
            param.copy_(original)
        choices[name] = sorted(seen.values(), key=lambda c: c.nbytes)
        progress(done + 1, len(decided))

    top = max(typed, key=lambda t: sum(x.n_bytes for x in readers[t].tensors))
    fixed = sum(x.n_bytes for x in readers[top].tensors if x.name not in choices)
    file_bytes = typed[top].stat().st_size
    overhead = file_bytes - sum(x.n_bytes for x in readers[top].tensors)
    count = sum(int(np.prod(t.shape)) for t in reader.tensors)
    return Sensitivity(choices, fixed, count, overhead)


class _LayerReplay:
    """Skips the decoder blocks before the one a tensor is in: their outputs do not change,
    so they are recorded once (on the base) and returned as they were. Blocks are the
    numbered children of the model's longest ``ModuleList`` (``model.layers``, ``h``, ...)."""

    def __init__(self, model: Any, names: Sequence[str]) -> None:
        import torch

        self.layers: Any = None
        self.prefix = ""
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.ModuleList) and (
                self.layers is None or len(module) > len(self.layers)
            ):
                self.layers, self.prefix = module, name + "."
        self.outputs: dict[int, Any] = {}

    def block_of(self, param_name: str) -> int | None:
        if self.layers is None or not param_name.startswith(self.prefix):
            return None
        index = param_name[len(self.prefix) :].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    @contextmanager
    def recording(self) -> Iterator[None]:
        hooks = []
        for i, layer in enumerate(self.layers or []):

            def keep(_m: Any, _a: Any, out: Any, i: int = i) -> None:
                self.outputs[i] = out

            hooks.append(layer.register_forward_hook(keep))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    @contextmanager
    def replaying(self, block: int | None) -> Iterator[None]:
        patched = []
        for i in range(block or 0):
            if i not in self.outputs:
                break
            layer = self.layers[i]
            layer.forward = lambda *_a, _out=self.outputs[i], **_k: _out
            patched.append(layer)
        try:
            yield
        finally:
            for layer in patched:
                del layer.forward


def choose(sensitivity: Sensitivity, budget_bytes: float) -> dict[str, Choice] | None:
    """The type per matrix that minimises the summed KL with every tensor's bytes (decided
    and fixed) at most ``budget_bytes``; ``None`` when even the smallest types exceed it."""
    import numpy as np

    names = sorted(sensitivity.choices)
    floor = sum(sensitivity.choices[n][0].nbytes for n in names)
    room = budget_bytes - sensitivity.fixed_bytes - floor
    if room < 0:
        return None
    spread = sum(
        sensitivity.choices[n][-1].nbytes - sensitivity.choices[n][0].nbytes for n in names
    )
    if spread <= room:  # everything at its largest type fits
        return {n: sensitivity.choices[n][-1] for n in names}
    unit = room / BINS
    inf = math.inf
    best = np.full(BINS + 1, inf)
    best[0] = 0.0
    picks = np.zeros((len(names), BINS + 1), dtype=np.int8)
    for i, name in enumerate(names):
        options = sensitivity.choices[name]
        low = options[0].nbytes
        nxt = np.full(BINS + 1, inf)
        pick = np.zeros(BINS + 1, dtype=np.int8)
        for j, option in enumerate(options):
            w = math.ceil((option.nbytes - low) / unit) if unit > 0 else 0
            if w > BINS:
                continue
            shifted = np.full(BINS + 1, inf)
            shifted[w:] = best[: BINS + 1 - w] + option.kl
            better = shifted < nxt
            nxt[better] = shifted[better]
            pick[better] = j
        best = nxt
        picks[i] = pick
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        return None
    chosen: dict[str, Choice] = {}
    for i in range(len(names) - 1, -1, -1):
        option = sensitivity.choices[names[i]][int(picks[i, end])]
        chosen[names[i]] = option
        low = sensitivity.choices[names[i]][0].nbytes
        end -= math.ceil((option.nbytes - low) / unit) if unit > 0 else 0
    return chosen


def choose_for_kl(sensitivity: Sensitivity, max_kl: float) -> dict[str, Choice] | None:
    """The smallest mix whose predicted KL is at most ``max_kl`` (bisection over the size
    budget, within 0.1 % of the total); ``None`` when even the largest types exceed it."""
    names = sorted(sensitivity.choices)
    high = sensitivity.fixed_bytes + sum(sensitivity.choices[n][-1].nbytes for n in names)
    low = sensitivity.fixed_bytes + sum(sensitivity.choices[n][0].nbytes for n in names)
    largest = {n: sensitivity.choices[n][-1] for n in names}
    if predicted_kl(largest) > max_kl:
        return None
    best = largest
    while high - low > 0.001 * high:
        middle = (low + high) / 2
        found = choose(sensitivity, middle)
        if found is not None and predicted_kl(found) <= max_kl:
            best, high = found, middle
        else:
            low = middle
    return best


def predicted_kl(chosen: Mapping[str, Choice]) -> float:
    return sum(c.kl for c in chosen.values())


def file_bytes(sensitivity: Sensitivity, chosen: Mapping[str, Choice]) -> int:
    """The size the mix's file will have: its tensors, the fixed ones and the header."""
    return (
        sum(c.nbytes for c in chosen.values())
        + sensitivity.fixed_bytes
        + sensitivity.overhead_bytes
    )
