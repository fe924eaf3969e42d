"""A typed registry per kind: refuses duplicates, suggests names for typos."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from quantforge.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")

# Formats no first-party plugin exports, because their runtimes cannot run on this
# kind of machine: which plugin would provide each, for the error a user gets.
ELSEWHERE: dict[str, str] = {
    "tensorrt-llm": "TensorRT-LLM engines come from a plugin built on NVIDIA's tensorrt_llm "
    "(needs a CUDA GPU to build and run), e.g. a 'quantforge-tensorrt-llm' package",
    "coreml": "Core ML packages come from a plugin built on coremltools (runs on Apple "
    "devices), e.g. a 'quantforge-coreml' package",
    "tflite": "TFLite / LiteRT models come from a plugin built on ai-edge-torch, "
    "e.g. a 'quantforge-litert' package",
}
ALIASES = {"trtllm": "tensorrt-llm", "trt-llm": "tensorrt-llm", "litert": "tflite"}


class Registry(Generic[T]):
    """Objects of one kind by name, each remembered with the plugin that registered it."""

    def __init__(self, kind: str, base: type | tuple[type, ...]) -> None:
        self.kind = kind
        self._base = base
        self._items: dict[str, tuple[T, str]] = {}

    def add(self, obj: T, plugin: str) -> None:
        """Add ``obj``; raise if it is not a ``base`` or its name is taken."""
        if not isinstance(obj, self._base):
            raise TypeError(f"register() for {self.kind}s got {type(obj).__name__}")
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{type(obj).__name__} has no name")
        if name in self._items:
            raise DuplicateNameError(self.kind, name, self._items[name][1], plugin)
        self._items[name] = (obj, plugin)

    def get(self, name: str) -> T:
        """The object called ``name``; unknown names raise with did-you-mean suggestions."""
        try:
            return self._items[name][0]
        except KeyError:
            error = UnknownNameError(self.kind, name, self._items)
            elsewhere = ELSEWHERE.get(ALIASES.get(name.lower(), name.lower()))
            if elsewhere:
                error.hint = f"not bundled: {elsewhere}; see docs/writing-a-plugin.md"
            raise error from None

    def plugin_of(self, name: str) -> str:
        self.get(name)
        return self._items[name][1]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(obj for obj, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)
