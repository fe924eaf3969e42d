"""Run a recipe: preflight, build every variant's steps, measure, record.

Preflight checks everything that can be checked without compute (plugins,
options, model folder, data files, optional packages) and raises before the
first step. After that, one failing step or evaluation is recorded as that
variant's failure and the run goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge import __version__ as quantforge_version
from quantforge import artifacts, locks, provenance, worker
from quantforge.calibration import CalibrationSpec
from quantforge.calibration import fingerprint as calibration_fingerprint
from quantforge.devices import DeviceProfile, footprint_from_config, footprint_of
from quantforge.errors import (
    DiskFullError,
    QuantforgeError,
    RecipeError,
    UnsupportedModelError,
    UsageError,
)
from quantforge.executor import JobOutcome, LocalExecutor, make_executor
from quantforge.gguf_base import SOURCE_FILE
from quantforge.interfaces import Artifact, Evaluator, Target, check_group_size
from quantforge.model_checks import check_shipped_code
from quantforge.model_source import BaseModel, resolve_model
from quantforge.planner import VariantPlan, needs_calibration, plan_variant
from quantforge.plugins import Plugins, load_plugins
from quantforge.recipe import RunConfig
from quantforge.results import ResultsStore
from quantforge.support import read_config, refusal


def default_cache_dir() -> Path:
    root = os.environ.get("QUANTFORGE_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "quantforge"


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class Reporter:
    """Progress callbacks; the CLI draws them with rich, tests collect them."""

    def stage(self, title: str, total: int) -> None:
        """A stage of ``total`` units starts."""

    def advance(self, label: str, status: str) -> None:
        """One unit finished with ``status`` (``ok``, ``cached``, ``failed: ...``)."""

    def note(self, text: str) -> None:
        """Something worth telling the user."""

    def progress(
        self, label: str, done: int, total: int, unit: str, elapsed: float, eta: float | None
    ) -> None:
        """A long step inside a unit reports how far it is (``12`` of ``30`` ``layers``,
        seconds elapsed, seconds estimated to go or ``None``)."""


@dataclass
class Preflight:
    """What preflight resolved: the base, each variant's plan, targets and evaluators."""

    base: BaseModel
    plans: list[VariantPlan]
    targets: dict[str, tuple[Target, dict[str, Any]]]
    evaluators: list[tuple[Evaluator, dict[str, Any], str]]  # object, options, version
    eval_text: Path
    not_runnable: dict[tuple[str, str], str] = field(default_factory=dict)
    calibration: str | None = None  # fingerprint, when a step calibrates
    eval_source: str = ""  # what the evaluation text is, in words (cards name it)
    calibration_spec: CalibrationSpec | None = None  # the user's, or the built-in text
    # variants a step cannot process this model for (architecture, shapes), with the reason;
    # the others run
    refused: list[tuple[VariantPlan, str]] = field(default_factory=list)
    # things the user should know that do not stop the run (shipped code that is ignored)
    notes: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    run_id: str
    output: Path
    status: str
    variants: dict[str, str]  # name -> "ok" | "failed: why"
    evaluations: dict[tuple[str, str], str]
    steps_run: int = 0
    steps_cached: int = 0
    evaluations_run: int = 0
    evaluations_cached: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # name -> why, from preflight

    def failed(self) -> list[str]:
        """Variants that failed to build and evaluations that failed; a variant that a
        target does not run (a GGUF file on the transformers target) is not a failure."""
        return list(self.failures())

    def failures(self) -> dict[str, str]:
        """What :meth:`failed` lists, each with why (the step's or evaluator's own line)."""
        out = {
            name: status.removeprefix("failed: ")
            for name, status in self.variants.items()
            if status != "ok"
        }
        out.update(
            (f"{v} on {t}", s.removeprefix("failed: "))
            for (v, t), s in self.evaluations.items()
            if s not in ("ok", "cached") and not s.startswith("not runnable")
        )
        return out


