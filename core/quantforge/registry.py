"""A typed registry per kind: refuses duplicates, suggests names for typos."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from quantforge.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


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
            raise UnknownNameError(self.kind, name, self._items) from None

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
