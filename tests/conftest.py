"""Shared fixtures: one cache for the session, the tiny model, fake plugin distributions."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    # Workers inherit the environment: every process of the session shares one cache.
    cache = os.environ.get("QUANTFORGE_TEST_CACHE") or str(
        Path(config.rootpath) / ".pytest_cache" / "quantforge"
    )
    # llm-compressor's worker environment is a tool, not a cache entry: keep the one made
    # (by `scripts/bootstrap test`) in the user's cache
    from quantforge_llmcompressor.environment import PYTHON_VARIABLE, worker_python

    made = worker_python()
    if made is not None:
        os.environ.setdefault(PYTHON_VARIABLE, str(made))
    os.environ["QUANTFORGE_CACHE_DIR"] = cache
    os.environ.pop("QUANTFORGE_LOAD_PLUGINS", None)
    os.environ.pop("QUANTFORGE_DEBUG", None)
    # huggingface_hub reads these once, at import: point every client of the session (this
    # process and the CLI's) at the local Hub server, with no Xet and no real token.
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{_free_port()}"
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HOME"] = str(Path(cache) / "hf-home")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        os.environ.pop(name, None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WRITE_TOKEN = "hf_quantforge_test_write"
READ_TOKEN = "hf_quantforge_test_read"


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The local Hub-protocol server on ``HF_ENDPOINT``: user ``alice`` (org ``qf-org``)
    holds WRITE_TOKEN; ``bob`` holds READ_TOKEN."""
    from hub_server import HubServer

    port = int(os.environ["HF_ENDPOINT"].rsplit(":", 1)[1])
    tokens = {
        WRITE_TOKEN: {"name": "alice", "orgs": ["qf-org"], "role": "write"},
        READ_TOKEN: {"name": "bob", "orgs": [], "role": "read"},
    }
    with HubServer(tmp_path_factory.mktemp("hub"), tokens, port=port) as server:
        import huggingface_hub.constants

        assert server.url == huggingface_hub.constants.ENDPOINT, (
            "imported before HF_ENDPOINT was set"
        )
        yield server


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["QUANTFORGE_CACHE_DIR"])


@pytest.fixture(scope="session")
def tiny_model(cache_dir: Path) -> Path:
    from quantforge.testing import build_tiny_model

    return build_tiny_model(cache_dir=cache_dir / "tiny-models")


@pytest.fixture(scope="session")
def real_model(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, built once per cache."""
    from quantforge.testing import real_model as build

    return build(cache_dir=cache_dir / "real-models")


def make_plugin_dist(
    root: Path, module: str, source: str, *, entry: str | None = None, version: str = "0.0.1"
) -> Path:
    """Write an installed-looking distribution (module + dist-info with an entry point) under root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    dist = root / f"{module}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[quantforge]\n{entry or module} = {module}\n")
    return root


def quantforge(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "quantforge", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )


def fails_with(
    out: subprocess.CompletedProcess[str], *fragments: str, after_progress: bool = False
) -> None:
    """A non-zero exit with one ``Error:`` line holding every fragment, and no traceback.

    The error is all of stderr, or, with ``after_progress``, its last line (the
    progress bars of a stage that had started may come before it).
    """
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    if after_progress:
        assert errors == [lines[-1]], out.stderr
    else:
        assert errors == lines and len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


Metrics = dict[tuple[str, str], dict[str, float]]


def quantize_and_measure(
    model: Path,
    out: Path,
    variants: list[str],
    *args: str,
    timeout: int = 1800,
    evaluators: dict[str, list[str]] | None = None,
    executor: str = "inline",
) -> Metrics:
    """Run ``quantforge quantize`` with every measuring evaluator (or ``evaluators``, each
    with its ``OPTION=VALUE`` list; it must succeed) and return the stored values as
    ``{(variant, target): {metric: value}}``.

    The jobs run in the CLI's own process (``--executor inline``: the libraries are
    imported once, not once per job); these runs test what methods and runtimes compute.
    Worker processes, their isolation and their faults are tested in test_runner.py and
    test_faults.py, and the demo, push and Ray tests run with them."""
    cmd = ["quantize", str(model), "--out", str(out), "--executor", executor, *args]
    for v in variants:
        cmd += ["-v", v]
    chosen = evaluators or {e: [] for e in ("size", "speed", "perplexity", "kl")}
    for e, options in chosen.items():
        cmd += ["--evaluator", ",".join([e, *options])]
    done = quantforge(*cmd, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(quantforge("results", str(out), "--json").stdout)
    metrics: Metrics = {}
    for m in data["measurements"]:
        metrics.setdefault((m["variant"], m["target"]), {})[m["metric"]] = m["value"]
    return metrics


def reshaped_model(source: Path, out: Path, **changes: Any) -> Path:
    """``source``'s config with ``changes`` (fewer layers, other widths) and random weights
    (seed 0), saved to ``out`` beside ``source``'s tokenizer files: a model of real or
    chosen shapes that is cheap to quantize."""
    import torch
    from quantforge.model.artifacts import copy_tokenizer_files
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(source)
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    copy_tokenizer_files(source, out)
    return out


def assert_missing_names_extra(
    monkeypatch: pytest.MonkeyPatch, missing: set[str], objects: list[Any], extra: str
) -> None:
    """With the modules in ``missing`` hidden, every object's ``check_available`` must raise
    MissingDependencyError naming ``pip install 'quantforge[extra]'``."""
    import importlib.util

    from quantforge.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a)
    )
    for obj in objects:
        with pytest.raises(MissingDependencyError, match=rf"quantforge\[{extra}\]"):
            obj.check_available()


