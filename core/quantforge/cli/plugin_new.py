"""``quantforge plugin new NAME --kind KIND``: a ready plugin package to start from.

The package has a pyproject with the entry point, a module with a documented class of
the kind and the hook that registers it, conformance tests that use
:mod:`quantforge.testing`, and a README. Each kind's class does real work (see the
templates in ``plugin_template/``), so the package installs, passes its tests and runs
in ``quantforge quantize`` before a line is changed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path
from string import Template

from quantforge.errors import UsageError

TEMPLATES = Path(__file__).parent / "plugin_template"
KINDS = ("quantizer", "exporter", "target", "evaluator")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
SUMMARY = {
    "quantizer": "A quantforge quantizer: round-to-nearest per output row (a start to build on).",
    "exporter": "A quantforge exporter: the model as size-capped safetensors shards.",
    "target": "A quantforge target: Hugging Face models with PyTorch on the CPU, N threads.",
    "evaluator": "A quantforge evaluator: mean next-token entropy on the evaluation text.",
}
USAGE = {
    "quantizer": "quantforge quantize MODEL -v $name:int4 -v $name:int8 --target cpu",
    "exporter": "quantforge quantize MODEL -v $name:small-shards --target cpu",
    "target": "quantforge quantize MODEL -v rtn:int8 --target $name,threads=4",
    "evaluator": "quantforge quantize MODEL -v rtn:int8 --evaluator size --evaluator $name",
}
REGISTRY = {"quantizer": "methods", "exporter": "methods", "target": "targets"}


def check_name(name: str, kind: str) -> None:
    """Refuse a name that is not a plain lowercase identifier, or that a loaded plugin
    already registers for this kind (two plugins may not share one)."""
    if not _NAME.match(name):
        raise UsageError(
            f"plugin name {name!r} must be lowercase letters, digits, '-' or '_', "
            "starting with a letter (at most 40 characters)",
            hint="for example: quantforge plugin new myquant --kind quantizer",
        )
    from quantforge.plugins.manager import load_plugins

    plugins = load_plugins()
    registry = getattr(plugins, REGISTRY.get(kind, "evaluators"))
    if name in registry.names():
        raise UsageError(
            f"{'an' if kind == 'evaluator' else 'a'} {kind} named {name!r} is already "
            f"registered by the plugin "
            f"{registry.plugin_of(name)!r}",
            hint="pick another name; `quantforge plugins` lists the names taken",
        )


def fields(name: str, kind: str) -> dict[str, str]:
    """What the templates substitute: names of the distribution, package and class."""
    ident = name.replace("-", "_")
    camel = "".join(part.capitalize() for part in ident.split("_") if part)
    values = {
        "name": name,
        "kind": kind,
        "package": f"quantforge_{ident}",
        "dist": f"quantforge-{ident.replace('_', '-')}",
        "cls": f"{camel}{kind.capitalize()}",
        "metric": f"{ident}_entropy",
        "summary": SUMMARY[kind],
    }
    values["usage"] = Template(USAGE[kind]).substitute(values)
    return values


def new_plugin(name: str, kind: str, out: Path | None = None) -> Path:
    """Write the plugin package for ``name`` of ``kind`` into ``out`` (default
    ``./quantforge-NAME``); return the folder. Nothing is left half-written."""
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    check_name(name, kind)
    values = fields(name, kind)
    folder = out if out is not None else Path(values["dist"])
    if folder.exists():
        raise UsageError(
            f"{folder} already exists", hint="give another --out, or remove that folder"
        )
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"{values['package']}/__init__.py": f"{kind}.py.tmpl",
        f"tests/test_{values['package']}.py": f"test_{kind}.py.tmpl",
    }
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for relative, template in files.items():
            text = Template((TEMPLATES / template).read_text(encoding="utf-8"))
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.substitute(values), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def plugin_new_command(args: argparse.Namespace) -> int:
    folder = new_plugin(args.name, args.kind, args.out)
    values = fields(args.name, args.kind)
    print(f"Wrote {folder}/: the {args.kind} {values['cls']} in {values['package']}/__init__.py")
    print(f"Next: pip install -e {folder}   then   quantforge plugins   and   pytest {folder}")
    print(f"Then: {values['usage']}")
    return 0
