"""Typed options of a step or evaluator, validated before any compute."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quantforge.errors import OptionError

OptionValue = bool | int | float | str

_TYPE_NAMES: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}


@dataclass(frozen=True)
class Option:
    """One option: its type, default, and the values it accepts.

    ``choices`` restricts to a set of values; ``min``/``max`` bound numbers (inclusive).
    An option whose ``default`` is ``None`` is required.
    """

    name: str
    type: type[bool] | type[int] | type[float] | type[str]
    default: OptionValue | None
    help: str
    choices: Sequence[OptionValue] | None = None
    min: float | None = None
    max: float | None = None

    def describe(self) -> str:
        parts = [_TYPE_NAMES[self.type]]
        if self.choices is not None:
            parts.append("one of " + "|".join(str(c) for c in self.choices))
        if self.min is not None or self.max is not None:
            lo = "" if self.min is None else f"{self.min:g}"
            hi = "" if self.max is None else f"{self.max:g}"
            parts.append(f"range [{lo}, {hi}]")
        parts.append("required" if self.default is None else f"default {self.default}")
        return ", ".join(parts)

    def coerce(self, owner: str, value: Any) -> OptionValue:
        """Return ``value`` as this option's type, or raise :class:`OptionError`."""
        if isinstance(value, str) and self.type is not str:
            value = _parse_text(owner, self, value)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, self.type)
        if not ok:
            raise OptionError(owner, self.name, f"must be {_TYPE_NAMES[self.type]}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise OptionError(owner, self.name, f"must be one of {allowed}, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.min is not None and value < self.min:
                raise OptionError(owner, self.name, f"must be >= {self.min:g}, got {value}")
            if self.max is not None and value > self.max:
                raise OptionError(owner, self.name, f"must be <= {self.max:g}, got {value}")
        assert isinstance(value, bool | int | float | str)
        return value


def _parse_text(owner: str, option: Option, text: str) -> OptionValue:
    """Read a value typed on the command line (``group_size=64``)."""
    try:
        if option.type is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if option.type is int:
            return int(text)
        return float(text)
    except ValueError:
        raise OptionError(
            owner, option.name, f"must be {_TYPE_NAMES[option.type]}, got {text!r}"
        ) from None


@dataclass(frozen=True)
class OptionSet:
    """The options an object accepts, and named presets (``nf4``, ``int4``) over them."""

    options: Sequence[Option] = ()
    presets: Mapping[str, Mapping[str, OptionValue]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [o.name for o in self.options]

    def resolve(
        self, owner: str, given: Mapping[str, Any], preset: str | None = None
    ) -> dict[str, OptionValue]:
        """Merge defaults, the preset and the given values; validate every one.

        Raises :class:`OptionError` on an unknown option, a bad value or a missing
        required option, before any work is done.
        """
        by_name = {o.name: o for o in self.options}
        values: dict[str, Any] = {o.name: o.default for o in self.options}
        if preset is not None:
            if preset not in self.presets:
                from quantforge.errors import UnknownNameError

                raise UnknownNameError(f"preset of {owner}", preset, self.presets)
            values.update(self.presets[preset])
        for key, value in given.items():
            if key not in by_name:
                import difflib

                close = difflib.get_close_matches(key, by_name, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = ", ".join(by_name) or "none"
                raise OptionError(owner, key, f"is not an option{hint}; options: {known}")
            values[key] = value
        resolved: dict[str, OptionValue] = {}
        for option in self.options:
            value = values[option.name]
            if value is None:
                raise OptionError(owner, option.name, "is required")
            resolved[option.name] = option.coerce(owner, value)
        return resolved
