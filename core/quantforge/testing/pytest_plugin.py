"""pytest fixtures for plugin authors (registered through the ``pytest11`` entry point).

- ``quantforge_tiny_model``: path of the tiny trained Llama (built once, cached).
- ``quantforge_plugins``: a freshly loaded plugin set.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from quantforge.plugins.manager import Plugins


@pytest.fixture(scope="session")
def quantforge_tiny_model() -> Path:
    from quantforge.testing.tiny_model import build_tiny_model

    return build_tiny_model()


@pytest.fixture
def quantforge_plugins() -> Plugins:
    from quantforge.plugins.manager import load_plugins

    return load_plugins()
