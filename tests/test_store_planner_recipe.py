from __future__ import annotations

from pathlib import Path

import pytest
from quantforge.errors import PlanError, ResultsError
from quantforge.interfaces import Quantizer
from quantforge.options import Option, OptionSet
from quantforge.plugins.manager import load_plugins
from quantforge.running.planner import parse_variant, plan_variant
from quantforge.running.recipe import parse_recipe
from quantforge.store.results import ResultsStore
from test_hooks import Plugin


class OnDemo(Quantizer):
    """Quantizes the format the demo exporter writes: needs hf -> demo first."""

    name = "demo-quant"
    description = "x"
    input_format = "demo"
    output_format = "demo+q"
    options = OptionSet(
        [Option("bits", int, 4, "bits", choices=[2, 4])], presets={"q2": {"bits": 2}}
    )

    def quantize(self, source, options, output, context):  # type: ignore[no-untyped-def]
        pass


class Extra:
    from quantforge.hookspecs import hookimpl

    @hookimpl
    def register_quantizers(self, register):  # type: ignore[no-untyped-def]
        register(OnDemo())


def test_parse_variant() -> None:
    spec = parse_variant("rtn:int4,group_size=64")
    assert (spec.name, spec.method, spec.preset, dict(spec.options)) == (
        "rtn-int4-group_size64",
        "rtn",
        "int4",
        {"group_size": "64"},
    )
    assert parse_variant("base").method is None
    assert parse_variant("bnb").preset is None


def test_planner_chains_an_exporter_in_front_of_a_quantizer() -> None:
    plugins = load_plugins([("demo", Plugin()), ("extra", Extra())], entry_points=False)
    plan = plan_variant(plugins, parse_variant("demo-quant:q2"), "basekey")
    assert [(s.method, s.kind, s.input_format, s.output_format) for s in plan.steps] == [
        ("demo-x", "export", "hf", "demo"),
        ("demo-quant", "quantize", "demo", "demo+q"),
    ]
    assert plan.steps[1].options == {"bits": 2} and plan.format == "demo+q"
    assert plan.key == plan.steps[-1].key
    # Keys change with the input, the options, and the plugin's version.
    other_base = plan_variant(plugins, parse_variant("demo-quant:q2"), "otherkey")
    other_opts = plan_variant(plugins, parse_variant("demo-quant"), "basekey")
    assert len({plan.key, other_base.key, other_opts.key}) == 3
    assert other_opts.steps[0].key == plan.steps[0].key  # shared export step is reused
    OnDemo.version = "2"
    try:
        assert plan_variant(plugins, parse_variant("demo-quant:q2"), "basekey").key != plan.key
    finally:
        OnDemo.version = "1"


def test_planner_says_when_no_chain_exists() -> None:
    plugins = load_plugins([("extra", Extra())], entry_points=False)
    with pytest.raises(PlanError, match="no installed exporter turns 'hf' into 'demo'"):
        plan_variant(plugins, parse_variant("demo-quant"), "k")


def _measurement(metric: str, value: float) -> dict[str, object]:
    return {
        "metric": metric,
        "value": value,
        "unit": "MB",
        "better": "lower",
        "evaluator": "size",
        "evaluator_version": "0.1.0/1",
        "details": {"n": 1},
        "provenance": {
            "hardware": "cpu x",
            "python": "3.11",
            "libraries": {"torch": "2.13.0"},
            "base_revision": "abc",
            "dataset_fingerprint": "sha256:f",
            "seed": 0,
            "measured_at": "2026-11-22T00:00:00+00:00",
        },
    }


