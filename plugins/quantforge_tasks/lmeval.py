"""The lm-evaluation-harness bridge: lm-eval's tasks scored through quantforge's runtimes.

:class:`RuntimeLM` is an lm-eval language model over any :class:`~quantforge.Runtime`, so
a variant is evaluated by the same runtime that measured its speed and perplexity: the
transformers model itself on ``cpu``/``cuda``, llama.cpp for GGUF, ONNX Runtime, OpenVINO.
Log-likelihoods come from the runtime's logits, generations from its decoder.

Task names are checked before any model loads: an unknown one gets a did-you-mean, and
one whose data lives on the Hub is refused while offline unless the datasets cache holds
it. Local tasks are YAML files in ``include_path`` that read local files
(``dataset_path: json`` with ``dataset_kwargs: {data_files: ...}``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from quantforge import Artifact, EvalContext, Evaluator, Measurement, Option, OptionSet, Runtime
from quantforge.errors import UsageError
from quantforge.options import OptionValue

LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}
# metrics whose per-sample scores are 0 or 1, so value × samples is a count
COUNTABLE = {"acc", "acc_norm", "exact_match", "em", "mc1", "mc2_binary"}


def _offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(
        os.environ.get(v, "").strip().lower() in truthy
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def task_names(options: Mapping[str, OptionValue]) -> list[str]:
    names = [t for t in re.split(r"[,+\s]+", str(options["tasks"])) if t]
    if not names:
        raise UsageError(
            "evaluator lmeval needs tasks",
            hint="e.g. --evaluator lmeval,tasks=arc_easy+hellaswag (or tasks=mine,include_path=DIR)",
        )
    return names


def task_manager(options: Mapping[str, OptionValue], names: Sequence[str]) -> Any:
    """lm-eval's task index: only ``include_path`` when it names every task (indexing the
    thousands of built-in tasks takes seconds), else with the built-in tasks too."""
    import difflib

    from lm_eval.tasks import TaskManager

    include = str(options["include_path"]).strip()
    if include:
        folder = Path(include).expanduser()
        if not folder.is_dir():
            raise UsageError(f"include_path {include!r} is not a folder of lm-eval task YAMLs")
        local = TaskManager(include_path=str(folder), include_defaults=False)
        missing = [n for n in names if n not in local.all_tasks]
        if not missing:
            return local
        for name in missing:  # a typo of one of your own tasks: no need to index lm-eval's
            close = difflib.get_close_matches(name, local.all_tasks, n=3, cutoff=0.75)
            if close:
                raise UsageError(
                    f"lm-eval has no task {name!r} (in {folder} or built in)",
                    hint=f"did you mean {', '.join(close)}?",
                )
        return TaskManager(include_path=str(folder))
    return TaskManager()


def _dataset_is_local(cfg: Mapping[str, Any]) -> bool:
    path = str(cfg.get("dataset_path", ""))
    if path in LOCAL_BUILDERS:
        return True
    return bool(path) and Path(path).expanduser().exists()


def _data_files(cfg: Mapping[str, Any]) -> list[Path]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or []
    if isinstance(files, str):
        files = [files]
    elif isinstance(files, Mapping):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return [Path(str(f)).expanduser() for f in files]


def check_tasks(options: Mapping[str, OptionValue]) -> tuple[Any, list[str], str]:
    """``(task manager, task names, fingerprint)``; refuses unknown tasks (did-you-mean),
    missing local data files, and Hub data while offline and not cached."""
    import difflib

    names = task_names(options)
    manager = task_manager(options, names)
    digest = hashlib.sha256()
    for name in names:
        entry = manager.task_index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "see `lm-eval ls tasks`"
            raise UsageError(f"lm-eval has no task {name!r}", hint=hint)
        cfg = dict(entry.cfg or {})
        if entry.yaml_path is not None:
            digest.update(Path(entry.yaml_path).read_bytes())
        for path in _data_files(cfg):
            if not path.is_file():
                raise UsageError(
                    f"lm-eval task {name!r} reads {str(path)!r}, which does not exist",
                    hint="fix data_files in its YAML (paths are relative to where you run)",
                )
            digest.update(path.read_bytes())
        if cfg.get("dataset_path") and not _dataset_is_local(cfg) and _offline():
            _check_cached(name, cfg)
        digest.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    return manager, names, digest.hexdigest()[:16]


def _check_cached(name: str, cfg: Mapping[str, Any]) -> None:
    import datasets

    try:
        datasets.load_dataset_builder(str(cfg["dataset_path"]), cfg.get("dataset_name"))
    except Exception:  # noqa: BLE001 - any failure here means: not available offline
        raise UsageError(
            f"lm-eval task {name!r} reads {cfg['dataset_path']!r} from the Hugging Face Hub, "
            "this machine is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) and the datasets "
            "cache does not hold it",
            hint="go online once to cache it, or use a task whose YAML reads local files "
            "(dataset_path: json, dataset_kwargs.data_files) with include_path=DIR",
        ) from None


def runtime_lm(runtime: Runtime, tokenizer: Any, max_length: int) -> Any:
    """An lm-eval ``LM`` over ``runtime`` (built here so lm-eval is imported only when
    an lm-eval evaluation runs)."""
    import numpy as np
    from lm_eval.api.model import TemplateLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    from quantforge.space.generation import Sampling, stop_tokens, stream

    def log_softmax(rows: Any) -> Any:
        rows = np.asarray(rows, dtype=np.float64)
        shifted = rows - rows.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

    class RuntimeLM(TemplateLM):  # type: ignore[misc]
        """lm-eval's model interface, answered by a quantforge runtime."""

        def __init__(self) -> None:
            super().__init__()
            self.tokenizer = tokenizer
            self.max_length = max_length
            self.adds_bos = bool(
                tokenizer.bos_token_id is not None
                and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
            )

        @property
        def eot_token_id(self) -> int:
            return int(tokenizer.eos_token_id)

        @property
        def prefix_token_id(self) -> int:
            bos = tokenizer.bos_token_id
            return int(bos if bos is not None else tokenizer.eos_token_id)

        def tok_encode(
            self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
        ) -> list[int]:
            if add_special_tokens is None:
                bos = tokenizer.bos_token
                add_special_tokens = self.adds_bos and not (bos and string.startswith(bos))
            return list(tokenizer.encode(string, add_special_tokens=add_special_tokens))

        def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
            if not continuation:  # the context's tokens swallowed it: nothing to score
                return 0.0, True
            whole = (context + continuation)[-(self.max_length + 1) :]
            logits = runtime.logits(whole[:-1])
            rows = log_softmax(np.asarray(logits)[-len(continuation) :])
            picked = rows[np.arange(len(continuation)), continuation]
            greedy = bool((rows.argmax(axis=-1) == np.asarray(continuation)).all())
            return float(picked.sum()), greedy

        def _loglikelihood_tokens(
            self, requests: list[tuple[Any, list[int], list[int]]], **kwargs: Any
        ) -> list[tuple[float, bool]]:
            out = []
            for key, context, continuation in requests:
                answer = self._score(context, continuation)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
                out.append(answer)
            return out

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> list[float]:
            out = []
            for (text,) in [r.args for r in requests]:
                windows = get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
                total = 0.0
                for window in map(make_disjoint_window, windows):
                    total += self._score(list(window[0]), list(window[1]))[0]
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
                out.append(total)
            return out

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> list[str]:
            out = []
            for context, gen_kwargs in [r.args for r in requests]:
                kwargs = dict(gen_kwargs)
                until = kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                new_tokens = int(kwargs.get("max_gen_toks", 256))
                temperature = float(kwargs.get("temperature", 0.0) or 0.0)
                if not kwargs.get("do_sample", False):
                    temperature = 0.0
                ids = self.tok_encode(context)[-max(1, self.max_length - new_tokens) :]
                sampling = Sampling(new_tokens, temperature, seed=0)
                text = ""
                for progress in stream(runtime, ids, sampling, stop_tokens(tokenizer)):
                    text = tokenizer.decode(progress.tokens, skip_special_tokens=True)
                    if any(u in text for u in until):
                        break
                for u in until:
                    text = text.split(u, 1)[0]
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                out.append(text)
            return out

    return RuntimeLM()


