"""Variants loaded on demand under a memory budget, answering one prompt side by side.

This is the Space's engine, kept free of Gradio so it can be driven and tested directly.
Variants load through the same device targets as measured runs (transformers, llama.cpp,
ONNX Runtime, OpenVINO), the first time someone asks for them; loaded ones are kept
until the memory budget needs room, then the least recently used goes first.
"""

from __future__ import annotations

import atexit
import html
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantforge.errors import NotRunnableError, UsageError, one_line
from quantforge.interfaces import Artifact, Quantizer, Runtime, Target
from quantforge.model import artifacts
from quantforge.space.build import MEMORY_OVERHEAD, TOKENIZER_DIR, Catalog, SpaceVariant
from quantforge.space.generation import (
    Progress,
    Sampling,
    first_divergence,
    prompt_tokens,
    stop_tokens,
    stream,
)


@dataclass(frozen=True)
class Limits:
    """What one request may ask, so a shared CPU Space stays usable for everyone."""

    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 512
    max_new_tokens: int = 256
    max_variants: int = 4
    time_limit_s: float = 90.0
    memory_budget_mb: float = 12_000.0  # a free CPU Space has 16 GB


@dataclass
class Panel:
    """One variant's answer as it grows."""

    name: str
    state: str = "waiting"  # waiting | loading | generating | done | failed | not runnable
    message: str = ""
    target: str | None = None
    load_seconds: float | None = None
    progress: Progress = field(default_factory=Progress)
    text: str = ""
    diverged_at: int | None = None  # token index where it leaves the base's answer
    diverged_char: int | None = None  # the same place in ``text``

    def stats(self) -> str:
        """One line of live figures (or why there are none)."""
        if self.state in ("failed", "not runnable"):
            return f"**{self.state}**: {self.message}"
        if self.state in ("waiting", "loading"):
            return f"{self.state}..."
        p = self.progress
        parts = [f"on **{self.target}**"]
        if p.prefill_seconds is not None:
            parts.append(f"first token {p.prefill_seconds * 1000:.0f} ms")
        if p.decode_tps is not None:
            parts.append(f"**{p.decode_tps:.1f} tok/s**")
        parts.append(f"{len(p.tokens)} tokens")
        if self.load_seconds is not None:
            parts.append(f"loaded in {self.load_seconds:.1f} s")
        if p.stopped:
            parts.append(f"stopped: {p.stopped}")
        return " · ".join(parts)

    def divergence(self) -> str:
        if self.name == "base" or self.state not in ("generating", "done"):
            return ""
        if self.diverged_at is None:
            return "same tokens as the base so far"
        return f"leaves the base's answer at token {self.diverged_at + 1}"

    def as_dict(self) -> dict[str, Any]:
        """The panel for API clients: text, tokens, live figures, divergence."""
        p = self.progress
        return {
            "name": self.name,
            "state": self.state,
            "message": self.message,
            "target": self.target,
            "text": self.text,
            "tokens": list(p.tokens),
            "time_to_first_token_s": p.prefill_seconds,
            "decode_tokens_per_s": p.decode_tps,
            "load_s": self.load_seconds,
            "stopped": p.stopped,
            "diverges_from_base_at": self.diverged_at,
        }

    def html(self) -> str:
        """The text, with the part after the divergence from the base marked."""
        if self.diverged_char is None:
            return f'<div class="qf-text">{html.escape(self.text)}</div>'
        head, tail = self.text[: self.diverged_char], self.text[self.diverged_char :]
        return (
            f'<div class="qf-text">{html.escape(head)}<mark class="qf-diverged" '
            f'title="diverges from the base here">{html.escape(tail)}</mark></div>'
        )


@dataclass
class _Loaded:
    runtime: Runtime
    target: str
    memory_mb: float
    load_seconds: float
    last_used: float


