"""Run configuration, from a TOML recipe or from command-line flags.

A recipe (top-level keys such as ``variants`` come before the first ``[table]``)::

    variants = ["base", "rtn:int4", "bnb:nf4",
                {name = "rtn-g64", method = "rtn", preset = "int4", options = {group_size = 64}}]

    [model]
    id = "path/or/org-name"       # required (or ids / list below)
    revision = "main"             # optional, Hub only
    # a catalogue instead: ids = ["org/a", "org/b"], or list = "models.txt" (one id a
    # line, # comments); each model's variants are jobs of one run, each model's results
    # in OUTPUT/<last part of its id>

    [targets.cpu]                 # or: targets = ["cpu"]
    threads = 2

    [evaluators]                  # or: evaluators = ["size", "speed"]; default: all installed
    perplexity = {window = 256}
    kl = {}

    [data]
    eval_text = "eval.txt"        # default: held-out English prose (see quantforge.model.texts)

    [calibration]                 # for methods that calibrate (GPTQ, AWQ, ...)
    source = "calib.jsonl"        # .txt, .jsonl, or a Hub dataset id
    column = "text"               # .jsonl and Hub datasets
    split = "train"               # Hub datasets
    samples = 128
    seq_len = 512

    [run]
    output = "runs/demo"
    seed = 0
    step_timeout = 3600
    allow_pickle = false          # true: load pickle weights (they can run code) you trust
    worker_memory = "8GB"         # optional: cap each worker's address space (RLIMIT_AS)
    jobs = 2                      # optional: jobs at once (default: one per core; 1: serial)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.errors import RecipeError
from quantforge.model.calibration import CalibrationSpec
from quantforge.running.constraints import (
    Constraints,
    SearchSettings,
    parse_percent,
    parse_size_mb,
)
from quantforge.running.planner import BASE, VariantSpec, check_variant_name, parse_variant

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TARGETS: dict[str, dict[str, Any]] = {"cpu": {}}


@dataclass
class RunConfig:
    """Everything a run needs; validated against the plugins by the runner's preflight."""

    model: str
    variants: list[VariantSpec]
    output: Path
    revision: str | None = None
    targets: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEFAULT_TARGETS))
    evaluators: dict[str, dict[str, Any]] | None = None  # None: every installed evaluator
    eval_text: Path | None = None
    calibration: CalibrationSpec | None = None
    seed: int = 0
    step_timeout: float = 3600.0
    cache_dir: Path | None = None
    search: SearchSettings | None = None  # a [search] table: search instead of building variants
    executor: str = "local"  # or "ray"
    ray_address: str | None = None  # an existing Ray cluster (default: start a local instance)
    allow_pickle: bool = False  # load pickle weights (they can run code): only when trusted
    worker_memory: int | None = None  # bytes of address space per worker (RLIMIT_AS)
    jobs: int | None = None  # jobs at once (None: as many as the cores and memory allow)

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "revision": self.revision,
            "variants": [
                {
                    "name": v.name,
                    "method": v.method,
                    "preset": v.preset,
                    "options": dict(v.options),
                    "import": v.source,
                }
                for v in self.variants
            ],
            "targets": self.targets,
            "evaluators": self.evaluators,
            "eval_text": str(self.eval_text) if self.eval_text else None,
            "calibration": self.calibration.describe() if self.calibration else None,
            "seed": self.seed,
            "step_timeout": self.step_timeout,
            "executor": self.executor,
            "allow_pickle": self.allow_pickle,
            "worker_memory": self.worker_memory,
            "jobs": self.jobs,
        }


def with_base(variants: list[VariantSpec]) -> list[VariantSpec]:
    """The base is always measured: deltas and KL are against it."""
    if any(v.method is None and v.source is None for v in variants):
        return variants
    return [VariantSpec(BASE), *variants]


def check_unique(variants: list[VariantSpec]) -> list[VariantSpec]:
    seen: set[str] = set()
    for v in variants:
        if v.name in seen:
            raise RecipeError(
                f"variant name {v.name!r} appears twice", hint="give one of them a `name`"
            )
        seen.add(v.name)
    return variants


# -- validation helpers ---------------------------------------------------------


def expect(where: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is a ``kind`` (a bool is not an int), else :class:`RecipeError`
    naming ``where`` and ``what`` it should be."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RecipeError(f"{where} must be {what}, got {type(value).__name__} {value!r}")
    return value


TOP_LEVEL = {"model", "variants", "targets", "evaluators", "data", "calibration", "run", "search"}


def check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    """Refuse a key of ``table`` outside ``allowed``, with the closest allowed one."""
    unknown = sorted(set(table) - allowed)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], allowed, n=1)
        if close:
            hint = f"did you mean {close[0]!r}?"
        elif unknown[0] in TOP_LEVEL and where.startswith("["):
            hint = (
                f"in TOML, top-level keys such as {unknown[0]!r} must come before the first [table]"
            )
        else:
            hint = "allowed: " + ", ".join(sorted(allowed))
        raise RecipeError(f"unknown key {unknown[0]!r} in {where}", hint=hint)


