"""Finding, loading and isolating plugins.

Plugins come from the ``quantforge`` entry-point group (first-party ones too).
Loading imports only the plugin modules, which must stay light; a plugin that
fails to import, declares a misspelled hook, or raises while registering is
recorded with its error, and every other plugin keeps working.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from quantforge import hookspecs
from quantforge.errors import DuplicateNameError
from quantforge.interfaces import Evaluator, Exporter, Quantizer, Target
from quantforge.plugins.registry import Registry

ENTRY_POINT_GROUP = "quantforge"
LOAD_PLUGINS_ENV = "QUANTFORGE_LOAD_PLUGINS"

Method = Quantizer | Exporter

# hook name -> (registry attribute, kind label)
HOOKS: dict[str, str] = {
    "register_quantizers": "methods",
    "register_exporters": "methods",
    "register_targets": "targets",
    "register_evaluators": "evaluators",
}


@dataclass
class PluginInfo:
    """What ``quantforge plugins`` shows about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    first_party: bool = False
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    missing_packages: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "first_party": self.first_party,
            "hooks": self.hooks,
            "registered": self.registered,
            "missing_packages": self.missing_packages,
            "errors": self.errors,
        }


class Plugins:
    """The loaded plugins and what they registered."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.methods: Registry[Method] = Registry("method", (Quantizer, Exporter))
        self.targets: Registry[Target] = Registry("target", Target)
        self.evaluators: Registry[Evaluator] = Registry("evaluator", Evaluator)
        self.infos: dict[str, PluginInfo] = {}

    # -- loading -------------------------------------------------------------

    def add(self, plugin: object, info: PluginInfo) -> None:
        """Register one plugin object; record rather than raise any failure."""
        self.infos[info.name] = info
        try:
            self.manager.register(plugin, name=info.name)
        except Exception as exc:  # a bad hookimpl signature
            info.errors.append(f"invalid hook implementation: {exc}")
            return
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            self.manager.unregister(name=info.name)
            info.errors.append(f"unknown hook: {exc}")
            return
        info.hooks = sorted(
            impl_name
            for impl_name in HOOKS
            if any(i.plugin_name == info.name for i in self._impls(impl_name))
        )

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        caller: pluggy.HookCaller = getattr(self.manager.hook, hook)
        # Registration order, so that on a name clash the plugin loaded first keeps the name.
        return list(caller.get_hookimpls())

    def collect(self) -> None:
        """Call every ``register_*`` hook, one plugin at a time, so one failure stays local."""
        for hook, attr in HOOKS.items():
            registry: Registry[Any] = getattr(self, attr)
            for impl in self._impls(hook):
                info = self.infos[impl.plugin_name]
                added: list[str] = []
                available = {"register": self._registrar(registry, info, added)}
                try:
                    # Like pluggy, pass only the arguments the implementation declares.
                    impl.function(**{arg: available[arg] for arg in impl.argnames})
                except DuplicateNameError as exc:
                    info.errors.append(str(exc))
                except Exception as exc:
                    info.errors.append(f"{hook} raised {type(exc).__name__}: {exc}")
                    if os.environ.get("QUANTFORGE_DEBUG"):
                        info.errors.append(traceback.format_exc())
                if added:
                    info.registered.setdefault(attr, []).extend(added)

    @staticmethod
    def _registrar(
        registry: Registry[Any], info: PluginInfo, added: list[str]
    ) -> Callable[[Any], None]:
        def register(obj: Any) -> None:
            registry.add(obj, info.name)
            added.append(obj.name)
            missing = obj.missing_packages()
            if missing:
                info.missing_packages[obj.name] = missing

        return register

    # -- queries -------------------------------------------------------------

    def errors(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.errors]

    def quantizers(self) -> list[Quantizer]:
        return [m for m in self.methods if isinstance(m, Quantizer)]

    def exporters(self) -> list[Exporter]:
        return [m for m in self.methods if isinstance(m, Exporter)]


def _allowed() -> set[str] | None:
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def load_plugins(
    extra: Iterable[tuple[str, object]] = (),
    *,
    entry_points: bool = True,
) -> Plugins:
    """Load plugins from the entry-point group (filtered by ``QUANTFORGE_LOAD_PLUGINS``,
    a comma-separated list of plugin or distribution names) plus ``extra`` objects."""
    plugins = Plugins()
    allowed = _allowed()
    if entry_points:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else None
            if allowed is not None and ep.name not in allowed and dist_name not in allowed:
                continue
            if ep.name in plugins.infos:
                plugins.infos[ep.name].errors.append(
                    f"a second plugin named {ep.name!r} (from {dist_name}) was ignored"
                )
                continue
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist_name,
                version=dist.version if dist is not None else None,
                first_party=dist_name == "quantforge",
            )
            try:
                module = ep.load()
            except Exception as exc:
                plugins.infos[ep.name] = info
                info.errors.append(f"Error importing plugin {ep.name}: {type(exc).__name__}: {exc}")
                continue
            plugins.add(module, info)
    for name, obj in extra:
        plugins.add(obj, PluginInfo(name=name, module=getattr(obj, "__name__", repr(obj))))
    plugins.collect()
    return plugins