class LmEval(Evaluator):
    name = "lmeval"
    description = "lm-evaluation-harness tasks, run by the variant's own runtime"
    requires = ("lm_eval", "transformers")
    extra = "lmeval"
    by_default = False
    order = 70
    options = OptionSet(
        [
            Option("tasks", str, "", "lm-eval task names, joined by + (or commas in a recipe)"),
            Option("include_path", str, "", "folder of your own task YAMLs"),
            Option("num_fewshot", int, -1, "few-shot examples (-1: each task's own)", min=-1),
            Option("limit", int, 0, "examples per task at most (0: all)", min=0),
            Option("max_length", int, 0, "context tokens (0: the model's)", min=0),
            Option("bootstrap_iters", int, 1000, "bootstrap resamples for stderr", min=0),
        ]
    )
    # lm-eval reports these beside each metric; they are details, not measurements
    skipped_keys: ClassVar[tuple[str, ...]] = ("alias", "name", "sample_len", "sample_count")

    def check_inputs(self, options: Mapping[str, OptionValue]) -> str:
        return check_tasks(options)[2]

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        import lm_eval
        from transformers import AutoConfig

        from quantforge_tasks.generate import base_tokenizer

        assert runtime is not None
        manager, names, _ = check_tasks(options)
        tokenizer = base_tokenizer(context, self.name)
        max_length = int(options["max_length"]) or int(
            getattr(AutoConfig.from_pretrained(context.base_model), "max_position_embeddings", 0)
            or 2048
        )
        fewshot = int(options["num_fewshot"])
        results = lm_eval.simple_evaluate(
            model=runtime_lm(runtime, tokenizer, max_length),
            tasks=names,
            task_manager=manager,
            num_fewshot=None if fewshot < 0 else fewshot,
            limit=int(options["limit"]) or None,
            bootstrap_iters=int(options["bootstrap_iters"]),
            log_samples=False,
            random_seed=context.seed,
            numpy_random_seed=context.seed,
            torch_random_seed=context.seed,
            fewshot_random_seed=context.seed,
        )
        if results is None:
            raise RuntimeError("lm-eval returned no results")
        return measurements(results, lm_eval.__version__)


def measurements(results: Mapping[str, Any], version: str) -> list[Measurement]:
    """One measurement per task and metric (``task/metric``, ``task/metric[filter]`` for
    a filter other than ``none``), with lm-eval's stderr and sample count."""
    out = []
    for task, metrics in results["results"].items():
        better = results.get("higher_is_better", {}).get(task, {})
        samples = (results.get("n-samples", {}).get(task) or {}).get("effective")
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if (
                not filter_name
                or metric.endswith("_stderr")
                or metric in LmEval.skipped_keys
                or not isinstance(value, int | float)
            ):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            details: dict[str, Any] = {
                "stderr": stderr if isinstance(stderr, int | float) else None,
                "samples": samples,
                "num_fewshot": results.get("n-shot", {}).get(task),
                "lm_eval": version,
                "filter": filter_name,
            }
            if metric in COUNTABLE and samples:
                count = value * samples
                if abs(count - round(count)) < 1e-6:
                    details.update(passed=round(count), total=samples)
            name = f"{task}/{metric}" + ("" if filter_name == "none" else f"[{filter_name}]")
            direction = "higher" if better.get(metric, True) else "lower"
            out.append(Measurement(name, float(value), "", direction, details))
    return out