def _named_tables(where: str, value: Any) -> dict[str, dict[str, Any]]:
    """``["a", "b"]`` or ``{a = {...}, b = {...}}`` -> name -> options."""
    if isinstance(value, list):
        return {expect(f"{where} entry", v, str, "a name"): {} for v in value}
    expect(where, value, dict, "a list of names or a table")
    return {
        name: dict(expect(f"{where}.{name}", opts, dict, "a table of options"))
        for name, opts in value.items()
    }


def _variant(index: int, value: Any, base_dir: Path) -> VariantSpec:
    where = f"variants[{index}]"
    if isinstance(value, str):
        return parse_variant(value)
    expect(where, value, dict, "a string like 'rtn:int4' or a table")
    check_keys(where, value, {"name", "method", "preset", "options", "import"})
    if "import" in value:
        if "name" not in value or set(value) - {"name", "import"}:
            raise RecipeError(f"{where}: an imported checkpoint takes exactly `name` and `import`")
        path = expect(f"{where}.import", value["import"], str, "a path")
        name = check_variant_name(expect(f"{where}.name", value["name"], str, "a string"))
        return VariantSpec(name, source=str(base_dir / path))
    method = expect(f"{where}.method", value.get("method", BASE), str, "a string")
    if method == BASE:
        return VariantSpec(check_variant_name(str(value.get("name", BASE))))
    preset = value.get("preset")
    if preset is not None:
        expect(f"{where}.preset", preset, str, "a string")
    options = dict(expect(f"{where}.options", value.get("options", {}), dict, "a table"))
    default_name = method + (f"-{preset}" if preset else "")
    name = check_variant_name(
        expect(f"{where}.name", value.get("name", default_name), str, "a string")
    )
    return VariantSpec(name, method, preset, options)


def _calibration(value: Any, base_dir: Path) -> CalibrationSpec | None:
    if value is None:
        return None
    table = expect("[calibration]", value, dict, "a table")
    check_keys(
        "[calibration]", table, {"source", "samples", "seq_len", "column", "split", "config"}
    )
    if "source" not in table:
        raise RecipeError(
            "[calibration] has no source", hint='add source = "calib.txt" or a Hub dataset id'
        )
    source = expect("calibration.source", table["source"], str, "a path or a Hub dataset id")
    if (base_dir / source).exists() or Path(source).suffix in (".txt", ".jsonl"):
        source = str(base_dir / source)
    config = table.get("config")
    return CalibrationSpec(
        source=source,
        samples=expect("calibration.samples", table.get("samples", 128), int, "an integer"),
        seq_len=expect("calibration.seq_len", table.get("seq_len", 512), int, "an integer"),
        column=expect("calibration.column", table.get("column", "text"), str, "a string"),
        split=expect("calibration.split", table.get("split", "train"), str, "a string"),
        config=None if config is None else expect("calibration.config", config, str, "a string"),
    )


def load_recipe(path: Path, output: Path | None = None) -> RunConfig:
    """Read and validate a recipe; unknown keys and wrong types are refused with their path."""
    return parse_recipe(read_recipe(path), base_dir=path.parent, output=output)


def read_recipe(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {str(path)!r}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"recipe {str(path)!r} is not valid TOML: {exc}") from None
    return data