def builtin_text_file(cache_dir: Path, name: str, text: str) -> Path:
    """A built-in text (held-out or calibration sample) as a file in the cache, kept current
    (replaced whole, so a run reading it beside another never sees half of it)."""
    path = cache_dir / "data" / name
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def _atomic_copy(source: Path, path: Path) -> None:
    """Copy ``source`` to ``path`` so that ``path`` is never seen half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.copy(source, tmp)
    tmp.replace(path)


def _base_source(path: Path) -> dict[str, Any] | None:
    """What a base folder says about its own origin (a GGUF it was dequantized from)."""
    file = path / SOURCE_FILE
    try:
        return dict(json.loads(file.read_text(encoding="utf-8"))) if file.is_file() else None
    except (OSError, ValueError):
        return None


def builtin_calibration(cache_dir: Path, model: Path) -> CalibrationSpec:
    """Calibration data when the user gave none: English prose disjoint from the evaluation
    text (:mod:`quantforge.texts`), 128 rows of 512 tokens; a tiny model that quantforge
    trained calibrates on its own training text (32 rows of 128 tokens)."""
    if (model / "quantforge-tiny.json").is_file():
        from quantforge.testing.tiny_model import calibration_text

        path = builtin_text_file(cache_dir, "builtin-calibration.txt", calibration_text(60_000))
        return CalibrationSpec(str(path), samples=32, seq_len=128)
    from quantforge import texts

    path = builtin_text_file(
        cache_dir, "builtin-prose-calibration.txt", texts.prose_calibration_text(None)
    )
    return CalibrationSpec(str(path))


def builtin_eval_text(cache_dir: Path, model: Path) -> tuple[Path, str]:
    """The default evaluation text for ``model`` and where it comes from: a tiny model that
    quantforge trained keeps its own held-out text; every other model is measured on English
    prose (:mod:`quantforge.texts`)."""
    if (model / "quantforge-tiny.json").is_file():
        from quantforge.testing.tiny_model import evaluation_text

        text = builtin_text_file(cache_dir, "builtin-eval.txt", evaluation_text())
        return text, "held-out Python standard-library source (textwrap.py, fractions.py)"
    from quantforge import texts

    path = builtin_text_file(cache_dir, "builtin-prose-eval.txt", texts.prose_evaluation_text())
    return path, f"held-out English prose: {texts.describe()}"


def _check_text_file(path: Path, what: str) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} file {str(path)!r}: {exc}") from None
    if not text.strip():
        raise UsageError(f"{what} file {str(path)!r} is empty")


def _version_of(plugins: Plugins, registry_plugin: str, impl_version: str) -> str:
    return f"{plugins.infos[registry_plugin].version or '0'}/{impl_version}"


def preflight(config: RunConfig, plugins: Plugins, cache_dir: Path) -> Preflight:
    """Validate the whole run before any compute. Raises :class:`QuantforgeError`."""
    targets: dict[str, tuple[Target, dict[str, Any]]] = {}
    for name, given in config.targets.items():
        target = plugins.targets.get(name)
        options = target.options.resolve(f"target {name}", given)
        if target.measured:
            target.check_available()
        targets[name] = (target, options)
    if not targets:
        raise RecipeError("no targets to measure on", hint='add targets = ["cpu"]')
    chosen = config.evaluators
    if chosen is None:
        chosen = {n: {} for n in plugins.evaluators.names() if plugins.evaluators.get(n).by_default}
    evaluators = []
    for name, given in chosen.items():
        evaluator = plugins.evaluators.get(name)
        evaluator.check_available()
        version = _version_of(plugins, plugins.evaluators.plugin_of(name), evaluator.version)
        options = evaluator.options.resolve(f"evaluator {name}", given)
        inputs = evaluator.check_inputs(options)
        if inputs:
            version = f"{version}; inputs {inputs}"
        evaluators.append((evaluator, options, version))
    base = resolve_model(config.model, config.revision, cache_dir, allow_pickle=config.allow_pickle)
    model_config = read_config(base.path)
    shipped = check_shipped_code(base.path, model_config)
    notes = [shipped] if shipped else []
    if config.eval_text is not None:
        eval_text, eval_source = config.eval_text, f"the file {config.eval_text.name}"
    else:
        eval_text, eval_source = builtin_eval_text(cache_dir, base.path)
    _check_text_file(eval_text, "evaluation text")
    base_key = _digest("base", base.identity)
    calibration = None
    calibration_spec = None
    if any(needs_calibration(plugins, s) for s in config.variants):
        calibration_spec = config.calibration or builtin_calibration(cache_dir, base.path)
        calibration = calibration_fingerprint(calibration_spec)
    plans = [
        plan_variant(
            plugins, spec, base_key, calibration=calibration, allow_pickle=config.allow_pickle
        )
        for spec in config.variants
    ]
    refused = []
    for plan in plans:
        why = refusal(plugins, plan, model_config, base.path)
        if why is not None:
            refused.append((plan, why))
            continue
        _check_chosen_group_size(plugins, plan, model_config)
    asked = [p for p in plans if p.steps or p.path is not None]  # not base: always there
    if refused and len(refused) == len(asked):
        raise UnsupportedModelError(
            ("" if len(refused) == 1 else "every variant was refused: ")
            + "; ".join(f"{p.spec.name}: {why}" for p, why in refused)
        )
    plans = [p for p in plans if all(p is not r for r, _ in refused)]
    _check_contexts(config, targets, model_config)
    not_runnable = {}
    for plan in plans:
        for name, (target, _) in targets.items():
            if not target.runs(plan.format):
                not_runnable[(plan.spec.name, name)] = f"{name} does not run {plan.format} models"
    return Preflight(
        base,
        plans,
        targets,
        evaluators,
        eval_text,
        not_runnable,
        calibration,
        eval_source,
        calibration_spec,
        refused,
        notes,
    )


def _check_chosen_group_size(
    plugins: Plugins, plan: VariantPlan, model_config: Mapping[str, Any]
) -> None:
    """A ``group_size`` the user wrote must divide every width of the model; a method's
    default may fall back per weight instead (and records it in its precision file)."""
    if "group_size" not in plan.spec.options or not plan.steps:
        return
    step = plan.steps[-1]
    try:
        size = int(str(step.options.get("group_size")))
    except ValueError:
        return
    method = plugins.methods.get(step.method)
    option = next((o for o in method.options.options if o.name == "group_size"), None)
    choices = (
        [int(c) for c in option.choices if isinstance(c, int)]
        if option is not None and option.choices
        else None
    )
    check_group_size(
        step.method, size, model_config, choices, falls_back=method.group_size_fallback
    )


def _check_contexts(
    config: RunConfig,
    targets: dict[str, tuple[Target, dict[str, Any]]],
    model_config: dict[str, Any],
) -> None:
    """Device profiles check fit at a context length: the option's default, or the model's
    maximum when that is shorter; a longer one asked for is refused before any compute."""
    base = footprint_from_config("base", "hf", 0, model_config)
    longest = base.max_context
    for name, (target, options) in targets.items():
        if not isinstance(target, DeviceProfile) or not longest:
            continue
        if "context" not in config.targets[name]:
            options["context"] = base.default_context(int(options["context"]))
        elif int(options["context"]) > longest:
            raise UsageError(
                f"target {name}: context {options['context']} is longer than the model "
                f"supports ({longest} tokens, max_position_embeddings)",
                hint=f"set context = {longest} or less for {name}",
            )


def _set_link(link: Path, target: Path | None) -> None:
    """Point ``link`` at ``target`` (or remove it) in one step: a run beside this one that
    writes the same link never sees it missing, and neither fails."""
    if target is None:
        link.unlink(missing_ok=True)
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    tmp.replace(link)


def _worker_message(outcome: JobOutcome) -> str:
    """The worker's own one-line error when it wrote one, else how it ended."""
    if outcome.result_path.exists():
        try:
            error = outcome.json().get("error")
        except ValueError:
            error = None
        if error:
            return str(error)
    return outcome.failure or "no result"


