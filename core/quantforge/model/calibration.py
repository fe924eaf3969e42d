"""Calibration data for methods that need it (GPTQ, AWQ, ...).

A source is a local ``.txt`` file (one text), a local ``.jsonl`` file (one text
per line, under ``column``), or a Hub dataset id with ``split`` and ``column``.
The host checks the source before any compute and fingerprints it; a worker
tokenizes it with the base tokenizer into ``samples`` rows of ``seq_len`` tokens.
The fingerprint goes into the cache key of every step that calibrates and into
the variant's provenance.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quantforge.errors import CalibrationError

LOCAL_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration text comes from and how much of it a method sees."""

    source: str
    samples: int = 128
    seq_len: int = 512
    column: str = "text"
    split: str = "train"
    config: str | None = None

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def check_spec(spec: CalibrationSpec) -> None:
    if spec.samples < 1:
        raise CalibrationError(f"calibration samples must be >= 1, got {spec.samples}")
    if not 8 <= spec.seq_len <= 131072:
        raise CalibrationError(f"calibration seq_len must be in [8, 131072], got {spec.seq_len}")


def is_local(source: str) -> bool:
    return Path(source).suffix in LOCAL_SUFFIXES or Path(source).exists()


def read_local(path: Path, column: str) -> list[str]:
    """Texts of a local source; malformed JSONL lines are refused with their line number."""
    if not path.exists():
        raise CalibrationError(f"calibration file {str(path)!r} does not exist")
    if path.suffix not in LOCAL_SUFFIXES:
        raise CalibrationError(
            f"calibration file {str(path)!r} is neither .txt nor .jsonl",
            hint="give a .txt file, a .jsonl file with a text column, or a Hub dataset id",
        )
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read calibration file {str(path)!r}: {exc}") from None
    if path.suffix == ".txt":
        texts = [raw] if raw.strip() else []
    else:
        texts = []
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CalibrationError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(column), str):
                raise CalibrationError(f"{path}:{number}: no string field {column!r}")
            texts.append(record[column])
    if not any(t.strip() for t in texts):
        raise CalibrationError(f"calibration file {str(path)!r} is empty")
    return texts


def _hub_revision(spec: CalibrationSpec) -> str:
    """The dataset's current commit, which also proves it is reachable (before any compute)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    except ImportError:
        raise CalibrationError(
            f"calibration source {spec.source!r} is a Hub dataset, and huggingface_hub is not installed",
            hint="pip install 'quantforge[hub]'",
        ) from None
    try:
        info = HfApi().dataset_info(spec.source)
    except OfflineModeIsEnabled:
        raise CalibrationError(
            f"calibration dataset {spec.source!r} is on the Hub, and the Hub is offline (HF_HUB_OFFLINE)",
            hint="use a local .txt or .jsonl file",
        ) from None
    except HfHubHTTPError as exc:
        raise CalibrationError(
            f"calibration dataset {spec.source!r}: {exc}".splitlines()[0]
        ) from None
    except OSError as exc:  # connection refused, DNS, ...
        raise CalibrationError(
            f"calibration dataset {spec.source!r} cannot be reached ({type(exc).__name__})",
            hint="check the network, or use a local .txt or .jsonl file",
        ) from None
    return str(info.sha)


def fingerprint(spec: CalibrationSpec) -> str:
    """Check the source is usable and return a fingerprint over its content and the sampling."""
    check_spec(spec)
    digest = hashlib.sha256(json.dumps(spec.describe(), sort_keys=True).encode())
    if is_local(spec.source):
        for text in read_local(Path(spec.source), spec.column):
            digest.update(text.encode())
    else:
        digest.update(_hub_revision(spec).encode())
    return "sha256:" + digest.hexdigest()


def load_texts(spec: CalibrationSpec) -> list[str]:
    """Texts of the source (in a worker: a Hub dataset is read with ``datasets``)."""
    if is_local(spec.source):
        return read_local(Path(spec.source), spec.column)
    from datasets import load_dataset

    data = load_dataset(spec.source, spec.config, split=spec.split)
    if spec.column not in data.column_names:
        raise CalibrationError(
            f"calibration dataset {spec.source!r} has no column {spec.column!r}",
            hint="columns: " + ", ".join(data.column_names),
        )
    return [t for t in data[spec.column] if isinstance(t, str) and t.strip()]


def make_rows(token_streams: list[list[int]], spec: CalibrationSpec) -> list[list[int]]:
    """Cut the concatenated token streams into ``samples`` rows of ``seq_len`` tokens."""
    tokens = [t for stream in token_streams for t in stream]
    needed = spec.samples * spec.seq_len
    if len(tokens) < needed:
        raise CalibrationError(
            f"calibration text gives {len(tokens)} tokens; {spec.samples} samples of "
            f"{spec.seq_len} tokens need {needed}",
            hint="give more text, or lower samples or seq_len",
        )
    return [tokens[i * spec.seq_len : (i + 1) * spec.seq_len] for i in range(spec.samples)]
