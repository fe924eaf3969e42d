"""Each hook, the plugin manager's isolation, and docs that match the hookspecs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import ROOT, make_plugin_dist, quantforge, with_pythonpath
from quantforge import hookspecs
from quantforge.hookspecs import hookimpl
from quantforge.interfaces import Evaluator, Exporter, Measurement, Quantizer, Target
from quantforge.plugins.manager import load_plugins


class DemoQuantizer(Quantizer):
    name = "demo-q"
    description = "test quantizer"
    output_format = "hf+demo"

    def quantize(self, source, options, output, context):  # type: ignore[no-untyped-def]
        (output / "x").write_text("x")


class DemoExporter(Exporter):
    name = "demo-x"
    description = "test exporter"
    output_format = "demo"

    def export(self, source, options, output, context):  # type: ignore[no-untyped-def]
        (output / "x").write_text("x")


class DemoTarget(Target):
    name = "demo-t"
    description = "test target"
    formats = frozenset({"demo"})

    def load(self, artifact, options, loader):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class DemoEvaluator(Evaluator):
    name = "demo-e"
    description = "test evaluator"
    needs_runtime = False

    def evaluate(self, artifact, runtime, options, context):  # type: ignore[no-untyped-def]
        return [Measurement("one", 1.0, "", "none")]


class Plugin:
    @hookimpl
    def register_quantizers(self, register):  # type: ignore[no-untyped-def]
        register(DemoQuantizer())

    @hookimpl
    def register_exporters(self, register):  # type: ignore[no-untyped-def]
        register(DemoExporter())

    @hookimpl
    def register_targets(self, register):  # type: ignore[no-untyped-def]
        register(DemoTarget())

    @hookimpl
    def register_evaluators(self, register):  # type: ignore[no-untyped-def]
        register(DemoEvaluator())


def _loaded():  # type: ignore[no-untyped-def]
    return load_plugins([("demo", Plugin())], entry_points=False)


def test_register_quantizers() -> None:
    plugins = _loaded()
    assert isinstance(plugins.methods.get("demo-q"), DemoQuantizer)
    assert plugins.infos["demo"].registered["methods"] == ["demo-q", "demo-x"]


def test_register_exporters() -> None:
    plugins = _loaded()
    assert [e.name for e in plugins.exporters()] == ["demo-x"]


def test_register_targets() -> None:
    assert _loaded().targets.names() == ["demo-t"]


def test_register_evaluators() -> None:
    plugins = _loaded()
    assert plugins.evaluators.names() == ["demo-e"]
    assert plugins.infos["demo"].hooks == sorted(hookspecs_names())


def hookspecs_names() -> list[str]:
    return [n for n, f in vars(hookspecs).items() if n.startswith("register_") and callable(f)]


def test_an_implementation_may_take_fewer_arguments() -> None:
    class NoArgs:
        @hookimpl
        def register_targets(self):  # type: ignore[no-untyped-def]
            return None

    plugins = load_plugins([("noargs", NoArgs())], entry_points=False)
    assert plugins.infos["noargs"].errors == []


def test_a_plugin_that_raises_while_registering_is_isolated() -> None:
    class Broken:
        @hookimpl
        def register_quantizers(self, register):  # type: ignore[no-untyped-def]
            raise RuntimeError("cannot register")

    plugins = load_plugins([("broken", Broken()), ("demo", Plugin())], entry_points=False)
    assert plugins.infos["broken"].errors == [
        "register_quantizers raised RuntimeError: cannot register"
    ]
    assert "demo-q" in plugins.methods


def test_a_misspelled_hook_is_reported_and_the_plugin_unloaded() -> None:
    class Typo:
        @hookimpl
        def register_quantizer(self, register):  # type: ignore[no-untyped-def]
            pass

    plugins = load_plugins([("typo", Typo()), ("demo", Plugin())], entry_points=False)
    assert "unknown hook" in plugins.infos["typo"].errors[0]
    assert "register_quantizer" in plugins.infos["typo"].errors[0]
    assert "demo-q" in plugins.methods


def test_duplicate_names_across_plugins_are_an_error_for_the_second() -> None:
    plugins = load_plugins([("demo", Plugin()), ("again", Plugin())], entry_points=False)
    assert (
        "is registered by both plugin 'demo' and plugin 'again'" in plugins.infos["again"].errors[0]
    )
    assert plugins.methods.plugin_of("demo-q") == "demo"


def test_import_failure_is_reported_by_name_and_other_commands_work(tmp_path: Path) -> None:
    root = make_plugin_dist(tmp_path, "qf_broken_import", "import surely_not_a_module\n")
    env = with_pythonpath(root)
    out = quantforge("plugins", "--json", env=env)
    assert out.returncode == 0, out.stderr
    info = {p["name"]: p for p in json.loads(out.stdout)}["qf_broken_import"]
    assert info["errors"] == [
        "Error importing plugin qf_broken_import: ModuleNotFoundError: No module named 'surely_not_a_module'"
    ]
    methods = quantforge("methods", "--json", env=env)
    assert methods.returncode == 0
    assert {"rtn", "bnb"} <= {m["name"] for m in json.loads(methods.stdout)}


def test_load_plugins_env_restricts_loading() -> None:
    out = quantforge("plugins", "--json", env={"QUANTFORGE_LOAD_PLUGINS": "rtn,metrics"})
    assert out.returncode == 0
    assert sorted(p["name"] for p in json.loads(out.stdout)) == ["metrics", "rtn"]
    none = quantforge("plugins", "--json", env={"QUANTFORGE_LOAD_PLUGINS": ""})
    assert json.loads(none.stdout) == []


def test_first_party_plugins_come_through_the_entry_point_group() -> None:
    plugins = load_plugins()
    first = {name for name, info in plugins.infos.items() if info.first_party}
    assert {"rtn", "bnb", "transformers", "metrics"} <= first
    assert plugins.methods.plugin_of("bnb") == "bnb"
    assert plugins.targets.plugin_of("cpu") == "transformers"


def test_every_hook_has_a_doc_page_with_its_exact_signature_and_a_test() -> None:
    tests = (ROOT / "tests" / "test_hooks.py").read_text()
    for name in hookspecs_names():
        spec = getattr(hookspecs, name)
        annotations = dict(spec.__annotations__)
        returns = annotations.pop("return")
        params = ", ".join(f"{k}: {v}" for k, v in annotations.items())
        signature = f"def {name}({params}) -> {returns}"
        page = ROOT / "docs" / "hooks" / f"{name}.md"
        assert page.is_file(), f"docs/hooks/{name}.md is missing"
        assert signature in page.read_text(), f"{page} does not show `{signature}`"
        assert re.search(rf"^def test_{name}\(", tests, re.M), f"no test named test_{name}"
        assert spec.__doc__ and ":param register:" in spec.__doc__ and "Example::" in spec.__doc__