class VariantPool:
    """Runtimes of a catalog's variants, loaded lazily and kept within ``budget_mb``."""

    def __init__(self, folder: Path, catalog: Catalog, plugins: Any, budget_mb: float) -> None:
        self.folder = folder
        self.catalog = catalog
        self.plugins = plugins
        self.budget_mb = budget_mb
        self.loaded: dict[str, _Loaded] = {}
        self.lock = threading.Lock()

    def target_for(self, variant: SpaceVariant) -> Target:
        """The target that measured it, or another measured target here that runs its format."""
        names = [variant.target] if variant.target else []
        names += [t.name for t in self.plugins.targets if t.name not in names]
        reasons = []
        for name in names:
            if name not in self.plugins.targets:
                continue
            target: Target = self.plugins.targets.get(name)
            if not target.measured or not target.runs(variant.format):
                continue
            reason = target.unavailable_reason()
            if reason is None:
                return target
            reasons.append(f"{name} {reason}")
        raise NotRunnableError(
            "; ".join(reasons) or f"no installed target runs {variant.format} models"
        )

    def why_not_runnable(self, variant: SpaceVariant) -> str | None:
        """Why it cannot run here, found without loading anything (``None``: it may)."""
        try:
            self.target_for(variant)
        except NotRunnableError as exc:
            return exc.message
        if not variant.source:
            return "the run recorded no files for it (for the base on the Hub, pass --base-model)"
        path = variant.source.get("path")
        if path is not None and not Path(path).is_dir():
            return f"its files are missing ({path})"
        if variant.memory_mb and variant.memory_mb > self.budget_mb:
            return (
                f"it needs about {variant.memory_mb:.0f} MB, over this Space's memory "
                f"budget of {self.budget_mb:.0f} MB"
            )
        return None

    def files(self, variant: SpaceVariant) -> Path:
        """A local folder with the variant's files (downloaded from the Hub when needed)."""
        if "path" in variant.source:
            return Path(variant.source["path"])
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(
                snapshot_download(
                    variant.source["repo_id"], revision=variant.source.get("revision")
                )
            )
        except LocalEntryNotFoundError:
            raise NotRunnableError(
                f"{variant.where} is not downloaded and the Hub cannot be reached"
            ) from None

    def runtime(self, variant: SpaceVariant, keep: Sequence[str] = ()) -> _Loaded:
        """The loaded variant, loading it now if needed; may unload others (not in ``keep``)."""
        with self.lock:
            if variant.name in self.loaded:
                entry = self.loaded[variant.name]
                entry.last_used = time.monotonic()
                return entry
            reason = self.why_not_runnable(variant)
            if reason:
                raise NotRunnableError(reason)
            target = self.target_for(variant)
            folder = self.files(variant)
            need = (
                variant.memory_mb
                or artifacts.folder_bytes(folder, weights_only=True) / 1e6 * MEMORY_OVERHEAD
            )
            self._make_room(need, keep)
            artifact = (
                artifacts.read_artifact(folder)
                if (folder / artifacts.MANIFEST).is_file()
                else Artifact(folder, variant.format, {})
            )
            method = (
                self.plugins.methods.get(variant.producer)
                if variant.producer and variant.producer in self.plugins.methods
                else None
            )
            loader = method.load_model if isinstance(method, Quantizer) else (lambda a: None)
            start = time.perf_counter()
            runtime = target.load(artifact, {}, loader)
            entry = _Loaded(runtime, target.name, need, time.perf_counter() - start, 0.0)
            entry.last_used = time.monotonic()
            self.loaded[variant.name] = entry
            return entry

    def _make_room(self, need: float, keep: Sequence[str]) -> None:
        used = sum(e.memory_mb for e in self.loaded.values())
        for name, entry in sorted(self.loaded.items(), key=lambda kv: kv[1].last_used):
            if used + need <= self.budget_mb:
                break
            if name in keep:
                continue
            entry.runtime.close()
            del self.loaded[name]
            used -= entry.memory_mb
        if used + need > self.budget_mb:
            raise NotRunnableError(
                f"the memory budget ({self.budget_mb:.0f} MB) cannot hold it beside the other "
                "chosen variants; choose fewer at once"
            )

    def close(self) -> None:
        with self.lock:
            for entry in self.loaded.values():
                entry.runtime.close()
            self.loaded.clear()


