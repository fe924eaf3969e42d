"""Built-in English prose for evaluating and calibrating real models, offline.

The text is the Python Language Reference as CPython ships it in every
installation (``pydoc_data.topics``: the documentation that ``help("naming")``
prints), under the PSF License 2.0, which allows redistribution. Its hard-wrapped
lines are joined into paragraphs. A few narrative chapters are the evaluation text;
every other chapter is calibration text, minus any paragraph the evaluation text
holds, so the two never overlap.

Tiny models that quantforge trained itself (:mod:`quantforge.testing.tiny_model`) learn
from Python's standard-library source instead, and keep two of its modules held out: the
``stdlib_*`` texts here. Everything else is measured on the prose.
"""

from __future__ import annotations

import functools
import platform
import re
import sysconfig
from pathlib import Path

SOURCE = (
    f"the Python {platform.python_version()} Language Reference as shipped with CPython "
    "(pydoc_data.topics)"
)
LICENSE = "PSF-2.0"
# Narrative chapters, held out from calibration.
# Held out from a tiny model's training: its evaluation text.
STDLIB_EVAL_MODULES = ("textwrap.py", "fractions.py")
# Characters of standard-library source a tiny model trains on (its calibration text
# comes from just past them).
STDLIB_TRAIN_CHARS = 1_500_000
EVAL_TOPICS = ("execmodel", "exceptions", "objects", "truth", "dynamic-features", "import")


def _topics() -> dict[str, str]:
    from pydoc_data.topics import topics

    return dict(topics)


def _paragraphs(text: str) -> list[str]:
    """Hard-wrapped documentation -> paragraphs on one line each; headings' underlines
    dropped, indented code kept as it is."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        lines = [ln for ln in lines if not re.fullmatch(r"\s*([*=\-~^\"'])\1{2,}\s*", ln)]
        if not lines:
            continue
        if lines[0].startswith((" ", "\t")):
            out.append("\n".join(lines))
        else:
            out.append(" ".join(ln.strip() for ln in lines))
    return out


@functools.cache
def _split() -> tuple[tuple[str, ...], tuple[str, ...]]:
    topics = _topics()
    held_out = [p for name in EVAL_TOPICS for p in _paragraphs(topics[name])]
    seen = set(held_out)
    rest: list[str] = []
    for name in sorted(topics):
        if name in EVAL_TOPICS:
            continue
        for paragraph in _paragraphs(topics[name]):
            if paragraph not in seen:
                seen.add(paragraph)
                rest.append(paragraph)
    return tuple(dict.fromkeys(held_out)), tuple(rest)


def prose_evaluation_text(max_chars: int = 40_000) -> str:
    """Held-out English prose (never in :func:`prose_calibration_text`)."""
    return "\n\n".join(_split()[0])[:max_chars]


def prose_calibration_text(max_chars: int | None = 200_000) -> str:
    """English prose for calibration, disjoint from the evaluation text (``None``: all of it,
    about 100,000 tokens)."""
    text = "\n\n".join(_split()[1])
    return text if max_chars is None else text[:max_chars]


def describe() -> str:
    """Where the built-in prose comes from and its licence, for provenance and cards."""
    return f"{SOURCE}, {LICENSE}"


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_train_files() -> list[Path]:
    return [p for p in sorted(_stdlib_dir().glob("*.py")) if p.name not in STDLIB_EVAL_MODULES]


def stdlib_signature() -> str:
    """Names and sizes of the training modules: a different Python, a different corpus."""
    files = _stdlib_train_files()
    return "|".join(f"{p.name}:{p.stat().st_size}" for p in files[:200])


def stdlib_training_text(max_chars: int) -> str:
    """Standard-library modules in name order, up to ``max_chars`` characters."""
    parts: list[str] = []
    total = 0
    for path in _stdlib_train_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


def stdlib_evaluation_text(max_chars: int = 12_000) -> str:
    """Held-out standard-library source, never seen in a tiny model's training."""
    text = "\n".join(
        (_stdlib_dir() / name).read_text(encoding="utf-8", errors="replace")
        for name in STDLIB_EVAL_MODULES
    )
    return text[:max_chars]


def stdlib_calibration_text(max_chars: int = 40_000) -> str:
    """Training-distribution text for methods that calibrate (from the end of the corpus)."""
    return stdlib_training_text(STDLIB_TRAIN_CHARS + max_chars)[-max_chars:]
