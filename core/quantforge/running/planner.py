"""From a requested variant to the chain of steps that makes it.

Formats are nodes; quantizers and exporters are edges. A variant names its last
step (``gguf:Q4_K_M`` is the ``gguf`` quantizer with preset ``Q4_K_M``); the
planner puts the shortest chain of exporters in front of it, from the base
model's format. Every step gets a cache key over the base identity, the step,
its options and its plugin's version, chained through the steps before it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.errors import PlanError, UsageError
from quantforge.interfaces import Exporter, Quantizer
from quantforge.options import OptionValue
from quantforge.plugins.manager import Method, Plugins

BASE = "base"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class VariantSpec:
    """A requested variant: ``base``, or a method with a preset and option overrides."""

    name: str
    method: str | None = None
    preset: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None  # an existing checkpoint to import instead of building one


def parse_option_pairs(pairs: list[str], where: str) -> dict[str, str]:
    """``["group_size=64", ...]`` -> ``{"group_size": "64"}``; ``where`` names the source in errors."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"bad option {pair!r} in {where}", hint="write OPTION=VALUE")
        options[key.strip()] = value.strip()
    return options


def parse_variant(text: str) -> VariantSpec:
    """``"base"``, ``"rtn:int4"``, ``"rtn:int4,group_size=64"`` or ``"bnb,quant_type=fp4"``."""
    text = text.strip()
    if not text:
        raise UsageError(
            "empty variant", hint="write METHOD[:PRESET][,OPTION=VALUE...], e.g. rtn:int4"
        )
    if text == BASE:
        return VariantSpec(BASE)
    head, *pairs = text.split(",")
    method, _, preset = head.partition(":")
    options = parse_option_pairs(pairs, f"variant {text!r}")
    name = method + (f"-{preset}" if preset else "")
    if pairs:
        name += "-" + "-".join(f"{k}{v}" for k, v in options.items())
    return VariantSpec(
        name=_safe_name(name), method=method.strip(), preset=preset.strip() or None, options=options
    )


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def check_variant_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise UsageError(f"variant name {name!r} may hold only letters, digits, '.', '_' and '-'")
    return name


@dataclass(frozen=True)
class Step:
    """One edge of a plan: run ``method`` with ``options`` on the previous step's output."""

    method: str
    kind: str  # "quantize" | "export"
    plugin: str
    plugin_version: str
    implementation_version: str
    options: Mapping[str, OptionValue]
    input_format: str
    output_format: str
    key: str  # cache key of this step's output
    calibration: str | None = None  # fingerprint of the calibration set, when it calibrates

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kind": self.kind,
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "options": dict(self.options),
            "input_format": self.input_format,
            "output_format": self.output_format,
            "key": self.key,
            "calibration": self.calibration,
        }


@dataclass(frozen=True)
class VariantPlan:
    spec: VariantSpec
    steps: tuple[Step, ...]
    format: str
    key: str  # cache key of the final artifact (the base's identity for ``base``)
    bits: float | None
    method_label: str
    path: Path | None = None  # set for imported checkpoints
    producer: str | None = None  # method whose load_model loads the final artifact