def with_pythonpath(path: Path) -> dict[str, str]:
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(path) + (os.pathsep + old if old else "")}


FAULTS_PLUGIN = '''
"""Test plugin whose steps fail in every way a real one can."""
import os, shutil, signal, subprocess, sys, time
from quantforge import Evaluator, Measurement, Quantizer, OptionSet, Option, hookimpl

class Fault(Quantizer):
    output_format = "hf+fault"
    description = "fails on purpose"
    def quantize(self, source, options, output, context):
        (output / "partial.bin").write_bytes(b"half-written")
        self.fail()

class Raises(Fault):
    name = "faults-raise"
    def fail(self):
        raise RuntimeError("boom on purpose")

class Crashes(Fault):
    name = "faults-crash"
    def fail(self):
        os.kill(os.getpid(), signal.SIGKILL)

class Hangs(Fault):
    """Starts a child of its own (a converter, a compiler), then hangs."""
    name = "faults-hang"
    def fail(self):
        mark = os.environ.get("QF_CHILD_MARK", "qf-grandchild")
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", mark])
        time.sleep(3600)

class NeedsMissing(Fault):
    name = "faults-missing"
    requires = ("surely_not_installed_pkg",)
    extra = "missingextra"
    def fail(self):
        raise AssertionError("must not run")

class Copies(Quantizer):
    """Copies its input (an HF folder that runs everywhere), after a fault of its own."""
    output_format = "hf"
    description = "copies the model after a fault"
    def quantize(self, source, options, output, context):
        (output / "partial.bin").write_bytes(b"half-written")
        self.fault()
        (output / "partial.bin").unlink()
        for item in source.path.iterdir():
            if item.is_file() and item.name != "quantforge.json":
                shutil.copy(item, output / item.name)

class Slow(Copies):
    """Waits, half-written, until the file QF_RELEASE names exists (when it is set)."""
    name = "faults-slow"
    def fault(self):
        release = os.environ.get("QF_RELEASE")
        deadline = time.monotonic() + 600
        while release and not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.1)

class Hog(Copies):
    """Asks for QF_HOG_BYTES of memory at once (a model too big for the worker's cap)."""
    name = "faults-hog"
    def fault(self):
        hog = bytearray(int(os.environ.get("QF_HOG_BYTES", "0")))
        del hog

class EvalFails(Evaluator):
    """Raises on every quantized variant while QF_EVAL_FAIL is set; the base passes."""
    name = "faults-eval"
    description = "fails on purpose on quantized variants"
    needs_runtime = False
    by_default = False
    def evaluate(self, artifact, runtime, options, context):
        if os.environ.get("QF_EVAL_FAIL") and artifact.format != "hf":
            raise RuntimeError("evaluate failed on purpose")
        return [Measurement("files", float(len(list(artifact.path.iterdir()))), "", "lower")]

@hookimpl
def register_quantizers(register):
    for cls in (Raises, Crashes, Hangs, NeedsMissing, Slow, Hog):
        register(cls())

@hookimpl
def register_evaluators(register):
    register(EvalFails())
'''


@pytest.fixture
def faults_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The faults plugin, visible to this process and to workers."""
    root = make_plugin_dist(tmp_path / "site", "qf_faults", FAULTS_PLUGIN)
    monkeypatch.syspath_prepend(str(root))
    for key, value in with_pythonpath(root).items():
        monkeypatch.setenv(key, value)
    return root


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextlib.contextmanager
def served_space(space: Path, limits: Any) -> Iterator[str]:
    """A Space folder's app served from this process on 127.0.0.1, offline, as the Space
    would run it; yields its URL."""
    import importlib.util

    import huggingface_hub.constants

    saved = {k: os.environ.get(k) for k in ("GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE")}
    os.environ.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    spec = importlib.util.spec_from_file_location(f"space_app_{space.name}", space / "app.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    demo = app.serve(space, limits=limits, block=False)
    try:
        yield demo.local_url
    finally:
        demo.close()
        huggingface_hub.constants.HF_HUB_OFFLINE = offline
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def open_space_page(pw: Any, url: str) -> tuple[Any, Any]:
    """Debian's chromium, headless, on the Space at ``url`` once its form is up:
    ``(browser, page)``."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.goto(url)
    page.wait_for_selector("#qf-generate")
    return browser, page


def ask_space(page: Any, prompt: str, max_new_tokens: int, timeout_ms: int) -> None:
    """Type ``prompt``, set the token cap, press Generate and wait until every panel is done."""
    from playwright.sync_api import expect

    page.locator("#qf-prompt textarea").fill(prompt)
    page.locator("#qf-max-new-tokens input[type=number]").fill(str(max_new_tokens))
    page.locator("#qf-max-new-tokens input[type=number]").press("Enter")
    page.locator("#qf-generate").click()
    expect(page.locator("#qf-status")).to_contain_text("Done in", timeout=timeout_ms)
