"""Accuracy-budget search: the smallest variant that meets the user's constraints on a target.

Candidates are every preset of every installed quantizer (and every exporter on its own)
whose format the target runs and some local target can measure. Before any compute a
candidate is pruned when even its smallest possible size (every weight at its nominal
bits) cannot fit the device, or when the device's roofline bound at that size is below
the decode floor. The rest are tried by bisection over their estimated size: a candidate
that meets the constraints rules out every one whose smallest possible size is not below
its measured size; one that loses on quality rules out the same method at fewer bits; one that does not fit or is too slow rules out every
candidate at least as large. Every trial is a normal run into the same results store.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantforge.errors import QuantforgeError, UsageError
from quantforge.interfaces import Quantizer, Target, format_family
from quantforge.running.constraints import Constraints
from quantforge.running.planner import VariantSpec, parse_variant

SEARCH_FILE = "search.json"


@dataclass
class Candidate:
    """One variant the search may try, and what became of it."""

    spec: str
    method: str
    preset: str | None
    format: str
    bits: float | None
    calibrates: bool
    est_mb: float  # smallest possible size: every weight at the nominal bits
    state: str = "pending"  # pending | pruned | passed | failed | untried
    reason: str = ""
    measured: dict[str, float] = field(default_factory=dict)
    measured_on: str | None = None

    @property
    def name(self) -> str:
        return parse_variant(self.spec).name

    @property
    def size_mb(self) -> float:
        return self.measured.get("size_mb", self.est_mb)


@dataclass
class SearchResult:
    constraints: Constraints
    candidates: list[Candidate]
    winner: Candidate | None
    runner_up: Candidate | None
    out: Path
    budget_spent: bool = False

    @property
    def trials(self) -> list[Candidate]:
        return [c for c in self.candidates if c.state in ("passed", "failed")]

    def closest(self) -> Candidate | None:
        """The tried candidate that missed the constraints by the least."""
        tried = [c for c in self.trials if c.measured]
        return min(tried, key=lambda c: _miss(c, self.constraints), default=None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "constraints": asdict(self.constraints),
            "winner": self.winner.spec if self.winner else None,
            "runner_up": self.runner_up.spec if self.runner_up else None,
            "budget_spent": self.budget_spent,
            "candidates": [asdict(c) for c in self.candidates],
        }


def _miss(c: Candidate, k: Constraints) -> float:
    """How far a trial is from the constraints, each as a ratio over its bound (0: met)."""
    miss = 0.0
    kl, inc, speed = c.measured.get("kl"), c.measured.get("ppl_increase"), c.measured.get("tps")
    if k.max_kld is not None and kl is not None:
        miss += max(0.0, kl / k.max_kld - 1)
    if k.max_ppl_increase is not None and inc is not None:
        miss += max(0.0, inc - k.max_ppl_increase) / max(k.max_ppl_increase, 1e-3)
    if k.min_decode_tps is not None and speed is not None:
        miss += max(0.0, 1 - speed / k.min_decode_tps)
    if c.measured.get("fits", 1.0) < 1:
        miss += 1.0
    return miss


def measured_values(
    facts: Any, variant: str, measurer: str, device: str, device_measured: bool
) -> dict[str, float]:
    """What the constraints read, from the results store: size, KL and perplexity on the
    target that measured the variant, fit and decode speed on ``device`` (an estimate on a
    device profile), and the perplexity increase over the base's."""
    value = facts.value
    found = {
        "size_mb": value(variant, measurer, "size_mb"),
        "kl": value(variant, measurer, "kl_divergence"),
        "ppl": value(variant, measurer, "perplexity"),
        "fits": value(variant, device, "fits"),
        "tps": value(variant, device, "decode_tps" if device_measured else "est_decode_tps"),
    }
    base_ppl = next(
        (
            v
            for t in [measurer, *facts.targets("measured")]
            if (v := value("base", t, "perplexity"))
        ),
        None,
    )
    if found["ppl"] is not None and base_ppl:
        found["ppl_increase"] = found["ppl"] / base_ppl - 1
    return {k: v for k, v in found.items() if v is not None}