def parse_recipe(
    data: Mapping[str, Any], base_dir: Path = Path("."), output: Path | None = None
) -> RunConfig:
    check_keys("the recipe", data, TOP_LEVEL)
    if "model" not in data:
        raise RecipeError(
            "the recipe has no [model] table", hint='add [model] with id = "org/name" or a folder'
        )
    model = expect("[model]", data["model"], dict, "a table")
    check_keys("[model]", model, {"id", "revision"})
    if "id" not in model:
        raise RecipeError("[model] has no id", hint='add id = "org/name" or a local folder')
    model_id = expect("model.id", model["id"], str, "a string")
    revision = model.get("revision")
    if revision is not None:
        expect("model.revision", revision, str, "a string")
    search = _search(data["search"]) if "search" in data else None
    raw_variants = expect("variants", data.get("variants", []), list, "a list")
    if search is not None and raw_variants:
        raise RecipeError(
            "a recipe with [search] lists no variants: the search chooses them",
            hint="remove variants, or remove [search]",
        )
    if not raw_variants and search is None:
        raise RecipeError(
            "the recipe lists no variants", hint='add variants = ["rtn:int4", "bnb:nf4"]'
        )
    variants = check_unique(
        with_base([_variant(i, v, base_dir) for i, v in enumerate(raw_variants)])
    )
    targets = (
        _named_tables("targets", data["targets"]) if "targets" in data else dict(DEFAULT_TARGETS)
    )
    evaluators = _named_tables("evaluators", data["evaluators"]) if "evaluators" in data else None
    data_table = expect("[data]", data.get("data", {}), dict, "a table")
    check_keys("[data]", data_table, {"eval_text"})
    calibration = _calibration(data.get("calibration"), base_dir)
    run = expect("[run]", data.get("run", {}), dict, "a table")
    check_keys(
        "[run]",
        run,
        {
            "output",
            "seed",
            "step_timeout",
            "executor",
            "ray_address",
            "allow_pickle",
            "worker_memory",
            "jobs",
        },
    )

    def file(key: str) -> Path | None:
        if key not in data_table:
            return None
        return base_dir / str(expect(f"data.{key}", data_table[key], str, "a path"))

    out = output or base_dir / expect("run.output", run.get("output", "runs/recipe"), str, "a path")
    seed = expect("run.seed", run.get("seed", 0), int, "an integer")
    timeout = expect(
        "run.step_timeout", run.get("step_timeout", 3600), (int, float), "a number of seconds"
    )
    if timeout <= 0:
        raise RecipeError(f"run.step_timeout must be > 0, got {timeout}")
    return RunConfig(
        model=model_id if not (base_dir / model_id).exists() else str(base_dir / model_id),
        revision=revision,
        variants=variants,
        output=out,
        targets=targets,
        evaluators=evaluators,
        eval_text=file("eval_text"),
        calibration=calibration,
        seed=seed,
        step_timeout=float(timeout),
        search=search,
        executor=expect(
            "run.executor", run.get("executor", "local"), str, '"local", "inline" or "ray"'
        ),
        ray_address=run.get("ray_address"),
        allow_pickle=expect(
            "run.allow_pickle", run.get("allow_pickle", False), bool, "true or false"
        ),
        worker_memory=_worker_memory(run.get("worker_memory")),
        jobs=_jobs(run.get("jobs")),
    )


def _jobs(value: Any) -> int | None:
    if value is None:
        return None
    jobs = expect("run.jobs", value, int, "a number of jobs")
    if isinstance(jobs, bool) or jobs < 1:
        raise RecipeError(f"run.jobs must be 1 or more, got {value}")
    return int(jobs)


SIZE_UNITS = {"": 2**20, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def parse_size(text: str) -> int:
    """``512MB``, ``4GB``, ``1.5G`` or ``8GiB`` (a bare number is MB) -> bytes above 0;
    :class:`ValueError` with the reason otherwise."""
    import math

    cleaned = text.strip().lower().removesuffix("ib").removesuffix("i")
    digits = cleaned.rstrip("kmgb")
    unit = cleaned[len(digits) :]
    try:
        value = float(digits) if unit in SIZE_UNITS else math.nan
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise ValueError(f"{text!r} is not a size such as 512MB or 4GB")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be above 0, not {text}")
    return int(value * SIZE_UNITS[unit])


def _worker_memory(value: Any) -> int | None:
    if value is None:
        return None
    text = str(expect("run.worker_memory", value, (str, int), 'a size such as "8GB"'))
    try:
        return parse_size(text)
    except ValueError as exc:
        raise RecipeError(f"run.worker_memory: {exc}") from None


def _search(value: Any) -> SearchSettings:
    """``[search]``: target, max_kld, max_ppl_increase ("2%"), min_decode_tps, context,
    max_size ("100MB" or a number of MB), bpw, budget_minutes, methods."""
    table = expect("[search]", value, dict, "a table")
    check_keys(
        "[search]",
        table,
        {
            "target",
            "max_kld",
            "max_ppl_increase",
            "min_decode_tps",
            "context",
            "max_size",
            "bpw",
            "budget_minutes",
            "methods",
        },
    )
    if "target" not in table:
        raise RecipeError("[search] has no target", hint='add target = "rpi5"')

    def number(key: str) -> float | None:
        if key not in table:
            return None
        return float(expect(f"search.{key}", table[key], (int, float), "a number"))

    increase = table.get("max_ppl_increase")
    if isinstance(increase, str):
        increase = parse_percent(increase)
    elif increase is not None:
        increase = float(expect("search.max_ppl_increase", increase, (int, float), "a number"))
    context = table.get("context")
    if context is not None:
        context = expect("search.context", context, int, "an integer")
    methods = expect("search.methods", table.get("methods", []), list, "a list of names")
    size = table.get("max_size")
    if isinstance(size, str):
        size = parse_size_mb(size)
    elif size is not None:
        size = float(expect("search.max_size", size, (int, float), 'a size such as "100MB"'))
    constraints = Constraints(
        target=expect("search.target", table["target"], str, "a target name"),
        max_kld=number("max_kld"),
        max_ppl_increase=increase,
        min_decode_tps=number("min_decode_tps"),
        context=context,
        max_size_mb=size,
        bpw=number("bpw"),
    )
    constraints.check()
    return SearchSettings(constraints, number("budget_minutes"), tuple(str(m) for m in methods))
