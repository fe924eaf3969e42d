"""The host's layering (docs/architecture.md): no import circles, no import up a layer.

Every import in ``core/quantforge`` counts, those inside functions too: an import moved
into a function to dodge a circle is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "core" / "quantforge"

# Bottom to top: a module may import its own layer (without circles) and the layers below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("the plugin API", ("errors", "options", "interfaces", "hookspecs", "layer_progress")),
    ("plugins", ("plugins",)),
    ("model", ("model",)),
    ("store", ("store",)),
    ("devices", ("devices",)),
    ("running", ("running",)),
    ("choosing", ("choosing",)),
    ("publishing", ("publishing",)),
    ("space", ("space",)),
    ("testing", ("testing",)),
    ("cli", ("cli", "__main__")),
]
# First-party plugin packages the host may name, and where: the testing kit's tool-calling
# tiny model trains on the tasks plugin's synthetic corpus (and `demo --tasks` builds it).
PLUGIN_IMPORTS = {"quantforge_tasks": ("testing", "cli")}


def module_name(path: Path) -> str:
    parts = ["quantforge", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module`` (the package's ``__init__`` is the plugin API)."""
    if module == "quantforge":
        return 0
    first = module.split(".")[1]
    for index, (_, members) in enumerate(LAYERS):
        if first in members:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def imports_of(module: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The quantforge modules ``module`` imports (anywhere in it), each with a line number;
    other top-level packages it imports are keyed by their own name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.setdefault(full if full in known else target, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {m: imports_of(m, p, known) for m, p in known.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_no_import_goes_up_a_layer() -> None:
    wrong = []
    for module, imported in graph().items():
        mine = layer_of(module)
        for target, line in imported.items():
            if target == "quantforge" or not target.startswith("quantforge."):
                continue
            theirs = layer_of(target)
            if theirs > mine:
                wrong.append(
                    f"{module}:{line} imports {target} "
                    f"({LAYERS[mine][0]} -> {LAYERS[theirs][0]}, a layer above)"
                )
    assert not wrong, "\n".join(wrong)


def test_the_host_names_no_plugin_package() -> None:
    wrong = []
    for module, imported in graph().items():
        for target, line in imported.items():
            top = target.split(".")[0]
            if top.startswith("quantforge_"):
                allowed = PLUGIN_IMPORTS.get(top, ())
                if LAYERS[layer_of(module)][1][0] not in allowed:
                    wrong.append(f"{module}:{line} imports the plugin package {target}")
    assert not wrong, "\n".join(wrong)


def find_circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``edges``, as the modules along it, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (circle := visit(start)):
            return circle
    return None


def test_no_import_circles() -> None:
    known = modules()
    edges = {
        module: {t for t in imported if t in known and t != module and t != "quantforge"}
        for module, imported in graph().items()
    }
    circle = find_circle(edges)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


@pytest.mark.parametrize(
    ("edges", "circle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}, ["y", "y2", "y"]),
    ],
)
def test_the_circle_finder_finds_circles(
    edges: dict[str, set[str]], circle: list[str] | None
) -> None:
    assert find_circle(edges) == circle


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """A model module importing the runner, even inside a function, is reported."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from quantforge.running.runner import run\n")
    found = imports_of("quantforge.model.mod", source, modules())
    assert "quantforge.running.runner" in found
    assert layer_of("quantforge.running.runner") > layer_of("quantforge.model.mod")


def test_each_subpackage_says_what_it_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "import" in doc, f"{init.parent.name}/__init__.py does not say what it may import"
