"""What a registered quantizer, exporter, device target or evaluator must provide.

Plugins subclass these. Subclasses are instantiated at registration, so their
modules must stay light: import the heavy library (torch, bitsandbytes, ...) inside
the method that needs it, never at module level.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from quantforge.errors import (
    MissingDependencyError,
    TargetUnavailableError,
    UnsupportedModelError,
    UsageError,
)
from quantforge.options import OptionSet, OptionValue

Better = Literal["higher", "lower", "none"]


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent package of a dotted name is missing
        return False


def format_family(fmt: str) -> str:
    """``"hf+bnb"`` -> ``"hf"``: the family names the runtime that runs a format."""
    return fmt.split("+", 1)[0]


def model_widths(config: Mapping[str, Any]) -> dict[str, int]:
    """Input widths of a decoder's linear layers, from ``config.json`` (for group-size checks):
    the hidden size, the MLP's intermediate size (and an MoE expert's), and the attention
    output's input (heads x head_dim, which differs from the hidden size in Gemma and Qwen3)."""
    text = config.get("text_config") or {}

    def get(key: str) -> Any:
        value = config.get(key)
        return text.get(key) if value is None else value

    widths = {}
    for key in ("hidden_size", "intermediate_size", "moe_intermediate_size"):
        value = get(key)
        if isinstance(value, int) and value > 0:
            widths[key] = value
    heads, head_dim = get("num_attention_heads"), get("head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int) and heads * head_dim > 0:
        widths["num_attention_heads x head_dim"] = heads * head_dim
    return widths


def expert_count(config: Mapping[str, Any]) -> int:
    """Experts per layer of a mixture-of-experts model (0 for a dense one), from
    ``config.json``. transformers 5 stores each layer's experts as fused 3-D weights, not as
    ``nn.Linear`` layers."""
    text = config.get("text_config") or {}
    for key in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
        value = config.get(key, text.get(key))
        if isinstance(value, int) and value > 1:
            return value
    return 0


def fitting_group_size(width: int, group_size: int) -> int | None:
    """The group size a weight whose rows are ``width`` wide gets under a default ``group_size``.

    ``group_size`` itself when it divides ``width`` (or is 0 or -1, a whole row); else the
    largest power of two below it, down to 16, that divides; else ``None``: the weight stays at
    higher precision, as llama.cpp does with rows its block does not divide.
    """
    if group_size <= 0 or width % group_size == 0:
        return group_size
    size = 1 << (group_size.bit_length() - 1)
    if size == group_size:
        size //= 2
    while size >= 16:
        if width % size == 0:
            return size
        size //= 2
    return None


def dividing_group_sizes(
    widths: Iterable[int], choices: Iterable[int] | None = None, limit: int = 1024
) -> list[int]:
    """Group sizes (multiples of 16, at most ``limit``, from ``choices`` when given) that divide
    every width."""
    values = list(widths)
    candidates = [c for c in choices if c > 0] if choices is not None else range(16, limit + 1, 16)
    return sorted(c for c in candidates if all(w % c == 0 for w in values))


def check_group_size(
    method: str,
    group_size: int,
    config: Mapping[str, Any],
    choices: Iterable[int] | None = None,
    *,
    falls_back: bool = False,
) -> None:
    """Refuse a group size that does not divide every linear layer's input width.

    The host calls it for a size the user wrote; a method whose default does not fall back
    (``falls_back`` false) calls it for its default too. The hint names sizes that divide,
    and, when ``falls_back``, that leaving the option unset falls back per weight.
    """
    if group_size <= 0:
        return
    widths = model_widths(config)
    for key, width in widths.items():
        if width % group_size:
            fits = dividing_group_sizes(widths.values(), choices)
            sizes = ", ".join(map(str, fits[:8])) or "none of its choices"
            unset = "; or leave group_size unset and the default falls back per weight"
            raise UsageError(
                f"{method}: group_size {group_size} does not divide the model's {key} ({width})",
                hint=f"sizes that divide every width: {sizes}" + (unset if falls_back else ""),
            )


def check_causal_lm(owner: str, config: Mapping[str, Any], action: str = "export") -> None:
    """Refuse, in preflight, a model whose ``architectures`` name no ``…ForCausalLM``: the
    exporters that trace a decoder with its KV cache take nothing else."""
    archs = [str(a) for a in config.get("architectures") or []]
    if not any(a.endswith("ForCausalLM") for a in archs):
        raise UnsupportedModelError(
            f"{owner}: {action}s decoder-only causal LMs (…ForCausalLM); this model is "
            f"{', '.join(archs) or 'of no declared architecture'}",
            hint=f"{action} a causal language model, or use another exporter",
        )


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible, checked without importing torch."""
    import glob
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


class Component(ABC):
    """Common declarations of every registered object.

    :cvar name: unique name within its kind (``"bnb"``, ``"cpu"``, ``"perplexity"``).
    :cvar description: one line for listings.
    :cvar options: the options it accepts, with presets.
    :cvar requires: import names of optional packages it needs (checked without importing).
    :cvar extra: the ``quantforge[...]`` pip extra that installs them.
    :cvar version: implementation version; part of every cache key, bump it when output changes.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[OptionSet] = OptionSet()
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None
    version: ClassVar[str] = "1"

    def missing_packages(self) -> list[str]:
        """Packages from ``requires`` that cannot be found (for ``a.b`` only ``a`` is imported)."""
        return [p for p in self.requires if not _findable(p)]

    def check_available(self) -> None:
        """Raise :class:`MissingDependencyError` naming the pip extra if a package is missing."""
        missing = self.missing_packages()
        if missing:
            raise MissingDependencyError(self.name, missing, self.extra)


@dataclass(frozen=True)
class CalibrationSet:
    """Tokenized calibration rows, as the worker gives them to a step."""

    samples: list[list[int]]
    fingerprint: str
    spec: Mapping[str, Any]

    def as_dicts(self) -> list[dict[str, list[int]]]:
        """The ``[{"input_ids": ..., "attention_mask": ...}]`` form most libraries take."""
        return [{"input_ids": row, "attention_mask": [1] * len(row)} for row in self.samples]


@dataclass
class StepContext:
    """What the host gives a quantize or export step.

    ``calibration`` holds the tokenized calibration rows when the step declared
    ``needs_calibration``. ``memo`` is shared by all steps of one worker process:
    a step that loads the base model can keep it there, so several variants of
    one base load it once.
    """

    seed: int = 0
    calibration: CalibrationSet | None = None
    memo: dict[Any, Any] = field(default_factory=dict)
    log: Callable[[str], None] = print
    base_model: Path | None = None  # the HF folder the chain started from
    # where the host reads progress from; set by the worker
    report: Callable[[int, int, str], None] = lambda done, total, unit: None

    def remember(self, key: Any, factory: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = factory()
        return self.memo[key]

    def progress(self, done: int, total: int, unit: str = "layers") -> None:
        """Tell the host how far a long step is (``12`` of ``30`` ``layers``). The host shows
        it with the elapsed time and an estimate of what is left, and passes it to ``--json``
        consumers. Cheap; call it as often as is natural."""
        self.report(done, total, unit)


@dataclass(frozen=True)
class Artifact:
    """A model folder on disk and what it holds.

    :ivar path: the folder.
    :ivar format: its format (``"hf"``, ``"hf+bnb"``, ``"gguf"``).
    :ivar manifest: what ``quantforge.json`` in the folder records (steps, options, base).
    """

    path: Path
    format: str
    manifest: Mapping[str, Any] = field(default_factory=dict)


class Step(Component):
    """What quantizers and exporters share: formats, and a preflight check of the model.

    :cvar architectures: ``model_type`` values it can process, or ``None`` for any.
    :cvar group_size_fallback: its default ``group_size`` falls back per weight on widths it
        does not divide (:func:`fitting_group_size`); a size the user writes never does.
    :cvar ends_process_on_error: its library may end the interpreter; it always runs in a
        worker process.
    :cvar card_library: the Hub's ``library_name`` for cards of the variants it makes last.
    """

    input_format: ClassVar[str] = "hf"
    output_format: ClassVar[str]
    needs_gpu: ClassVar[bool] = False  # a cluster executor runs it where a GPU is
    architectures: ClassVar[frozenset[str] | None] = None
    group_size_fallback: ClassVar[bool] = False
    # its library ends the interpreter on an error (GPTQModel's worker threads call os._exit):
    # even the inline executor runs it in a worker process of its own
    ends_process_on_error: ClassVar[bool] = False
    # the Hub's ``library_name`` (and a tag) for cards of the variants it makes last; ``None``:
    # the host's name for the format family
    card_library: ClassVar[str | None] = None

    def check_model(self, options: Mapping[str, OptionValue], config: Mapping[str, Any]) -> None:
        """Refuse, before any compute, a model this step cannot process with these options.

        ``config`` is the base model's ``config.json``. Raise
        :class:`~quantforge.errors.UnsupportedModelError` when the model's architecture or
        shapes are what this step cannot process (preflight then refuses the variants that
        need this step and runs the others), :class:`UsageError` when the options are wrong.
        The default checks :attr:`architectures`.
        """
        supported = self.supported_architectures()
        model_type = config.get("model_type")
        if supported is not None and model_type not in supported:
            raise UnsupportedModelError(
                f"{self.name} cannot process {model_type!r} models",
                hint="`quantforge methods --model PATH` lists the methods that can",
            )

    def check_files(self, options: Mapping[str, OptionValue], model: Path) -> None:
        """Refuse, before any compute, a model folder whose files this step cannot process
        (a tokenizer its converter does not know), raising
        :class:`~quantforge.errors.UnsupportedModelError`. Preflight calls it, after
        :meth:`check_model`, for the first step of a chain (it reads the base model's folder).
        The default checks nothing."""

    def supported_architectures(self) -> frozenset[str] | None:
        """``model_type`` values it can process (``None``: any); may read its library's tables."""
        return self.architectures

    def card_usage(self, repo_id: str, revision: str | None) -> str | None:
        """The Markdown of the "Usage" section of the model card of a variant this step made
        last: how its runtime loads ``repo_id`` (at ``revision``, a branch, when not ``None``)
        and runs it. ``None`` (the default) leaves the host's snippet for the format family.
        """
        return None


class Quantizer(Step):
    """Turns a model of ``input_format`` into a lower-precision ``output_format``.

    :cvar needs_calibration: the step reads ``context.calibration`` (tokenized rows).
    :cvar method: short method label for tables and cards (``"bitsandbytes"``).
    :cvar quantizes_experts: it quantizes mixture-of-experts weights (:func:`expert_count`).
    :cvar builds_to_budget: it has the options of :func:`quantforge.choosing.budget.
        budget_option_list` and builds a per-tensor mix to them (see :meth:`budget_options`).
    """

    needs_calibration: ClassVar[bool] = False
    builds_to_budget: ClassVar[bool] = False
    method: ClassVar[str] = ""
    # it quantizes the fused 3-D expert weights of mixture-of-experts models; a method that
    # replaces nn.Linear layers only sets False, and preflight refuses MoE models for it
    quantizes_experts: ClassVar[bool] = True

    def calibrates(self, options: Mapping[str, OptionValue]) -> bool:
        """Whether this step reads calibration data with these ``options`` (default:
        ``needs_calibration``; override when an option such as ``imatrix`` turns it on)."""
        return self.needs_calibration

    @abstractmethod
    def quantize(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        """Write the quantized model into the empty folder ``output``.

        The host moves ``output`` into place only after this returns, so a crash
        leaves nothing that looks complete.
        """

    def bits(self, options: Mapping[str, OptionValue]) -> float | None:
        """Nominal weight bits of the output, for tables and cards."""
        return None

    def budget_options(
        self, max_size_mb: float | None, bpw: float | None
    ) -> dict[str, OptionValue] | None:
        """Options that make this method build to a size budget by itself (a per-tensor mix
        of widths), given as the file's size in MB (10^6 bytes) or as bits per weight (one
        of them is set). ``quantforge search --max-size``/``--bpw`` then tries this method
        once with them, beside the uniform presets of every method. The default: the
        ``max_size_mb`` or ``bpw`` option when ``builds_to_budget``, else ``None`` (the
        method has no such option)."""
        if not self.builds_to_budget:
            return None
        return {"max_size_mb": max_size_mb} if max_size_mb is not None else {"bpw": bpw or 0.0}

    def load_model(self, artifact: Artifact) -> Any | None:
        """Load this quantizer's output as a torch module, for formats a plain
        ``from_pretrained`` cannot read. Return ``None`` to let the runtime load it."""
        return None


class Exporter(Step):
    """Turns a model of ``input_format`` into another format at the same precision."""

    @abstractmethod
    def export(
        self,
        source: Artifact,
        options: Mapping[str, OptionValue],
        output: Path,
        context: StepContext,
    ) -> None:
        """Write the exported model into the empty folder ``output``."""


@dataclass(frozen=True)
class GenerationTiming:
    """Timing of one greedy generation: a prefill over the prompt, then decode steps."""

    prompt_tokens: int
    new_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @classmethod
    def measure(
        cls,
        prompt_tokens: int,
        max_new_tokens: int,
        prefill: Callable[[], Any],
        step: Callable[[Any], Any],
        sync: Callable[[], None] = lambda: None,
    ) -> GenerationTiming:
        """Time ``prefill()`` (the prompt, giving the first token) and then
        ``max_new_tokens - 1`` calls of ``step(token)`` (one decode step each, giving the
        next token). ``sync`` waits for queued device work before each clock read."""
        import time

        start = time.perf_counter()
        token = prefill()
        sync()
        prefill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(max_new_tokens - 1):
            token = step(token)
        sync()
        return cls(
            prompt_tokens=prompt_tokens,
            new_tokens=max_new_tokens - 1,
            prefill_seconds=prefill_seconds,
            decode_seconds=time.perf_counter() - start,
        )


class Decoder(ABC):
    """One cached decoding pass of a runtime, driven a token at a time by the caller.

    Greedy measurement (:meth:`Runtime.generate`) and sampled streaming (the Space) both
    drive it: feed the prompt once, then each chosen token.
    """

    @abstractmethod
    def feed(self, tokens: Sequence[int]) -> Any:
        """Run ``tokens`` through the model after everything fed before (the cache keeps
        that); return the next-token logits of the last position, a 1-D float32 numpy
        array ``[vocab]``."""


class RecomputingDecoder(Decoder):
    """The fallback for runtimes with no cache of their own: every call scores the whole
    sequence again with :meth:`Runtime.logits` (correct, quadratic in length)."""

    def __init__(self, runtime: Runtime, max_length: int) -> None:
        self.runtime = runtime
        self.max_length = max_length
        self.tokens: list[int] = []

    def feed(self, tokens: Sequence[int]) -> Any:
        import numpy as np

        self.tokens.extend(tokens)
        if len(self.tokens) > self.max_length:
            raise UsageError(f"{len(self.tokens)} tokens exceed this decoding's {self.max_length}")
        logits = self.runtime.logits(self.tokens)
        return np.asarray(logits[-1], dtype=np.float32)


class Runtime(ABC):
    """A loaded variant that a target can run.

    :cvar capabilities: what evaluators may ask of it: ``"logits"``, ``"generate"``.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset({"logits", "generate"})

    @abstractmethod
    def logits(self, input_ids: Sequence[int]) -> Any:
        """Next-token logits for every position: a float32 tensor ``[len(input_ids), vocab]``."""

    def decoder(self, max_length: int) -> Decoder:
        """Start a cached decoding of at most ``max_length`` tokens (prompt and new ones).

        Override with the runtime's own KV cache; the default recomputes every step."""
        return RecomputingDecoder(self, max_length)

    def generate(self, input_ids: Sequence[int], max_new_tokens: int) -> GenerationTiming:
        """Greedy generation through :meth:`decoder`, timed. A runtime with a faster native
        greedy loop may override it."""
        import numpy as np

        ids = list(input_ids)
        decoding = self.decoder(len(ids) + max_new_tokens)
        return GenerationTiming.measure(
            len(ids),
            max_new_tokens,
            prefill=lambda: int(np.argmax(decoding.feed(ids))),
            step=lambda token: int(np.argmax(decoding.feed([token]))),
        )

    def set_threads(self, threads: int) -> bool:
        """Use ``threads`` threads from now on, and say whether it could.

        The worker calls it when a measurement's timed part, which ran on every core, is
        over and the other evaluators run beside other jobs on fewer cores. Return
        ``False`` (the default) where the runtime fixes its threads when it is loaded: the
        worker then loads the variant again. A PyTorch runtime need do nothing (the worker
        resizes torch's pool itself) but return ``True``."""
        return False

    def close(self) -> None:  # noqa: B027 - optional to override
        """Free what the runtime holds."""


class Target(Component):
    """A device that runs variants: measured here, or a profile that estimates.

    :cvar formats: format families it runs (``{"hf"}``, ``{"gguf"}``).
    :cvar measured: True when it runs variants on this machine and measures them.
    """

    formats: ClassVar[frozenset[str]]
    measured: ClassVar[bool] = True

    def runs(self, fmt: str) -> bool:
        return format_family(fmt) in self.formats

    def unavailable_reason(self) -> str | None:
        """Why variants cannot run on this target here, or ``None`` when they can."""
        missing = self.missing_packages()
        return (
            f"needs {', '.join(missing)} (pip install 'quantforge[{self.extra}]')"
            if missing
            else None
        )

    def check_available(self) -> None:
        """Raise when a package is missing or :meth:`unavailable_reason` gives a reason."""
        super().check_available()
        reason = self.unavailable_reason()
        if reason:
            raise TargetUnavailableError(self.name, reason)

    def hardware(self) -> str:
        """One line describing the hardware, for provenance."""
        return self.name

    def resources(self) -> dict[str, float]:
        """What a measurement on this target asks a cluster executor for, beyond a CPU and
        memory: ``{"GPU": 1}`` for a GPU target, or a custom resource such as ``{"rpi5": 1}``
        that only the nodes with the device offer."""
        return {}

    @abstractmethod
    def load(
        self,
        artifact: Artifact,
        options: Mapping[str, OptionValue],
        loader: Callable[[Artifact], Any | None],
    ) -> Runtime:
        """Load ``artifact`` with this target's ``options``. ``loader`` is the producing
        quantizer's :meth:`Quantizer.load_model` (returns ``None`` for standard formats)."""


@dataclass(frozen=True)
class Measurement:
    """One measured number.

    :ivar metric: name (``"perplexity"``); one evaluator may return several.
    :ivar unit: ``"MB"``, ``"tokens/s"``, ``""`` for ratios.
    :ivar better: which direction is better, for deltas and ranking.
    :ivar details: extra facts kept beside the value (counts, window, stderr).
    """

    metric: str
    value: float
    unit: str
    better: Better
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class EvalContext:
    """What the host gives an evaluator.

    :ivar token_ids: the evaluation text tokenized once with the base tokenizer;
        every variant is measured on these same ids.
    :ivar dataset_fingerprint: sha256 over the text and tokenizer, for provenance.
    :ivar reference_dir: a folder holding what :meth:`Evaluator.prepare_reference`
        wrote while the base model ran (shared by all variants).
    :ivar memo: shared by the evaluators of one variant (e.g. its log-probs, computed once).
    :ivar baseline_rss_bytes: resident memory of the worker before it loaded the variant.
    :ivar base_model: the base model's folder, whose tokenizer every variant shares (task
        evaluators format prompts and read answers with it).
    :ivar memory_bandwidth: this machine's measured memory-read bandwidth in bytes/s (for
        a roofline), given to measurements with a timing-sensitive evaluator; else None.
    :ivar pause: call it between units of long work (scoring windows, examples), never
        inside a timed part. Where jobs run side by side the host may hold this measurement
        there while another job's timed part runs alone, and it may go on with more or
        fewer cores (the runtime is resized). Cheap: at most one real pause per half
        second; a no-op where nothing runs beside.
    """

    token_ids: Sequence[int]
    dataset_fingerprint: str
    reference_dir: Path | None = None
    seed: int = 0
    baseline_rss_bytes: int = 0
    base_model: Path | None = None
    memory_bandwidth: float | None = None
    memo: dict[Any, Any] = field(default_factory=dict)
    pause: Callable[[], None] = field(default=lambda: None, compare=False)

    def remember(self, key: Any, factory: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = factory()
        return self.memo[key]


class Evaluator(Component):
    """Measures a variant.

    :cvar needs_runtime: False for evaluators that only read files (size on disk).
    :cvar needs_reference: :meth:`prepare_reference` runs once on the base model first.
    :cvar order: evaluators of one variant run in ascending order (memory after speed).
    :cvar by_default: runs when a run names no evaluators; False for those that need
        inputs of their own or long generation (task evaluators), which are asked for.
    :cvar timing_sensitive: its figures change when other work shares the machine (speed,
        peak memory): a measurement that includes it runs with no other job beside it, and
        its measurements say so (``details["ran_alone"]``).
    """

    needs_runtime: ClassVar[bool] = True
    by_default: ClassVar[bool] = True
    timing_sensitive: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    order: ClassVar[int] = 50

    @abstractmethod
    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        """Measure ``artifact`` (loaded as ``runtime`` unless ``needs_runtime`` is False)."""

    def check_inputs(self, options: Mapping[str, OptionValue]) -> str:
        """Check what ``options`` name (case files, task names) before any compute, raising
        :class:`~quantforge.errors.UsageError` with what is wrong; return a fingerprint of
        those inputs (their content), which joins the cache keys of this evaluator's
        measurements so that an edited case file is measured again. ``""``: no inputs."""
        return ""

    def prepare_reference(
        self,
        runtime: Runtime,
        options: Mapping[str, OptionValue],
        context: EvalContext,
        out_dir: Path,
    ) -> None:
        """Write what later comparisons need from the base model into ``out_dir``."""
        raise NotImplementedError(
            f"{self.name} declares needs_reference but has no prepare_reference"
        )
