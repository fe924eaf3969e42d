"""Every error quantforge raises on purpose.

Each error carries one actionable line (``str(err)``) that the CLI prints as is;
``hint`` names the next thing to do when there is one. Anything else that escapes
is a bug and is shown with its traceback under ``QUANTFORGE_DEBUG=1``.
"""

from __future__ import annotations

from collections.abc import Iterable


class QuantforgeError(Exception):
    """Base class: a problem the user can act on, described in one line."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(QuantforgeError, ValueError):
    """Bad input on the command line or in a recipe."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A method, target, evaluator or plugin name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        import difflib

        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        if close:
            hint = "did you mean: " + ", ".join(close) + "?"
        elif known:
            hint = "known: " + ", ".join(known)
        else:
            hint = f"no {kind} is installed; see `quantforge plugins`"
        super().__init__(f"unknown {kind} {name!r}", hint=hint)
        self.kind = kind
        self.name = name
        self.suggestions = close

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return QuantforgeError.__str__(self)


class DuplicateNameError(QuantforgeError):
    """Two registrations of the same kind used one name."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        super().__init__(
            f"{kind} {name!r} is registered by both plugin {first!r} and plugin {second!r}",
            hint="uninstall one of them or restrict plugins with QUANTFORGE_LOAD_PLUGINS",
        )
        self.kind = kind
        self.name = name
        self.plugins = (first, second)


class OptionError(UsageError):
    """An option value of a step that is missing, of the wrong type or out of range."""

    def __init__(self, owner: str, option: str, message: str) -> None:
        super().__init__(f"{owner}: option {option!r} {message}")
        self.owner = owner
        self.option = option


class RecipeError(UsageError):
    """A recipe file that cannot be read or has unknown keys or wrong types."""


class ModelSourceError(UsageError):
    """A base model path or id that cannot be used (missing, unreadable, no weights)."""


class UnsupportedModelError(UsageError):
    """A method or runtime that cannot process this model (its architecture or shapes).

    Preflight refuses only the variants that need it; the others run.
    """


class PlanError(UsageError):
    """No chain of installed steps turns the base model into the requested variant."""


class MissingDependencyError(QuantforgeError):
    """An optional library a plugin needs is not installed."""

    def __init__(
        self,
        owner: str,
        packages: Iterable[str],
        extra: str | None,
        *,
        reason: str | None = None,
        hint: str | None = None,
    ) -> None:
        """``reason`` replaces "needs X, which is not installed" (say what is missing when it
        is not a package of this environment); ``hint`` replaces the pip command."""
        packages = list(packages)
        fix = f"pip install 'quantforge[{extra}]'" if extra else "pip install " + " ".join(packages)
        message = reason or f"needs {', '.join(packages)}, which is not installed"
        super().__init__(f"{owner}{': ' if reason else ' '}{message}", hint=hint or fix)
        self.owner = owner
        self.packages = packages
        self.extra = extra


class PluginError(QuantforgeError):
    """A plugin failed while importing, registering or running a step."""

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class TargetUnavailableError(QuantforgeError):
    """A device target that cannot run variants on this machine (no GPU, a profile, ...)."""

    def __init__(self, target: str, reason: str, hint: str | None = None) -> None:
        super().__init__(f"target {target!r} cannot run here: {reason}", hint=hint)
        self.target = target
        self.reason = reason


class StepFailed(QuantforgeError):
    """A quantize, export or evaluate step failed in its worker process."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step} failed: {reason}")
        self.step = step
        self.reason = reason


class CalibrationError(UsageError):
    """Calibration data that is missing, empty, malformed, unreachable or too short."""


class PublishError(QuantforgeError):
    """The Hub refused, or the run cannot be published as asked."""

    exit_code = 2


class ResultsError(UsageError):
    """A results store that is missing or not a quantforge store."""


class NotRunnableError(QuantforgeError):
    """A variant cannot run on this machine (the message says why); the others still can."""


class NoAnswerError(QuantforgeError):
    """A search found no variant that meets the constraints (the message names the closest)."""

    exit_code = 2


class DiskFullError(QuantforgeError):
    """The disk that the run or the cache writes to is full; what finished is kept."""


class ExecutorError(QuantforgeError):
    """The chosen executor cannot start (say, its cluster is unreachable)."""

    exit_code = 2


def one_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (just the type name when it has none)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk ran out of space: :class:`DiskFullError`, ENOSPC or
    EDQUOT from a write, or a library's or tool's own words for it (SQLite's "database or
    disk is full", a converter's "No space left on device")."""
    import errno

    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(
        t in text for t in ("no space left on device", "disk quota exceeded", "disk is full")
    )