def violations(
    k: Constraints,
    m: Mapping[str, float],
    device: str,
    device_measured: bool,
    size_cap_mb: float | None = None,
) -> list[str]:
    """Each constraint ``m`` misses, in words (empty: it meets them all); ``size_cap_mb`` is
    the size budget in MB (``--max-size``, or ``--bpw`` over the base's parameters)."""
    out = []
    if size_cap_mb is not None:
        if "size_mb" not in m:
            out.append("size not measured")
        elif m["size_mb"] > size_cap_mb:
            out.append(f"{m['size_mb']:.1f} MB, above the {size_cap_mb:.1f} MB budget")
    if k.max_kld is not None:
        if "kl" not in m:
            out.append("KL divergence not measured")
        elif m["kl"] > k.max_kld:
            out.append(f"KL {m['kl']:.4g} above {k.max_kld:g}")
    if k.max_ppl_increase is not None:
        if "ppl_increase" not in m:
            out.append("perplexity not measured")
        elif m["ppl_increase"] > k.max_ppl_increase:
            out.append(f"perplexity +{m['ppl_increase']:.2%} above +{k.max_ppl_increase:.1%}")
    if m.get("fits", 1.0) < 1:
        out.append(f"does not fit {device}")
    if k.min_decode_tps is not None:
        if "tps" not in m:
            out.append(f"decode speed not measured on {device}")
        elif m["tps"] < k.min_decode_tps:
            kind = "measured" if device_measured else "estimate"
            out.append(f"decode {m['tps']:.1f} tok/s ({kind}) below {k.min_decode_tps:g}")
    return out


def figures_text(m: Mapping[str, float]) -> str:
    """``3.6 MB, KL 0.0002, ppl +0.1%, fits, ~2205.0 tok/s``: the figures a constraint reads.
    Speeds next to a fit check come from a device profile and are marked ``~`` (estimates)."""
    parts = []
    if "size_mb" in m:
        parts.append(f"{m['size_mb']:.1f} MB")
    if "kl" in m:
        parts.append(f"KL {m['kl']:.4g}")
    if "ppl_increase" in m:
        parts.append(f"ppl {m['ppl_increase']:+.2%}")
    if "fits" in m:
        parts.append("fits" if m["fits"] >= 1 else "does not fit")
    if "tps" in m:
        parts.append(f"{'~' if 'fits' in m else ''}{m['tps']:.1f} tok/s")
    return ", ".join(parts)


def measuring_target(plugins: Any, fmt: str) -> Target | None:
    """A target on this machine that measures ``fmt`` variants (cpu for hf, llama.cpp for gguf)."""
    found: list[Target] = [
        t
        for t in plugins.targets
        if t.measured and t.runs(fmt) and t.name != "cuda" and t.unavailable_reason() is None
    ]
    return found[0] if found else None


def candidates(
    plugins: Any,
    device: Target,
    base_params: float,
    model_config: Mapping[str, Any],
    methods: Sequence[str] = (),
    budget: Constraints | None = None,
) -> list[Candidate]:
    """Every preset of every installed quantizer (and each exporter alone), with the ones the
    target or this machine cannot run already pruned and why. Under a size ``budget``, a
    quantizer that builds to a budget by itself (:meth:`Quantizer.budget_options`) is one
    candidate with those options instead."""
    found = []
    for obj in plugins.methods:
        if methods and obj.name not in methods:
            continue
        presets: list[str | None] = list(obj.options.presets) or [None]
        fitted = (
            obj.budget_options(budget.max_size_mb, budget.bpw)
            if budget is not None and budget.size_budget and isinstance(obj, Quantizer)
            else None
        )
        if fitted is not None:
            presets = [None]
        for preset in presets:
            written = ",".join(
                f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in (fitted or {}).items()
            )
            spec = obj.name + (f":{preset}" if preset else "") + (f",{written}" if written else "")
            options = obj.options.resolve(obj.name, dict(fitted or {}), preset)
            bits = obj.bits(options) if isinstance(obj, Quantizer) else None
            calibrates = isinstance(obj, Quantizer) and obj.calibrates(options)
            est = base_params * (bits or 16) / 8 / 1e6
            if fitted is not None and budget is not None and budget.max_size_mb is not None:
                est = budget.max_size_mb  # it builds to the budget
            c = Candidate(
                spec,
                obj.name,
                preset,
                obj.output_format,
                bits,
                calibrates,
                round(est, 3),
            )
            missing = obj.missing_packages()
            refused = _refusal(obj, options, model_config)
            if missing:
                c.state, c.reason = "pruned", f"not installed ({', '.join(missing)})"
            elif refused:
                c.state, c.reason = "pruned", refused
            elif not device.runs(obj.output_format):
                c.state, c.reason = (
                    "pruned",
                    f"{device.name} does not run {format_family(obj.output_format)} models",
                )
            elif measuring_target(plugins, obj.output_format) is None:
                c.state, c.reason = (
                    "pruned",
                    f"no target on this machine measures {obj.output_format} models",
                )
            found.append(c)
    return found