class Runner:
    """Executes one run. Steps and measurements are cached across runs in ``cache_dir``."""

    def __init__(
        self,
        config: RunConfig,
        plugins: Plugins | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.config = config
        self.plugins = plugins or load_plugins()
        self.reporter = reporter or Reporter()
        self.cache_dir = config.cache_dir or default_cache_dir()
        self.artifacts_dir = self.cache_dir / "artifacts"
        self._calibration_rows: Path | None = None
        self._job_resources: dict[str, float] | None = None

    def artifact_path(self, key: str) -> Path:
        return self.artifacts_dir / key

    def _variant_path(self, plan: Preflight, vplan: VariantPlan) -> Path:
        if vplan.path is not None:  # an imported checkpoint
            return vplan.path
        return self.artifact_path(vplan.key) if vplan.steps else plan.base.path

    def run(self) -> RunSummary:
        plan = preflight(self.config, self.plugins, self.cache_dir)
        for info in self.plugins.errors():
            self.reporter.note(f"plugin {info.name} is not loaded: {info.errors[0]}")
        for note in plan.notes:
            self.reporter.note(note)
        for vplan, why in plan.refused:
            self.reporter.note(f"refused {vplan.spec.name}: {why}")
        output = self.config.output
        run_id = provenance.now().replace(":", "").replace("-", "") + "-" + uuid.uuid4().hex[:6]
        # The executor first, then the texts tokenized (calibration data that is too short
        # fails here): a run that cannot start leaves no run folder behind. Their logs wait
        # in the cache until the run folder exists.
        executor = make_executor(
            self.config.executor,
            self.cache_dir / "staging" / run_id,
            self.config.ray_address,
            self.config.worker_memory,
        )
        try:
            tokens = self._tokenize(executor, plan)
            self._calibration_rows = self._calibrate(executor, plan)
            output.mkdir(parents=True, exist_ok=True)
            executor.move_to(output / "logs" / run_id)
            store = ResultsStore(output, create=True)
        except BaseException as exc:
            executor.close()
            if isinstance(exc, UsageError):  # said in full; no log to point at
                shutil.rmtree(executor.work_dir, ignore_errors=True)
            raise
        base = plan.base
        store.start_run(
            run_id,
            provenance.now(),
            {"ref": base.ref, "revision": base.revision, "content_hash": base.content_hash},
            {
                **self.config.describe(),
                "eval_text_source": plan.eval_source,
                "base_source": _base_source(base.path),
                "notes": plan.notes,
            },
        )
        summary = RunSummary(
            run_id, output, "running", {}, {}, refused={p.spec.name: w for p, w in plan.refused}
        )
        try:
            failures = self._build(executor, plan, summary)
            self._record_variants(store, run_id, plan, failures, summary)
            references = self._references(executor, plan, tokens)
            self._evaluate(executor, store, run_id, plan, tokens, references, summary)
            self._estimate(store, run_id, plan, summary)
        except BaseException:
            with contextlib.suppress(Exception):  # a full disk may refuse this write too
                store.finish_run(run_id, provenance.now(), "aborted")
            store.close()
            raise
        finally:
            executor.close()
        summary.status = "partial" if summary.failed() or summary.refused else "ok"
        store.finish_run(run_id, provenance.now(), summary.status)
        store.close()
        return summary

    # -- stages ----------------------------------------------------------------

    def _memory(self, plan: Preflight) -> dict[str, float]:
        """What a job asks an executor for: a CPU, and memory for the model a few times over
        (weights, a copy being written, activations). The base folder is sized once a run."""
        if self._job_resources is None:
            weights = artifacts.folder_bytes(plan.base.path, weights_only=True)
            self._job_resources = {"CPU": 1, "memory": max(3 * weights, 256 * 2**20)}
        return self._job_resources

    def _prepared(
        self, executor: LocalExecutor, kind: str, key: str, job: dict[str, Any], what: str
    ) -> Path:
        """Run a preparation job once and keep its result in the cache under ``key`` (a run
        that finds another one preparing the same thing waits for it)."""
        path = self.cache_dir / kind / f"{key}.json"
        if path.exists():
            return path
        with self._lock(f"{kind}-{key}", what):
            if path.exists():
                return path
            self.reporter.stage(what, 1)
            job = {**job, "kind": kind, "resources": {"CPU": 1}}  # text and a tokenizer only
            outcome = executor.run(job, kind, self.config.step_timeout)
            if outcome.returncode == worker.INPUT_ERROR:  # the data, in the worker's words
                raise UsageError(f"{what} failed: {_worker_message(outcome)}")
            if outcome.failure or not outcome.result_path.exists():
                raise QuantforgeError(
                    f"{what} failed: {_worker_message(outcome)}", hint=f"see {outcome.log_path}"
                )
            _atomic_copy(outcome.result_path, path)
        self.reporter.advance(kind, "ok")
        return path

    def _lock(self, name: str, what: str) -> contextlib.AbstractContextManager[None]:
        """Hold the cache lock ``name``; say so when another run holds it."""
        return self._locks([name], what)

    def _locks(self, names: list[str], what: str) -> contextlib.AbstractContextManager[None]:
        def waiting() -> None:
            self.reporter.note(f"another run is {what}; waiting for it to finish")

        return locks.held(self.cache_dir, names, waiting)

    def _tokenize(self, executor: LocalExecutor, plan: Preflight) -> Path:
        """Tokenize the evaluation text once with the base tokenizer."""
        text = plan.eval_text.read_bytes()
        key = _digest("tokens", hashlib.sha256(text).hexdigest(), plan.base.content_hash)
        job = {"model_path": str(plan.base.path), "text_path": str(plan.eval_text)}
        return self._prepared(executor, "tokenize", key, job, "tokenizing the evaluation text")

    def _calibrate(self, executor: LocalExecutor, plan: Preflight) -> Path | None:
        """Tokenize the calibration set once with the base tokenizer (cached by fingerprint)."""
        spec = plan.calibration_spec
        if plan.calibration is None or spec is None:
            return None
        key = _digest("calibration", plan.calibration, plan.base.content_hash)
        job = {
            "model_path": str(plan.base.path),
            "spec": spec.describe(),
            "fingerprint": plan.calibration,
        }
        return self._prepared(executor, "calibrate", key, job, "preparing the calibration data")

    def _source_of(self, plan: Preflight, vplan: VariantPlan, index: int) -> Artifact:
        if index == 0:
            return Artifact(plan.base.path, "hf", {})
        return artifacts.read_artifact(self.artifact_path(vplan.steps[index - 1].key))

    def _build(
        self, executor: LocalExecutor, plan: Preflight, summary: RunSummary
    ) -> dict[str, str]:
        """Run every step not already cached; return failure reasons by step key."""
        by_depth: dict[int, dict[str, tuple[VariantPlan, int]]] = defaultdict(dict)
        for vplan in plan.plans:
            for i, step in enumerate(vplan.steps):
                by_depth[i].setdefault(step.key, (vplan, i))
        failures: dict[str, str] = {}
        total = sum(len(s) for s in by_depth.values())
        if total:
            self.reporter.stage("building variants", total)
        for depth in sorted(by_depth):
            groups: dict[str, list[tuple[VariantPlan, int]]] = defaultdict(list)
            for key, (vplan, i) in by_depth[depth].items():
                step = vplan.steps[i]
                if artifacts.is_complete(self.artifact_path(key)):
                    summary.steps_cached += 1
                    self.reporter.advance(f"{vplan.spec.name}: {step.method}", "cached")
                    continue
                previous = vplan.steps[i - 1].key if i else "base"
                if previous in failures:
                    failures[key] = f"its input step failed: {failures[previous]}"
                    self.reporter.advance(f"{vplan.spec.name}: {step.method}", "failed")
                    continue
                groups[previous].append((vplan, i))
            for members in groups.values():
                self._build_group(executor, plan, members, failures, summary)
        return failures

    def _build_group(
        self,
        executor: LocalExecutor,
        plan: Preflight,
        members: list[tuple[VariantPlan, int]],
        failures: dict[str, str],
        summary: RunSummary,
    ) -> None:
        """Build the steps of one group under their cache locks: a step that another run
        built meanwhile is taken from the cache, and what a killed run left half-written is
        removed before the build starts."""
        keys = [vplan.steps[i].key for vplan, i in members]
        what = "building " + ", ".join(vplan.spec.name for vplan, _ in members)
        with self._locks([f"artifact-{key}" for key in keys], what):
            todo = []
            for vplan, i in members:
                final = self.artifact_path(vplan.steps[i].key)
                if artifacts.is_complete(final):
                    summary.steps_cached += 1
                    self.reporter.advance(f"{vplan.spec.name}: {vplan.steps[i].method}", "cached")
                    continue
                artifacts.remove_partial(final)
                todo.append((vplan, i))
            try:
                if todo:
                    self._run_group(executor, plan, todo, failures, summary)
            except BaseException:  # interrupted (its worker is gone by now) or a full disk
                for vplan, i in todo:
                    artifacts.remove_partial(self.artifact_path(vplan.steps[i].key))
                raise

    def _step_job(self, plan: Preflight, vplan: VariantPlan, i: int) -> dict[str, Any]:
        step = vplan.steps[i]
        source = self._source_of(plan, vplan, i)
        manifest = {
            "format": step.output_format,
            "key": step.key,
            "base": {
                "ref": plan.base.ref,
                "revision": plan.base.revision,
                "content_hash": plan.base.content_hash,
            },
            "steps": [s.describe() for s in vplan.steps[: i + 1]],
            "calibration": self._calibration_record(plan) if step.calibration else None,
            "created": provenance.now(),
        }
        return {
            "method": step.method,
            "options": dict(step.options),
            "key": step.key,
            "source": {
                "path": str(source.path),
                "format": source.format,
                "manifest": dict(source.manifest),
            },
            "output": str(self.artifact_path(step.key)),
            "manifest": manifest,
            "base_path": str(plan.base.path),
        }

    def _calibration_record(self, plan: Preflight) -> dict[str, Any] | None:
        spec = plan.calibration_spec
        if spec is None or plan.calibration is None:
            return None
        return {**spec.describe(), "fingerprint": plan.calibration}

    def _run_group(
        self,
        executor: LocalExecutor,
        plan: Preflight,
        members: list[tuple[VariantPlan, int]],
        failures: dict[str, str],
        summary: RunSummary,
    ) -> None:
        """Steps with one input run in one worker (the input is loaded once). If that worker
        dies, each unfinished step is retried alone, so the failure lands on the right one."""
        job = {
            "kind": "steps",
            "seed": self.config.seed,
            "calibration_path": str(self._calibration_rows) if self._calibration_rows else None,
            "steps": [self._step_job(plan, vplan, i) for vplan, i in members],
        }
        label = "+".join(vplan.steps[i].method for vplan, i in members)
        gpu = any(
            getattr(self.plugins.methods.get(vplan.steps[i].method), "needs_gpu", False)
            for vplan, i in members
        )
        job["resources"] = {**self._memory(plan), **({"GPU": 1} if gpu else {})}
        names = {
            vplan.steps[i].key: f"{vplan.spec.name}: {vplan.steps[i].method}"
            for vplan, i in members
        }

        def progress(data: dict[str, Any]) -> None:
            self.reporter.progress(
                names.get(str(data.get("key")), label),
                int(data.get("done", 0)),
                int(data.get("total", 0)),
                str(data.get("unit", "")),
                float(data.get("elapsed_s", 0.0)),
                None if data.get("eta_s") is None else float(data["eta_s"]),
            )

        outcome = executor.run(
            job, f"build-{label}", self.config.step_timeout * len(members), progress
        )
        reported = {line["key"]: line for line in outcome.lines()}
        full = next((line for line in reported.values() if line.get("disk_full")), None)
        if full is not None:  # every step after this one would fail the same way: stop
            for vplan, i in members:
                artifacts.remove_partial(self.artifact_path(vplan.steps[i].key))
            raise DiskFullError(
                f"the disk is full: building {label} failed with {full['error']}",
                hint="free space or set QUANTFORGE_CACHE_DIR to a bigger disk, then rerun "
                "the same command: what finished is kept in the cache",
            )
        for vplan, i in members:
            step = vplan.steps[i]
            name = f"{vplan.spec.name}: {step.method}"
            line = reported.get(step.key)
            if (
                line is not None
                and line["ok"]
                and artifacts.is_complete(self.artifact_path(step.key))
            ):
                summary.steps_run += 1
                self.reporter.advance(name, "ok")
                continue
            artifacts.remove_partial(self.artifact_path(step.key))
            if line is not None:
                failures[step.key] = (
                    f"{step.method} raised {line['error']} (log: {outcome.log_path})"
                )
                self.reporter.advance(name, "failed")
            elif len(members) > 1:
                self._run_group(executor, plan, [(vplan, i)], failures, summary)
            else:
                failures[step.key] = (
                    f"{step.method}: {outcome.failure or 'no result'} (log: {outcome.log_path})"
                )
                self.reporter.advance(name, "failed")

    def _record_variants(
        self,
        store: ResultsStore,
        run_id: str,
        plan: Preflight,
        failures: dict[str, str],
        summary: RunSummary,
    ) -> None:
        links = self.config.output / "variants"
        links.mkdir(exist_ok=True)
        # (plan, status, error): refused in preflight, then built or failed
        outcomes: list[tuple[VariantPlan, str, str | None]] = [
            (vplan, "refused", why) for vplan, why in plan.refused
        ]
        for vplan in plan.plans:
            error = next((failures[s.key] for s in vplan.steps if s.key in failures), None)
            outcomes.append((vplan, "ok" if error is None else "failed", error))
            summary.variants[vplan.spec.name] = "ok" if error is None else f"failed: {error}"
        for vplan, status, error in outcomes:
            path = self._variant_path(plan, vplan) if status == "ok" else None
            _set_link(links / vplan.spec.name, path)
            calibrates = status != "refused" and any(s.calibration for s in vplan.steps)
            store.record_variant(
                run_id,
                provenance.now(),
                name=vplan.spec.name,
                spec=self._spec_json(vplan),
                method=vplan.method_label,
                bits=vplan.bits,
                format=vplan.format,
                path=str(path) if path is not None else None,
                artifact_key=vplan.key,
                steps=[s.describe() for s in vplan.steps],
                status=status,
                error=error,
                precision=artifacts.read_precision(path) if path is not None else None,
                calibration=self._calibration_record(plan) if calibrates else None,
            )

    @staticmethod
    def _spec_json(vplan: VariantPlan) -> str:
        spec = vplan.spec
        return json.dumps(
            {
                "method": spec.method,
                "preset": spec.preset,
                "options": dict(spec.options),
                "import": spec.source,
            }
        )

    @staticmethod
    def _eval_specs(
        plan: Preflight, target: str, references: dict[tuple[str, str], Path]
    ) -> list[dict[str, Any]]:
        return [
            {
                "name": e.name,
                "options": opts,
                "version": version,
                "reference_dir": str(references[(target, e.name)])
                if (target, e.name) in references
                else None,
            }
            for e, opts, version in plan.evaluators
        ]

    def _references(
        self, executor: LocalExecutor, plan: Preflight, tokens: Path
    ) -> dict[tuple[str, str], Path]:
        """Run the base once per target for evaluators that compare against it (its logits).

        A target that cannot run the HF base (llama.cpp runs only GGUF) compares against
        the base as run by a target that can: one in the run, else the local ``cpu``.
        """
        fingerprint = json.loads(tokens.read_text())["fingerprint"]
        out: dict[tuple[str, str], Path] = {}
        if not any(e.needs_reference for e, _, _ in plan.evaluators):
            return out
        measured = {n: t for n, t in plan.targets.items() if t[0].measured}
        runs_base = [n for n, (t, _) in measured.items() if t.runs("hf")]
        sources: dict[str, tuple[str, Target, dict[str, Any]]] = {}
        for tname, (target, topts) in measured.items():
            if target.runs("hf"):
                sources[tname] = (tname, target, topts)
            elif runs_base:
                sources[tname] = (runs_base[0], *plan.targets[runs_base[0]])
            elif "cpu" in self.plugins.targets:
                cpu = self.plugins.targets.get("cpu")
                sources[tname] = ("cpu", cpu, cpu.options.resolve("target cpu", {}))
        done: set[str] = set()
        for tname, (rname, source_target, topts) in sources.items():
            wanted = []
            for evaluator, opts, version in plan.evaluators:
                if not evaluator.needs_reference:
                    continue
                key = _digest(
                    "reference",
                    plan.base.identity,
                    rname,
                    topts,
                    evaluator.name,
                    version,
                    opts,
                    fingerprint,
                )
                path = self.cache_dir / "references" / key
                out[(tname, evaluator.name)] = path
                wanted.append((key, path, evaluator.name, opts, version))
            if rname in done:
                continue
            done.add(rname)
            names = [f"reference-{key}" for key, *_ in wanted]
            with self._locks(names, f"computing the base's reference outputs on {rname}"):
                todo = [
                    {"name": e, "options": opts, "version": v, "reference_dir": str(path)}
                    for _, path, e, opts, v in wanted
                    if not path.exists()
                ]
                for item in todo:  # what a killed run left half-written
                    artifacts.remove_partial(Path(str(item["reference_dir"])))
                if todo:
                    self._reference_job(executor, plan, tokens, rname, source_target, topts, todo)
        return out

    def _reference_job(
        self,
        executor: LocalExecutor,
        plan: Preflight,
        tokens: Path,
        tname: str,
        source_target: Target,
        topts: dict[str, Any],
        todo: list[dict[str, Any]],
    ) -> None:
        """Run the base on ``tname`` once to write the references ``todo`` asks for."""
        self.reporter.stage(f"reference outputs of the base on {tname}", 1)
        job = {
            "kind": "evaluate",
            "mode": "reference",
            "target": tname,
            "target_options": topts,
            "artifact": {"path": str(plan.base.path), "format": "hf", "manifest": {}},
            "producer": None,
            "evaluators": todo,
            "tokens_path": str(tokens),
            "seed": self.config.seed,
            "base_model": str(plan.base.path),
        }
        job["resources"] = {**self._memory(plan), **source_target.resources()}
        outcome = executor.run(job, f"reference-{tname}", self.config.step_timeout)
        self.reporter.advance(f"base on {tname}", "ok" if not outcome.failure else "failed")
        if outcome.failure:
            self.reporter.note(
                f"reference run on {tname} failed: {outcome.failure} (log: {outcome.log_path})"
            )

    def _evaluate(
        self,
        executor: LocalExecutor,
        store: ResultsStore,
        run_id: str,
        plan: Preflight,
        tokens: Path,
        references: dict[tuple[str, str], Path],
        summary: RunSummary,
    ) -> None:
        fingerprint = json.loads(tokens.read_text())["fingerprint"]
        pairs = [
            (vplan, tname)
            for vplan in plan.plans
            for tname, (target, _) in plan.targets.items()
            if target.measured and summary.variants[vplan.spec.name] == "ok"
        ]
        self.reporter.stage("measuring", len(pairs))
        for vplan, tname in pairs:
            name = vplan.spec.name
            target, topts = plan.targets[tname]
            reason = plan.not_runnable.get((name, tname))
            if reason:
                store.record_evaluation(
                    run_id, provenance.now(), name, tname, "not-runnable", error=reason
                )
                summary.evaluations[(name, tname)] = f"not runnable: {reason}"
                self.reporter.advance(f"{name} on {tname}", "not runnable")
                continue
            specs = self._eval_specs(plan, tname, references)
            key = _digest("eval", vplan.key, tname, topts, specs, fingerprint, self.config.seed)
            with self._lock(f"measure-{key}", f"measuring {name} on {tname}"):
                status = self._measure(
                    executor, store, run_id, plan, vplan, tname, tokens, specs, key
                )
            if status == "cached":
                summary.evaluations_cached += 1
            else:
                summary.evaluations_run += 1
            summary.evaluations[(name, tname)] = status
            self.reporter.advance(f"{name} on {tname}", status.split(":")[0])

    def _measure(
        self,
        executor: LocalExecutor,
        store: ResultsStore,
        run_id: str,
        plan: Preflight,
        vplan: VariantPlan,
        tname: str,
        tokens: Path,
        specs: list[dict[str, Any]],
        key: str,
    ) -> str:
        """Measure one variant on one target, or take the measurement from the cache (where
        a run beside this one may just have put it); return the status."""
        name = vplan.spec.name
        target, topts = plan.targets[tname]
        cached = self.cache_dir / "measurements" / f"{key}.json"
        if cached.exists():
            result = json.loads(cached.read_text())
            self._store_measurements(store, run_id, name, tname, key, result, plan, cached=True)
            return "cached"
        job = {
            "kind": "evaluate",
            "mode": "measure",
            "target": tname,
            "target_options": topts,
            "artifact": {
                "path": str(self._variant_path(plan, vplan)),
                "format": vplan.format,
                "manifest": {},
            },
            "producer": vplan.producer,
            "evaluators": specs,
            "tokens_path": str(tokens),
            "seed": self.config.seed,
            "base_model": str(plan.base.path),
        }
        job["resources"] = {**self._memory(plan), **target.resources()}
        outcome = executor.run(job, f"measure-{name}-{tname}", self.config.step_timeout)
        return self._collect(store, run_id, name, tname, key, outcome, plan, cached)

    def _estimate(
        self, store: ResultsStore, run_id: str, plan: Preflight, summary: RunSummary
    ) -> None:
        """Fit checks and decode estimates of every built variant on every device profile."""
        profiles = [
            (name, target, opts)
            for name, (target, opts) in plan.targets.items()
            if isinstance(target, DeviceProfile)
        ]
        for vplan in plan.plans:
            name = vplan.spec.name
            if summary.variants[name] != "ok":
                continue
            for tname, profile, opts in profiles:
                when = provenance.now()
                reason = plan.not_runnable.get((name, tname))
                if reason:
                    store.record_evaluation(run_id, when, name, tname, "not-runnable", error=reason)
                    summary.evaluations[(name, tname)] = f"not runnable: {reason}"
                    continue
                try:
                    footprint = footprint_of(self._variant_path(plan, vplan))
                    report = profile.fit(footprint, int(opts["context"]))
                except QuantforgeError as exc:
                    store.record_evaluation(run_id, when, name, tname, "failed", error=str(exc))
                    summary.evaluations[(name, tname)] = f"failed: {exc}"
                    continue
                details = {**report.as_dict(), "source": profile.source}
                rows = [
                    {
                        "metric": metric,
                        "value": value,
                        "unit": unit,
                        "better": better,
                        "details": details,
                        "evaluator": "fit",
                        "evaluator_version": "1",
                        "kind": "estimated",
                        "provenance": {
                            "hardware": profile.hardware(),
                            "python": platform.python_version(),
                            "libraries": {"quantforge": quantforge_version},
                            "dataset_fingerprint": "",
                            "seed": self.config.seed,
                            "base_revision": plan.base.revision
                            or f"sha256:{plan.base.content_hash}",
                            "run_id": run_id,
                            "measured_at": when,
                        },
                    }
                    for metric, value, unit, better in (
                        ("fits", float(report.fits), "", "higher"),
                        ("needed_mb", report.needed_bytes / 2**20, "MiB", "lower"),
                        ("est_decode_tps", report.decode_tps, "tokens/s", "higher"),
                    )
                ]
                store.record_evaluation(
                    run_id, when, name, tname, "ok", measurements=rows, cached=False
                )
                summary.evaluations[(name, tname)] = "ok"

    def _collect(
        self,
        store: ResultsStore,
        run_id: str,
        name: str,
        tname: str,
        key: str,
        outcome: JobOutcome,
        plan: Preflight,
        cache_file: Path,
    ) -> str:
        if outcome.failure or not outcome.result_path.exists():
            error = f"{outcome.failure or 'no result'} (log: {outcome.log_path})"
            store.record_evaluation(
                run_id, provenance.now(), name, tname, "failed", error=error, eval_key=key
            )
            return f"failed: {error}"
        result = outcome.json()
        self._store_measurements(store, run_id, name, tname, key, result, plan, cached=False)
        if result["errors"]:
            return "partial: " + "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**result, "run_id": run_id}))
        tmp.replace(cache_file)
        return "ok"

    def _store_measurements(
        self,
        store: ResultsStore,
        run_id: str,
        name: str,
        tname: str,
        key: str,
        result: dict[str, Any],
        plan: Preflight,
        *,
        cached: bool,
    ) -> None:
        env = result["environment"]
        prov = {
            "hardware": env["hardware"],
            "python": env["python"],
            "libraries": env["libraries"],
            "base_revision": plan.base.revision or f"sha256:{plan.base.content_hash}",
            "dataset_fingerprint": result["dataset_fingerprint"],
            "seed": self.config.seed,
            "measured_at": result["measured_at"],
            "run_id": result.get("run_id", run_id),
        }
        rows = [{**m, "provenance": prov} for m in result["measurements"]]
        errors = result.get("errors") or {}
        store.record_evaluation(
            run_id,
            provenance.now(),
            name,
            tname,
            "ok" if not errors else "partial",
            error="; ".join(f"{k}: {v}" for k, v in errors.items()) or None,
            eval_key=key,
            cached=cached,
            measurements=rows,
        )


def run(
    config: RunConfig, plugins: Plugins | None = None, reporter: Reporter | None = None
) -> RunSummary:
    """Run ``config``: see :class:`Runner`."""
    return Runner(config, plugins, reporter).run()
