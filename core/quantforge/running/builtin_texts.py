"""The texts a run uses when the user gives none: English prose for real models, a tiny
model's own held-out text, each kept as a file in the cache and replaced whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from quantforge.model.calibration import CalibrationSpec
from quantforge.model.gguf import SOURCE_FILE


def builtin_text_file(cache_dir: Path, name: str, text: str) -> Path:
    """A built-in text (held-out or calibration sample) as a file in the cache, kept current
    (replaced whole, so a run reading it beside another never sees half of it)."""
    path = cache_dir / "data" / name
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def atomic_copy(source: Path, path: Path) -> None:
    """Copy ``source`` to ``path`` so that ``path`` is never seen half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.copy(source, tmp)
    tmp.replace(path)


def base_source(path: Path) -> dict[str, Any] | None:
    """What a base folder says about its own origin (a GGUF it was dequantized from)."""
    file = path / SOURCE_FILE
    try:
        return dict(json.loads(file.read_text(encoding="utf-8"))) if file.is_file() else None
    except (OSError, ValueError):
        return None


def builtin_calibration(cache_dir: Path, model: Path) -> CalibrationSpec:
    """Calibration data when the user gave none: English prose disjoint from the evaluation
    text (:mod:`quantforge.model.texts`), 128 rows of 512 tokens; a tiny model that quantforge
    trained calibrates on its own training text (32 rows of 128 tokens)."""
    if (model / "quantforge-tiny.json").is_file():
        from quantforge.model.texts import stdlib_calibration_text as calibration_text

        path = builtin_text_file(cache_dir, "builtin-calibration.txt", calibration_text(60_000))
        return CalibrationSpec(str(path), samples=32, seq_len=128)
    from quantforge.model import texts

    path = builtin_text_file(
        cache_dir, "builtin-prose-calibration.txt", texts.prose_calibration_text(None)
    )
    return CalibrationSpec(str(path))


def builtin_eval_text(cache_dir: Path, model: Path) -> tuple[Path, str]:
    """The default evaluation text for ``model`` and where it comes from: a tiny model that
    quantforge trained keeps its own held-out text; every other model is measured on English
    prose (:mod:`quantforge.model.texts`)."""
    if (model / "quantforge-tiny.json").is_file():
        from quantforge.model.texts import stdlib_evaluation_text as evaluation_text

        text = builtin_text_file(cache_dir, "builtin-eval.txt", evaluation_text())
        return text, "held-out Python standard-library source (textwrap.py, fractions.py)"
    from quantforge.model import texts

    path = builtin_text_file(cache_dir, "builtin-prose-eval.txt", texts.prose_evaluation_text())
    return path, f"held-out English prose: {texts.describe()}"
