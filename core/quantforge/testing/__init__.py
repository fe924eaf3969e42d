"""The plugin authoring kit: a tiny-model builder, a real model, and conformance checks.

Importing this module is cheap; torch is imported only when a model is built
or a check runs.

May import: everything but :mod:`quantforge.cli` (tests of every layer use it).
"""

from quantforge.model.texts import prose_calibration_text, prose_evaluation_text
from quantforge.model.texts import stdlib_calibration_text as calibration_text
from quantforge.model.texts import stdlib_evaluation_text as evaluation_text
from quantforge.testing.conformance import (
    check_declarations,
    check_evaluator,
    check_exporter,
    check_quantizer,
    check_target,
    tiny_calibration,
)
from quantforge.testing.families import family_model
from quantforge.testing.real_model import REAL_MODELS, real_model
from quantforge.testing.tiny_model import TinyModelSpec, build_tiny_model

__all__ = [
    "REAL_MODELS",
    "TinyModelSpec",
    "build_tiny_model",
    "calibration_text",
    "check_declarations",
    "check_evaluator",
    "check_exporter",
    "check_quantizer",
    "check_target",
    "evaluation_text",
    "family_model",
    "prose_calibration_text",
    "prose_evaluation_text",
    "real_model",
    "tiny_calibration",
]