class SideBySide:
    """A Space folder's variants, answering prompts side by side."""

    def __init__(self, folder: Path, limits: Limits | None = None, plugins: Any = None) -> None:
        from quantforge.plugins.manager import load_plugins
        from quantforge.space.build import load_facts

        self.folder = folder
        self.limits = limits or Limits()
        self.catalog = Catalog.read(folder)
        self.facts = load_facts(folder)
        self.plugins = plugins or load_plugins()
        self.pool = VariantPool(folder, self.catalog, self.plugins, self.limits.memory_budget_mb)
        # free the runtimes before interpreter teardown (llama.cpp's finalizers fail after it)
        atexit.register(self.pool.close)
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder / TOKENIZER_DIR)
        return self._tokenizer

    def not_runnable(self) -> dict[str, str]:
        """Variants that cannot run here, with why (shown before anyone asks)."""
        return {
            v.name: reason
            for v in self.catalog.variants
            if (reason := self.pool.why_not_runnable(v)) is not None
        }

    def prompt_ids(self, prompt: str) -> list[int]:
        """Check the prompt against the limits and tokenize it (chat template when the
        tokenizer has one)."""
        text = prompt.strip()
        if not text:
            raise UsageError("the prompt is empty", hint="type a prompt, then press Generate")
        if len(text) > self.limits.max_prompt_chars:
            raise UsageError(
                f"the prompt is {len(text)} characters; the limit is "
                f"{self.limits.max_prompt_chars}",
                hint="shorten it",
            )
        ids = prompt_tokens(self.tokenizer, text)
        if len(ids) > self.limits.max_prompt_tokens:
            raise UsageError(
                f"the prompt is {len(ids)} tokens; the limit is {self.limits.max_prompt_tokens}",
                hint="shorten it",
            )
        return ids

    def check_request(self, names: Sequence[str], sampling: Sampling) -> None:
        if not names:
            raise UsageError("no variant chosen", hint="tick two or more variants")
        if len(names) > self.limits.max_variants:
            raise UsageError(
                f"{len(names)} variants chosen; this Space runs at most "
                f"{self.limits.max_variants} at once",
                hint="untick some",
            )
        for name in names:
            self.catalog.variant(name)
        sampling.check()
        if sampling.max_new_tokens > self.limits.max_new_tokens:
            raise UsageError(
                f"max new tokens is {sampling.max_new_tokens}; the limit is "
                f"{self.limits.max_new_tokens}"
            )

    def stop_ids(self) -> set[int]:
        return stop_tokens(self.tokenizer)

    def compare(
        self, names: Sequence[str], prompt: str, sampling: Sampling
    ) -> Iterator[list[Panel]]:
        """Yield every variant's panel as they load and after each round of tokens."""
        self.check_request(names, sampling)
        ids = self.prompt_ids(prompt)
        deadline = time.monotonic() + self.limits.time_limit_s
        panels = [Panel(name) for name in names]
        yield panels
        streams: dict[int, Iterator[Progress]] = {}
        for index, panel in enumerate(panels):
            variant = self.catalog.variant(panel.name)
            panel.state = "loading"
            yield panels
            try:
                loaded = self.pool.runtime(variant, keep=names)
                panel.target, panel.load_seconds = loaded.target, loaded.load_seconds
                streams[index] = stream(loaded.runtime, ids, sampling, self.stop_ids(), deadline)
                panel.state = "generating"
            except NotRunnableError as exc:
                panel.state, panel.message = "not runnable", exc.message
            except Exception as exc:  # corrupt files, a library refusing them: the rest go on
                panel.state, panel.message = "failed", one_line(exc)
            yield panels
        base = next((p for p in panels if p.name == "base"), None)
        while streams:
            for index in list(streams):
                panel = panels[index]
                try:
                    panel.progress = next(streams[index])
                except StopIteration:
                    del streams[index]
                    continue
                except Exception as exc:
                    panel.state, panel.message = "failed", one_line(exc)
                    del streams[index]
                    continue
                panel.text = self.tokenizer.decode(panel.progress.tokens, skip_special_tokens=True)
                if panel.progress.stopped:
                    panel.state = "done"
                    del streams[index]
            if base is not None:
                self._mark_divergence(base, panels)
            yield panels

    def _mark_divergence(self, base: Panel, panels: list[Panel]) -> None:
        """Find, once per panel, the first token where it leaves the base's tokens."""
        for panel in panels:
            if panel is base or panel.diverged_at is not None:
                continue
            at = first_divergence(base.progress.tokens, panel.progress.tokens)
            if at is None:
                continue
            panel.diverged_at = at
            head = self.tokenizer.decode(panel.progress.tokens[:at], skip_special_tokens=True)
            panel.diverged_char = (
                len(head)
                if panel.text.startswith(head)
                else len(os.path.commonprefix([base.text, panel.text]))
            )