def test_store_round_trip_with_provenance(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path, create=True)
    store.start_run("r1", "t0", {"ref": "m", "revision": None, "content_hash": "h"}, {"model": "m"})
    store.record_variant(
        "r1",
        "t1",
        name="v",
        spec="{}",
        method="rtn",
        bits=4,
        format="hf+rtn",
        path="/x",
        artifact_key="k",
        steps=[{"method": "rtn"}],
        status="ok",
    )
    store.record_evaluation(
        "r1", "t2", "v", "cpu", "ok", eval_key="e", measurements=[_measurement("size_mb", 1.5)]
    )
    store.record_evaluation(
        "r1", "t3", "v", "cpu", "ok", eval_key="e2", measurements=[_measurement("size_mb", 2.5)]
    )
    store.finish_run("r1", "t4", "ok")
    store.close()

    again = ResultsStore(tmp_path)
    (row,) = again.measurements()
    assert (row.variant, row.target, row.metric, row.value) == ("v", "cpu", "size_mb", 2.5)
    assert row.provenance["libraries"] == {"torch": "2.13.0"}
    assert row.provenance["dataset_fingerprint"] == "sha256:f" and row.provenance["run_id"] == "r1"
    assert again.variants()[0]["steps"] == [{"method": "rtn"}]
    assert again.latest_run()["status"] == "ok"  # type: ignore[index]


def test_store_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no results store"):
        ResultsStore(tmp_path)
    (tmp_path / "results.sqlite").write_text("not sqlite at all" * 100)
    with pytest.raises(ResultsError, match="is not a quantforge results store"):
        ResultsStore(tmp_path)


def test_recipe_with_every_section(tmp_path: Path) -> None:
    (tmp_path / "eval.txt").write_text("x")
    config = parse_recipe(
        {
            "model": {"id": "org/model", "revision": "main"},
            "variants": [
                "rtn:int4",
                {"name": "g64", "method": "rtn", "preset": "int4", "options": {"group_size": 64}},
            ],
            "targets": {"cpu": {"threads": 2}},
            "evaluators": ["size", "kl"],
            "data": {"eval_text": "eval.txt"},
            "run": {"output": "out", "seed": 3, "step_timeout": 10},
        },
        base_dir=tmp_path,
    )
    assert [v.name for v in config.variants] == ["base", "rtn-int4", "g64"]
    assert config.variants[2].options == {"group_size": 64}
    assert config.targets == {"cpu": {"threads": 2}}
    assert config.evaluators == {"size": {}, "kl": {}}
    assert config.eval_text == tmp_path / "eval.txt" and config.output == tmp_path / "out"
    assert (config.seed, config.step_timeout, config.revision) == (3, 10.0, "main")


def test_every_method_of_the_all_methods_demo_passes_preflight(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Plans, options, architectures and calibration of `quantforge demo --all-methods`, without compute."""
    from quantforge.cli.run import demo_config
    from quantforge.running.preflight import preflight

    config = demo_config(tiny_model, tmp_path / "out", all_methods=True)
    plan = preflight(config, load_plugins(), tmp_path / "cache")
    methods = {p.spec.method for p in plan.plans}
    assert {"rtn", "bnb", "gptq", "awq", "quanto", "hqq", "torchao", "qlora"} <= methods
    assert plan.calibration is not None and plan.calibration.startswith("sha256:")
    calibrated = [p for p in plan.plans if any(s.calibration for s in p.steps)]
    assert {p.spec.method for p in calibrated} == {"gptq", "awq", "qlora"}
    assert not (tmp_path / "out").exists()


def test_a_store_from_before_the_bandwidth_column_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    from quantforge.store import results

    old = results.SCHEMA.replace("    memory_bandwidth REAL,\n", "")
    assert old != results.SCHEMA
    with sqlite3.connect(tmp_path / results.STORE_NAME) as db:
        db.executescript(old)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute(
            "INSERT INTO measurements VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            ("base", "cpu", "size_mb", 1.5, "MB", "lower", "measured", "size", "1", "{}",
             "cpu", "3.11", "{}", "rev", "fp", 0, "2026-01-01", "r1", "k"),
        )  # fmt: skip
    store = ResultsStore(tmp_path)
    (row,) = store.measurements()
    assert row.value == 1.5 and row.provenance["memory_bandwidth_gbs"] is None
    version = store.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version[0] == str(results.SCHEMA_VERSION) == "2"
