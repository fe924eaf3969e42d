"""Where a measurement came from: hardware, versions, time."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

ALWAYS = ("torch", "transformers", "accelerate", "safetensors", "tokenizers")


def package_versions(import_names: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Installed versions of the given import names (and the usual stack), by distribution."""
    dists = metadata.packages_distributions()
    versions: dict[str, str] = {}
    for name in (*ALWAYS, *import_names):
        for dist in dists.get(name, [name]):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    return versions


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(hardware: str, import_names: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    return {
        "hardware": hardware,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "libraries": package_versions(import_names),
    }
