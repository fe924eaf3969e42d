"""quantforge: one Hugging Face model in, a family of measured deployable variants out.

Importing this package is cheap: torch, transformers and plugin libraries are
imported only by the step that needs them.
"""

from quantforge.errors import QuantforgeError
from quantforge.hookspecs import hookimpl
from quantforge.interfaces import (
    Artifact,
    Decoder,
    EvalContext,
    Evaluator,
    Exporter,
    GenerationTiming,
    Measurement,
    Quantizer,
    Runtime,
    StepContext,
    Target,
)
from quantforge.options import Option, OptionSet

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "Decoder",
    "EvalContext",
    "Evaluator",
    "Exporter",
    "GenerationTiming",
    "Measurement",
    "Option",
    "OptionSet",
    "QuantforgeError",
    "Quantizer",
    "Runtime",
    "StepContext",
    "Target",
    "hookimpl",
    "__version__",
]
