"""Cache keys: a short stable digest of what a cached thing depends on.

A step's key is :func:`quantforge.running.planner.step_key`; prepared data, references
and measurements are keyed by :func:`digest` of their inputs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(*parts: Any) -> str:
    """A short stable key of ``parts`` (cache keys of steps, references, measurements)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
