"""Run llm-compressor's ``oneshot`` on one model: executed by the worker environment's Python.

This file imports nothing from quantforge (that environment does not have it). It reads a
JSON job (its first argument), quantizes the model's ``nn.Linear`` layers with the
compressed-tensors scheme named there, saves the compressed checkpoint into the job's
output folder and writes a report of what each layer got (its second argument).
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from typing import Any


def _assign_groups(model: Any, job: dict[str, Any]) -> tuple[dict[int, list[str]], list[str]]:
    """Each quantized Linear's group size (the first of the job's sizes that divides its
    input width), and the layers no size divides (they stay in float)."""
    import torch

    groups: dict[int, list[str]] = defaultdict(list)
    floats: list[str] = []
    ignore = set(job["ignore"])
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] in ignore:
            continue
        fitting = [g for g in job["group_sizes"] if g <= 0 or module.in_features % g == 0]
        if fitting:
            groups[fitting[0]].append(name)
        else:
            floats.append(name)
    return dict(groups), floats


def _targets(names: list[str], everyone: list[str]) -> list[str]:
    """Compact targets for ``names``: one regex per layer kind (``q_proj``) when every layer
    of that kind is in ``names``, the layer's own name otherwise."""
    kinds = defaultdict(list)
    for name in everyone:
        kinds[name.split(".")[-1]].append(name)
    chosen = set(names)
    targets = []
    for kind, members in sorted(kinds.items()):
        inside = [m for m in members if m in chosen]
        if not inside:
            continue
        if len(inside) == len(members):
            targets.append(f"re:.*\\.{re.escape(kind)}$")
        else:
            targets.extend(inside)
    return targets


def main(job_path: str, report_path: str) -> int:
    with open(job_path, encoding="utf-8") as spec:
        job = json.load(spec)
    import torch
    from compressed_tensors.quantization import preset_name_to_scheme
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM

    torch.manual_seed(int(job["seed"]))
    dtype = "auto" if job["dtype"] == "auto" else getattr(torch, job["dtype"])
    model = AutoModelForCausalLM.from_pretrained(job["source"], dtype=dtype)
    model.eval()
    groups, floats = _assign_groups(model, job)
    everyone = sorted(n for names in groups.values() for n in names) + floats
    config_groups = {}
    for index, (size, names) in enumerate(sorted(groups.items(), reverse=True)):
        scheme = preset_name_to_scheme(job["scheme"], _targets(names, everyone))
        if size > 0 and scheme.weights is not None:
            scheme.weights.group_size = size
        config_groups[f"group_{index}"] = scheme
    ignore = [f"re:.*{re.escape(kind)}$" for kind in job["ignore"]] + floats
    if job["algorithm"] == "gptq":
        recipe: Any = GPTQModifier(
            config_groups=config_groups, ignore=ignore, dampening_frac=float(job["damp"])
        )
    else:
        recipe = QuantizationModifier(config_groups=config_groups, ignore=ignore)
    rows = job.get("calibration") or []
    if rows:
        from datasets import Dataset

        data = Dataset.from_dict(
            {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}
        )
        oneshot(
            model=model,
            tokenizer=job["source"],
            recipe=recipe,
            dataset=data,
            num_calibration_samples=len(rows),
            max_seq_length=max(len(r) for r in rows),
            shuffle_calibration_samples=False,
        )
    else:
        oneshot(model=model, recipe=recipe)
    model.save_pretrained(job["output"], save_compressed=True)
    report = {
        "group_sizes": {str(size): len(names) for size, names in groups.items()},
        "modules": {n: size for size, names in groups.items() for n in names},
        "float": floats,
    }
    with open(report_path, "w", encoding="utf-8") as out:
        json.dump(report, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
