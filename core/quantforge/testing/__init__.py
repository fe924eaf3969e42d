"""The plugin authoring kit: a tiny-model builder and conformance checks.

Importing this module is cheap; torch is imported only when a model is built
or a check runs.
"""

from quantforge.testing.conformance import (
    check_declarations,
    check_evaluator,
    check_exporter,
    check_quantizer,
    check_target,
    tiny_calibration,
)
from quantforge.testing.tiny_model import (
    TinyModelSpec,
    build_tiny_model,
    calibration_text,
    evaluation_text,
)

__all__ = [
    "TinyModelSpec",
    "build_tiny_model",
    "calibration_text",
    "check_declarations",
    "check_evaluator",
    "check_exporter",
    "check_quantizer",
    "check_target",
    "evaluation_text",
    "tiny_calibration",
]
