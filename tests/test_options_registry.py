from __future__ import annotations

import pytest
from quantforge.errors import DuplicateNameError, OptionError, UnknownNameError
from quantforge.interfaces import Evaluator
from quantforge.options import Option, OptionSet
from quantforge.plugins.registry import Registry

OPTIONS = OptionSet(
    [
        Option("bits", int, 4, "weight bits", choices=[4, 8]),
        Option("group_size", int, 128, "group", min=16, max=1024),
        Option("symmetric", bool, True, "symmetric"),
        Option("ratio", float, 1.0, "ratio", min=0.0, max=1.0),
        Option("mode", str, None, "required string"),
    ],
    presets={"int8": {"bits": 8, "mode": "x"}},
)


def test_defaults_presets_and_text_values_are_coerced() -> None:
    got = OPTIONS.resolve(
        "m", {"group_size": "64", "symmetric": "false", "ratio": 1}, preset="int8"
    )
    assert got == {"bits": 8, "group_size": 64, "symmetric": False, "ratio": 1.0, "mode": "x"}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"group_size": 8, "mode": "x"}, "must be >= 16"),
        ({"group_size": 4096, "mode": "x"}, "must be <= 1024"),
        ({"bits": 3, "mode": "x"}, "must be one of 4, 8"),
        ({"bits": "four", "mode": "x"}, "must be int"),
        ({"symmetric": "maybe", "mode": "x"}, "must be bool"),
        ({"bits": True, "mode": "x"}, "must be int"),
        ({}, "'mode' is required"),
        ({"group_sise": 64, "mode": "x"}, "did you mean 'group_size'"),
    ],
)
def test_bad_values_are_refused_with_the_reason(given: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError) as err:
        OPTIONS.resolve("rtn", given)
    assert message in str(err.value)
    assert str(err.value).startswith("rtn: option")


def test_unknown_preset_suggests() -> None:
    with pytest.raises(UnknownNameError, match="did you mean: int8"):
        OPTIONS.resolve("m", {"mode": "x"}, preset="int9")


class _Eval(Evaluator):
    description = "x"

    def evaluate(self, artifact, runtime, options, context):  # type: ignore[no-untyped-def]
        return []


def _named(name: str) -> Evaluator:
    return type(name, (_Eval,), {"name": name})()


def test_registry_refuses_duplicates_and_suggests_names() -> None:
    registry: Registry[Evaluator] = Registry("evaluator", Evaluator)
    registry.add(_named("perplexity"), "plugin-a")
    with pytest.raises(DuplicateNameError, match="both plugin 'plugin-a' and plugin 'plugin-b'"):
        registry.add(_named("perplexity"), "plugin-b")
    with pytest.raises(UnknownNameError) as err:
        registry.get("perplexty")
    assert "did you mean: perplexity?" in str(err.value)
    assert registry.plugin_of("perplexity") == "plugin-a"
    with pytest.raises(TypeError):
        registry.add(object(), "plugin-c")  # type: ignore[arg-type]


def test_a_format_no_bundled_plugin_exports_names_the_plugin_that_would() -> None:
    from quantforge.errors import UnknownNameError
    from quantforge.plugins.registry import Registry

    methods: Registry[object] = Registry("method", object)
    for name, library in (
        ("trtllm", "tensorrt_llm"),
        ("coreml", "coremltools"),
        ("tflite", "ai-edge-torch"),
    ):
        with pytest.raises(UnknownNameError) as info:
            methods.get(name)
        assert library in str(info.value) and "not bundled" in str(info.value)