def step_key(
    previous: str,
    method: str,
    plugin_version: str,
    impl_version: str,
    options: Mapping[str, Any],
    calibration: str | None = None,
) -> str:
    blob = json.dumps(
        {
            "in": previous,
            "method": method,
            "plugin": plugin_version,
            "impl": impl_version,
            "options": options,
            "calibration": calibration,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _exporter_chain(plugins: Plugins, start: str, goal: str) -> list[Exporter] | None:
    """Shortest chain of exporters from format ``start`` to ``goal`` (BFS)."""
    queue: deque[tuple[str, list[Exporter]]] = deque([(start, [])])
    seen = {start}
    while queue:
        fmt, chain = queue.popleft()
        if fmt == goal:
            return chain
        for exporter in sorted(plugins.exporters(), key=lambda e: e.name):
            if exporter.input_format == fmt and exporter.output_format not in seen:
                seen.add(exporter.output_format)
                queue.append((exporter.output_format, [*chain, exporter]))
    return None


def needs_calibration(plugins: Plugins, spec: VariantSpec) -> bool:
    if spec.method is None:
        return False
    method = plugins.methods.get(spec.method)
    if not isinstance(method, Quantizer):
        return False
    return method.calibrates(method.options.resolve(method.name, spec.options, spec.preset))


def plan_variant(
    plugins: Plugins,
    spec: VariantSpec,
    base_key: str,
    base_format: str = "hf",
    calibration: str | None = None,
    *,
    allow_pickle: bool = False,
) -> VariantPlan:
    """Plan ``spec``; raise before any compute on an unknown method, bad option or no chain.

    ``calibration`` is the calibration set's fingerprint; it enters the key of every
    step that calibrates. An imported checkpoint whose weights are pickle only is refused
    unless ``allow_pickle``.
    """
    if spec.source is not None:
        return _plan_import(plugins, spec, allow_pickle=allow_pickle)
    if spec.method is None:
        return VariantPlan(spec, (), base_format, base_key, None, "unquantized")
    last: Method = plugins.methods.get(spec.method)
    chain = _exporter_chain(plugins, base_format, last.input_format)
    if chain is None:
        raise PlanError(
            f"no installed exporter turns {base_format!r} into {last.input_format!r}, "
            f"which {spec.method!r} takes",
            hint="install the plugin that exports to that format; see `quantforge methods`",
        )
    steps: list[Step] = []
    key = base_key
    for obj in [*chain, last]:
        given = spec.options if obj is last else {}
        preset = spec.preset if obj is last else None
        options = obj.options.resolve(obj.name, given, preset)
        plugin = plugins.methods.plugin_of(obj.name)
        info = plugins.infos[plugin]
        version = info.version or "0"
        calibrates = isinstance(obj, Quantizer) and obj.calibrates(options)
        if calibrates and calibration is None:
            raise UsageError(
                f"{obj.name} needs calibration data",
                hint="set [calibration] source in the recipe or pass --calibration FILE",
            )
        fingerprint = calibration if calibrates else None
        key = step_key(key, obj.name, version, obj.version, options, fingerprint)
        steps.append(
            Step(
                method=obj.name,
                kind="quantize" if isinstance(obj, Quantizer) else "export",
                plugin=plugin,
                plugin_version=version,
                implementation_version=obj.version,
                options=options,
                input_format=obj.input_format,
                output_format=obj.output_format,
                key=key,
                calibration=fingerprint,
            )
        )
    bits = last.bits(steps[-1].options) if isinstance(last, Quantizer) else None
    label = (last.method or last.name) if isinstance(last, Quantizer) else last.name
    producer = last.name if isinstance(last, Quantizer) else None
    return VariantPlan(spec, tuple(steps), last.output_format, key, bits, label, producer=producer)


def _plan_import(plugins: Plugins, spec: VariantSpec, *, allow_pickle: bool) -> VariantPlan:
    """An existing checkpoint: nothing to build; its loader must be installed."""
    from quantforge.model.imports import inspect_checkpoint
    from quantforge.model.source import content_hash

    assert spec.source is not None
    found = inspect_checkpoint(Path(spec.source), allow_pickle=allow_pickle)
    if found.producer is not None:
        if found.producer not in plugins.methods:
            raise PlanError(
                f"variant {spec.name!r} is a {found.method_label} checkpoint, and no installed plugin loads it",
                hint=f"install the plugin that provides {found.producer!r}",
            )
        plugins.methods.get(found.producer).check_available()
    key = "import-" + content_hash(found.path)[:24]
    return VariantPlan(
        spec,
        (),
        found.format,
        key,
        found.bits,
        found.method_label,
        path=found.path.resolve(),
        producer=found.producer,
    )