def _refusal(obj: Any, options: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Why the method refuses this model with these options before any compute, if it does."""
    try:
        obj.check_available()
        obj.check_model(options, config)
    except QuantforgeError as exc:
        return str(exc)
    return None


class Search:
    """One search run: candidates, trials into ``out``, and the answer."""

    def __init__(
        self,
        model: str,
        constraints: Constraints,
        out: Path,
        *,
        methods: Sequence[str] = (),
        budget_minutes: float | None = None,
        calibration: Any = None,
        eval_text: Path | None = None,
        revision: str | None = None,
        allow_pickle: bool = False,
        plugins: Any = None,
        log: Callable[[str], None] = print,
        reporter: Any = None,
    ) -> None:
        from quantforge.plugins.manager import load_plugins

        constraints.check()
        if budget_minutes is not None and budget_minutes <= 0:
            raise UsageError(f"--budget-minutes must be above 0, not {budget_minutes:g}")
        self.model = model
        self.constraints = constraints
        self.out = out
        self.methods = list(methods)
        self.budget_minutes = budget_minutes
        self.calibration = calibration
        self.eval_text = eval_text
        self.revision = revision
        self.allow_pickle = allow_pickle
        self.plugins = plugins or load_plugins()
        self.log = log
        self.reporter = reporter
        self.device: Target = self.plugins.targets.get(constraints.target)
        self.size_cap_mb: float | None = None  # the size budget in MB, once the base is read
        for method in self.methods:
            self.plugins.methods.get(method)  # unknown names fail with a did-you-mean

    # -- before any compute ------------------------------------------------------

    def _base(self) -> tuple[Path, float, dict[str, Any]]:
        from quantforge.model.source import resolve_model
        from quantforge.running.runner import default_cache_dir

        base = resolve_model(
            self.model, self.revision, default_cache_dir(), allow_pickle=self.allow_pickle
        )
        config = json.loads((base.path / "config.json").read_text(encoding="utf-8"))
        from quantforge.model.artifacts import folder_bytes

        bits = 32 if str(config.get("torch_dtype") or config.get("dtype")) == "float32" else 16
        params = folder_bytes(base.path, weights_only=True) * 8 / bits
        return base.path, params, config

    def _prune_by_device(self, found: list[Candidate], config: dict[str, Any]) -> int:
        """Prune what cannot fit, or cannot reach the decode floor, at its smallest size."""
        from quantforge.devices.footprint import footprint_from_config
        from quantforge.devices.profiles import DeviceProfile

        if not isinstance(self.device, DeviceProfile):
            return self.constraints.context or 0
        base = footprint_from_config("base", "hf", 0, config)
        context = self.constraints.context or base.default_context()
        if base.max_context and context > base.max_context:
            raise UsageError(
                f"--context {context} is longer than the model supports ({base.max_context})",
                hint=f"pass --context {base.max_context} or less",
            )
        for c in found:
            if c.state != "pending":
                continue
            footprint = footprint_from_config(
                c.spec, format_family(c.format), int(c.est_mb * 1e6), config
            )
            report = self.device.fit(footprint, context)
            if not report.fits:
                c.state = "pruned"
                c.reason = (
                    f"cannot fit {self.device.name} even at its smallest ({c.est_mb:.1f} MB): "
                    f"needs {report.needed_bytes / 2**20:.0f} of {report.available_bytes / 2**20:.0f} MiB"
                )
            elif (
                self.constraints.min_decode_tps is not None
                and report.decode_tps < self.constraints.min_decode_tps
            ):
                c.state = "pruned"
                c.reason = (
                    f"{self.device.name} cannot decode it faster than ~{report.decode_tps:.1f} "
                    f"tok/s (estimate) even at its smallest"
                )
        return context

    # -- trials ----------------------------------------------------------------------

    def _trial(self, c: Candidate, context: int) -> None:
        from quantforge.running.recipe import RunConfig
        from quantforge.running.runner import run
        from quantforge.store.facts import RunFacts

        measurer = measuring_target(self.plugins, c.format)
        assert measurer is not None
        targets: dict[str, dict[str, Any]] = {measurer.name: {}}
        if "cpu" not in targets and measuring_target(self.plugins, "hf") is not None:
            targets["cpu"] = {}  # the base's perplexity is measured here
        targets[self.device.name] = {"context": context} if context else {}
        spec = parse_variant(c.spec)
        config = RunConfig(
            model=self.model,
            revision=self.revision,
            variants=[VariantSpec("base"), spec],
            output=self.out,
            targets=targets,
            eval_text=self.eval_text,
            calibration=self.calibration if c.calibrates else None,
            allow_pickle=self.allow_pickle,
        )
        try:
            summary = run(config, self.plugins, self.reporter)
        except QuantforgeError as exc:
            c.state, c.reason = "failed", f"could not be built: {exc}"
            return
        if summary.variants.get(spec.name) != "ok":
            c.state, c.reason = "failed", f"could not be built: {summary.variants.get(spec.name)}"
            return
        facts = RunFacts.load(self.out)
        c.measured_on = measurer.name
        device, on_device = self.device.name, self.device.measured
        c.measured = measured_values(facts, spec.name, measurer.name, device, on_device)
        lost = violations(self.constraints, c.measured, device, on_device, self.size_cap_mb)
        c.state, c.reason = (
            ("failed", "; ".join(lost)) if lost else ("passed", "meets every constraint")
        )

    def _quality_lost(self, c: Candidate) -> bool:
        return any(w in c.reason for w in ("KL", "perplexity"))

    def run(self) -> SearchResult:
        started = time.monotonic()
        base_path, params, config = self._base()
        found = candidates(
            self.plugins, self.device, params, config, self.methods, self.constraints
        )
        if not found:
            raise UsageError("no installed method to search", hint="see `quantforge methods`")
        context = self._prune_by_device(found, config)
        k = self.constraints
        if k.size_budget:
            cap = k.max_size_mb if k.max_size_mb is not None else (k.bpw or 0) * params / 8 / 1e6
            self.size_cap_mb = cap
            return self._best_within_size(found, context, started)
        pending = sorted(
            (c for c in found if c.state == "pending"),
            key=lambda c: (c.est_mb, c.calibrates, c.spec),
        )
        self.log(
            f"search: {Path(self.model).name} for {self.device.name}"
            + (f" (context {context})" if context else "")
            + f": {self.constraints.describe()}"
        )
        self.log(f"{len(found)} candidates; {len(found) - len(pending)} pruned before any compute")
        winner: Candidate | None = None
        budget_spent = False
        trials = 0
        while pending:
            if (
                self.budget_minutes is not None
                and trials  # the first trial always runs
                and time.monotonic() - started > self.budget_minutes * 60
            ):
                budget_spent = True
                for c in pending:
                    c.state, c.reason = "untried", "the --budget-minutes ran out first"
                break
            c = pending[len(pending) // 2]
            pending.remove(c)
            self._trial(c, context)
            trials += 1
            self.log(f"trial {trials}: {c.spec:<24} {c.state}: {c.reason}")
            if c.state == "passed":
                if winner is None or c.size_mb < winner.size_mb:
                    winner = c
                # an estimate is a lower bound: at least that large, so never smaller than c
                for o in [o for o in pending if o.est_mb >= c.size_mb]:
                    o.state = "pruned"
                    o.reason = (
                        f"at least {o.est_mb:.1f} MB, not smaller than {c.spec}, which passed"
                    )
                    pending.remove(o)
            elif c.measured and self._quality_lost(c):
                for o in [
                    o
                    for o in pending
                    if o.method == c.method
                    and (o.bits or 99) < (c.bits or 99)
                    and o.est_mb <= c.est_mb
                ]:
                    o.state = "pruned"
                    o.reason = f"fewer bits of {c.method} than {c.spec}, which lost on quality"
                    pending.remove(o)
            elif c.measured:  # lost on fit or speed: every larger one loses too
                for o in [o for o in pending if o.est_mb >= c.size_mb]:
                    o.state, o.reason = "pruned", f"larger than {c.spec}, which was too big or slow"
                    pending.remove(o)
        result = SearchResult(self.constraints, found, winner, None, self.out, budget_spent)
        result.runner_up = runner_up(result)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / SEARCH_FILE).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        return result

    def _best_within_size(
        self, found: list[Candidate], context: int, started: float
    ) -> SearchResult:
        """Under a size budget: the lowest KL among variants within it. Each method's
        presets are tried from the largest that may fit down, until one fits (its smaller
        presets have fewer bits and lose to it); a method that builds to the budget by
        itself is tried once."""
        cap = self.size_cap_mb
        assert cap is not None
        for c in found:
            if c.state == "pending" and c.est_mb > cap:
                c.state = "pruned"
                c.reason = f"at least {c.est_mb:.1f} MB, above the {cap:.1f} MB budget"
        pending = sorted(
            (c for c in found if c.state == "pending"),
            key=lambda c: (-c.est_mb, c.calibrates, c.spec),
        )
        self.log(
            f"search: {Path(self.model).name} for {self.device.name}: the lowest KL within "
            f"{cap:.1f} MB ({self.constraints.describe()})"
        )
        self.log(f"{len(found)} candidates; {len(found) - len(pending)} pruned before any compute")
        budget_spent = False
        trials = 0
        while pending:
            if (
                self.budget_minutes is not None
                and trials
                and time.monotonic() - started > self.budget_minutes * 60
            ):
                budget_spent = True
                for c in pending:
                    c.state, c.reason = "untried", "the --budget-minutes ran out first"
                break
            c = pending.pop(0)
            self._trial(c, context)
            trials += 1
            self.log(f"trial {trials}: {c.spec:<24} {c.state}: {c.reason}")
            if c.state == "passed":
                for o in [o for o in pending if o.method == c.method and o.est_mb <= c.est_mb]:
                    o.state = "pruned"
                    o.reason = f"fewer bits of {c.method} than {c.spec}, which fits"
                    pending.remove(o)
        passed = sorted(
            (c for c in found if c.state == "passed" and "kl" in c.measured),
            key=lambda c: (c.measured["kl"], c.size_mb),
        )
        winner = passed[0] if passed else None
        for c in passed[1:]:
            c.reason = f"KL {c.measured['kl']:.4g}, above {winner.spec}'s" if winner else c.reason
        result = SearchResult(
            self.constraints,
            found,
            winner,
            passed[1] if len(passed) > 1 else None,
            self.out,
            budget_spent,
        )
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / SEARCH_FILE).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
        return result


def runner_up(result: SearchResult) -> Candidate | None:
    """The winner's neighbour on the size-vs-KL Pareto front of the trials: the next
    larger trial with lower KL, else the next smaller one (which lost)."""
    trials = sorted((c for c in result.trials if "kl" in c.measured), key=lambda c: c.size_mb)
    front: list[Candidate] = []
    for c in trials:
        if not front or c.measured["kl"] < front[-1].measured["kl"]:
            front.append(c)
    if result.winner is None or result.winner not in front:
        return None
    i = front.index(result.winner)
    if i + 1 < len(front):
        return front[i + 1]
    return front[i - 1] if i > 0 else None
