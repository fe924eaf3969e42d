"""The QLoRA training loop: 4-bit base, LoRA adapters, AdamW over calibration rows."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from quantforge.interfaces import StepContext
from quantforge.model.artifacts import copy_tokenizer_files
from quantforge.options import OptionValue
from quantforge_bnb import bnb_config
from transformers import AutoModelForCausalLM

from quantforge_qlora import ADAPTER_DIR, REPORT_FILE


def quantize_and_train(
    source: Path, output: Path, options: Mapping[str, OptionValue], context: StepContext
) -> None:
    if context.calibration is None:
        raise RuntimeError("qlora needs calibration rows to train on")
    torch.manual_seed(context.seed)
    model = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=bnb_config({**options, "skip": "lm_head"}), device_map="cpu"
    )
    # The 4-bit checkpoint first, before any forward pass can repack its weights.
    model.save_pretrained(output)
    copy_tokenizer_files(source, output)

    given = str(options["target_modules"]).strip()
    targets: str | list[str] = (
        given if given == "all-linear" else [m.strip() for m in given.split(",") if m.strip()]
    )
    lora = LoraConfig(
        r=int(options["rank"]),
        lora_alpha=int(options["alpha"]),
        target_modules=targets,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=float(options["learning_rate"])
    )
    rows = torch.tensor(context.calibration.samples, dtype=torch.long)
    generator = torch.Generator().manual_seed(context.seed)
    batch_size = min(int(options["batch_size"]), len(rows))
    losses: list[float] = []
    started = time.perf_counter()
    model.train()
    for step in range(int(options["steps"])):
        batch = rows[torch.randperm(len(rows), generator=generator)[:batch_size]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0:
            context.log(f"qlora: step {step + 1} loss {loss.item():.3f}")
    model.save_pretrained(output / ADAPTER_DIR)
    report = {
        "steps": len(losses),
        "trainable_parameters": trainable,
        # Means over five steps: one batch's loss is too noisy to compare.
        "first_loss": sum(losses[:5]) / len(losses[:5]),
        "last_loss": sum(losses[-5:]) / len(losses[-5:]),
        "seconds": round(time.perf_counter() - started, 2),
        "calibration_fingerprint": context.calibration.fingerprint,
    }
    (output / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
    context.log(f"qlora: {report}")
