"""The Space: building its folder, its engine, its API (gradio_client), and the page in a
real headless Chromium driven by Playwright; publishing it to the local Hub server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    CHROMIUM,
    WRITE_TOKEN,
    ask_space,
    fails_with,
    open_space_page,
    quantforge,
    served_space,
)
from quantforge.space.build import CATALOG_FILE, Catalog, SpaceVariant
from quantforge.space.engine import Limits, Panel, SideBySide
from quantforge.space.generation import Sampling, first_divergence, stream

pytestmark = pytest.mark.slow
VARIANTS = ["base", "rtn-int8", "llamacpp-q4_k_m"]
PROMPT = 'def parse_args(self, args):\n    """Parse the'


@pytest.fixture(scope="module")
def run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("space") / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "rtn:int8", "-v", "llamacpp:q4_k_m",
        "--target", "cpu", "--target", "llama.cpp", "--target", "rpi5,context=256",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def space(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run's Space folder, plus two damaged variants: a copy of rtn-int8 with its
    weights cut short, and one whose folder is gone."""
    out = tmp_path_factory.mktemp("space") / "space"
    done = quantforge("space", "build", str(run), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"quantforge space serve {out}" in done.stdout  # names the next command
    catalog = Catalog.read(out)
    good = catalog.variant("rtn-int8")
    corrupt = tmp_path_factory.mktemp("space") / "corrupt"
    shutil.copytree(good.source["path"], corrupt)
    weights = next(corrupt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    extra = [
        SpaceVariant(**{**good.__dict__, "name": "corrupt", "source": {"path": str(corrupt)}}),
        SpaceVariant(**{**good.__dict__, "name": "gone", "source": {"path": str(corrupt) + "-x"}}),
    ]
    Catalog(catalog.title, None, catalog.run_id, catalog.variants + extra).write(out)
    return out


# -- building -----------------------------------------------------------------------


def test_space_build_writes_a_space_repo_folder(space: Path, run: Path) -> None:
    from importlib.metadata import version

    from huggingface_hub import SpaceCard
    from packaging.requirements import Requirement

    card = SpaceCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.sdk_version == version("gradio")
    assert (space / "app.py").read_text() == (
        Path(__file__).parent.parent / "spaces/app.py"
    ).read_text()
    assert (space / "results.sqlite").read_bytes() == (run / "results.sqlite").read_bytes()
    assert (space / "tokenizer" / "tokenizer.json").is_file()
    lines = (space / "requirements.txt").read_text().splitlines()
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    pins = {Requirement(line).name.lower(): Requirement(line) for line in lines[1:]}
    # the libraries of the targets (transformers, llama.cpp) and loaders, at the measured versions
    for name in ("torch", "transformers", "llama-cpp-python", "pluggy", "huggingface-hub"):
        assert str(pins[name].specifier) == f"=={version(name)}", name
    assert "gradio" not in pins  # the Space SDK provides it at sdk_version
    catalog = json.loads((space / CATALOG_FILE).read_text())
    targets = {v["name"]: v["target"] for v in catalog["variants"]}
    assert targets["base"] == "cpu" and targets["llamacpp-q4_k_m"] == "llama.cpp"


def test_the_vendored_copy_imports_and_finds_its_plugins_without_the_install(space: Path) -> None:
    """On the Hub quantforge is not installed: app.py puts vendor/ first on sys.path."""
    code = (
        "import quantforge, sys; from quantforge.plugins.manager import load_plugins; "
        "p = load_plugins(); print(quantforge.__file__); "
        "print(sorted(t.name for t in p.targets)); print(sorted(m.name for m in p.methods))"
    )
    env = {**os.environ, "PYTHONPATH": str(space / "vendor")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    where, targets, methods = done.stdout.splitlines()
    assert where.startswith(str(space / "vendor"))
    assert "'llama.cpp'" in targets and "'cpu'" in targets and "'rpi5'" in targets
    assert "'rtn'" in methods and "'llamacpp'" in methods


def test_space_build_bad_input_is_one_line_and_writes_nothing(run: Path, tmp_path: Path) -> None:
    from quantforge.store.results import ResultsStore

    empty = tmp_path / "empty-run"
    store = ResultsStore(empty, create=True)
    store.start_run("r1", "2026-01-01T00:00:00", {"ref": "x", "content_hash": "h"}, {})
    store.close()
    fails_with(quantforge("space", "build", str(empty)), "holds no measurements")
    assert not (empty / "space").exists()
    fails_with(quantforge("space", "build", str(tmp_path / "nothing")), "no results store")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    fails_with(quantforge("space", "build", str(run), "--out", str(occupied)), "not a Space folder")
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    fails_with(quantforge("space", "serve", str(tmp_path / "nothing")), "no results store")


def test_space_serve_builds_and_serves_a_run_folder(run: Path) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "quantforge", "space", "serve", str(run), "--port", str(port)]
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    page = answer.read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                assert time.monotonic() < deadline, "the Space did not start in 180 s"
                time.sleep(0.5)
        assert "quantized variants side by side" in page
        assert Catalog.read(run / "space").variant("llamacpp-q4_k_m").target == "llama.cpp"
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- the engine ------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(space: Path) -> Iterator[SideBySide]:
    side = SideBySide(space, Limits(max_variants=4))
    yield side
    side.pool.close()


def _last(updates: Iterator[list[Panel]]) -> dict[str, Panel]:
    panels: list[Panel] = []
    for panels in updates:  # noqa: B007 - the last update is the answer
        pass
    return {p.name: p for p in panels}


def test_greedy_streams_match_transformers_generate_and_seeds_repeat(
    engine: SideBySide, tiny_model: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    ids = engine.prompt_ids(PROMPT)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    expected = model.generate(
        torch.tensor([ids]), max_new_tokens=16, do_sample=False, min_new_tokens=16
    )[0, len(ids) :].tolist()
    runtime = engine.pool.runtime(engine.catalog.variant("base")).runtime
    greedy = list(stream(runtime, ids, Sampling(16)))[-1]
    assert greedy.tokens == expected
    assert greedy.prefill_seconds and greedy.decode_steps == 15 and greedy.decode_tps
    sampled = [list(stream(runtime, ids, Sampling(16, 1.0, seed)))[-1].tokens for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    assert sampled[0] != greedy.tokens


def test_variants_answer_side_by_side_and_damaged_ones_do_not_stop_the_others(
    engine: SideBySide,
) -> None:
    updates = list(engine.compare([*VARIANTS, "corrupt"], PROMPT, Sampling(24)))
    assert len(updates) > 24  # streamed: an update per round of tokens
    panels = {p.name: p for p in updates[-1]}
    for name in VARIANTS:
        p = panels[name]
        assert p.state == "done", (name, p.message)
        assert len(p.progress.tokens) == 24 and p.progress.stopped == "max new tokens"
        assert p.text == engine.tokenizer.decode(p.progress.tokens, skip_special_tokens=True)
        assert p.progress.decode_tps and p.progress.decode_tps > 0 and "tok/s" in p.stats()
    assert panels["llamacpp-q4_k_m"].target == "llama.cpp" and panels["rtn-int8"].target == "cpu"
    base = panels["base"].progress.tokens
    for name in VARIANTS[1:]:
        assert panels[name].diverged_at == first_divergence(base, panels[name].progress.tokens)
    assert panels["corrupt"].state == "failed" and panels["corrupt"].message
    assert "failed" in panels["corrupt"].stats()


def test_divergence_from_the_base_is_marked_in_the_text() -> None:
    panel = Panel("v", state="done", text="same start, then <other>", diverged_at=3)
    panel.diverged_char = len("same start, ")
    assert panel.html().endswith(
        'same start, <mark class="qf-diverged" title="diverges from the base here">'
        "then &lt;other&gt;</mark></div>"
    )
    assert "token 4" in panel.divergence()


def test_what_cannot_run_here_says_why(space: Path) -> None:
    from quantforge.plugins.manager import load_plugins

    os.environ["QUANTFORGE_LOAD_PLUGINS"] = "transformers,rtn,metrics,devices"
    try:
        plugins = load_plugins()  # as if llama.cpp's plugin were not installed
    finally:
        del os.environ["QUANTFORGE_LOAD_PLUGINS"]
    side = SideBySide(space, Limits(memory_budget_mb=300), plugins=plugins)
    why = side.not_runnable()
    assert "no installed target runs gguf" in why["llamacpp-q4_k_m"]
    assert "over this Space's memory budget of 300 MB" in why["base"]
    assert "files are missing" in why["gone"]
    panels = _last(side.compare(["base", "gone", "llamacpp-q4_k_m"], PROMPT, Sampling(4)))
    assert {p.state for p in panels.values()} == {"not runnable"}


def test_the_memory_budget_unloads_the_least_recently_used(space: Path) -> None:
    side = SideBySide(space, Limits(memory_budget_mb=1000))
    sizes = {v.name: v.memory_mb for v in side.catalog.variants}
    assert sizes["base"] + sizes["rtn-int8"] <= 1000 < sizes["base"] + sizes["rtn-int8"] + 300
    try:
        panels = _last(side.compare(VARIANTS, PROMPT, Sampling(2)))
        assert panels["base"].state == panels["rtn-int8"].state == "done"
        assert panels["llamacpp-q4_k_m"].state == "not runnable"
        assert "choose fewer" in panels["llamacpp-q4_k_m"].message
        panels = _last(side.compare(["llamacpp-q4_k_m", "rtn-int8"], PROMPT, Sampling(2)))
        assert {p.state for p in panels.values()} == {"done"}
        assert sorted(side.pool.loaded) == ["llamacpp-q4_k_m", "rtn-int8"]  # base went first
    finally:
        side.pool.close()


@pytest.mark.parametrize(
    ("names", "prompt", "sampling", "message"),
    [
        (["base", "rtn-int8"], "   ", Sampling(8), "the prompt is empty"),
        (["base", "rtn-int8"], "x" * 2001, Sampling(8), "the prompt is 2001 characters"),
        (["base", "rtn-int8"], "word " * 400, Sampling(8), "tokens; the limit is 256"),
        (["base", "rtn-int8"], PROMPT, Sampling(300), "max new tokens is 300"),
        ([], PROMPT, Sampling(8), "no variant chosen"),
        (
            ["base", "rtn-int8", "corrupt", "gone", "llamacpp-q4_k_m"],
            PROMPT,
            Sampling(8),
            "at most 4",
        ),
        (["bsae"], PROMPT, Sampling(8), "did you mean: base"),
    ],
)
def test_bad_requests_are_refused_before_any_model_runs(
    space: Path, names: list[str], prompt: str, sampling: Sampling, message: str
) -> None:
    from quantforge.errors import UsageError

    side = SideBySide(space, Limits(max_prompt_tokens=256))
    with pytest.raises(UsageError) as err:
        next(side.compare(names, prompt, sampling))
    assert message in str(err.value)
    assert not side.pool.loaded


# -- the Hub ---------------------------------------------------------------------------


def test_a_space_on_the_hub_reads_the_pushed_variants_and_is_one_commit(  # type: ignore[no-untyped-def]
    hub, run: Path, space: Path, tiny_model: Path, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi, SpaceCard, hf_hub_download

    api = HfApi(token=WRITE_TOKEN)
    api.create_repo("alice/space-base", exist_ok=True)
    api.upload_folder(folder_path=tiny_model, repo_id="alice/space-base")
    token = {"HF_TOKEN": WRITE_TOKEN}
    scheme = ["--namespace", "alice", "--repo-name", "space-{base}-{method}-{bits}"]
    out = tmp_path / "hub-space"
    done = quantforge(
        "space", "build", str(run), "--out", str(out), *scheme, "--base-model", "alice/space-base"
    )
    assert done.returncode == 0, done.stderr
    assert "quantforge space push" in done.stdout
    sources = {v.name: v.source for v in Catalog.read(out).variants}
    assert sources["base"] == {"repo_id": "alice/space-base", "revision": "main"}
    assert sources["rtn-int8"]["repo_id"].startswith("alice/space-")
    push = ["space", "push", str(out), "--repo-id", "alice/tiny-space"]
    # the variants are not on the Hub yet: refused, naming them, and nothing is created
    fails_with(quantforge(*push, env=token), "variants the Hub does not have", "rtn")
    fails_with(
        quantforge("space", "push", str(space), "--repo-id", "alice/x", env=token), "local folders"
    )
    fails_with(quantforge(*push, env={"HF_TOKEN": ""}), "no Hugging Face token")
    assert not api.repo_exists("alice/tiny-space", repo_type="space")
    assert quantforge("push", str(run), *scheme, env=token).returncode == 0
    done = quantforge(*push, env=token)
    assert done.returncode == 0, done.stderr
    files = set(api.list_repo_files("alice/tiny-space", repo_type="space"))
    assert {"README.md", "app.py", CATALOG_FILE, "results.sqlite", "requirements.txt"} <= files
    assert "vendor/quantforge/__init__.py" in files and "tokenizer/tokenizer.json" in files
    assert api.space_info("alice/tiny-space").sdk == "gradio"
    card = SpaceCard.load(hf_hub_download("alice/tiny-space", "README.md", repo_type="space"))
    assert card.data.sdk == "gradio" and "alice/space-base" in card.data.models
    commits = len(api.list_repo_commits("alice/tiny-space", repo_type="space"))
    again = quantforge(*push, env=token)
    assert "already holds exactly these files" in again.stdout
    assert len(api.list_repo_commits("alice/tiny-space", repo_type="space")) == commits
    # the engine downloads each variant from the Hub on first use
    side = SideBySide(out)
    try:
        panels = _last(side.compare(["base", "llamacpp-q4_k_m"], PROMPT, Sampling(4)))
        assert {p.state for p in panels.values()} == {"done"}, panels
        folder = side.pool.files(side.catalog.variant("llamacpp-q4_k_m"))
        assert str(folder).startswith(os.environ["HF_HOME"])
    finally:
        side.pool.close()


# -- the app: API and browser ----------------------------------------------------------


@pytest.fixture(scope="module")
def app_url(space: Path) -> Iterator[str]:
    """The app in this process on 127.0.0.1, offline, as the Space would run it."""
    with served_space(space, Limits(max_new_tokens=64, time_limit_s=60)) as url:
        yield url


def test_the_api_answers_through_gradio_client(app_url: str) -> None:
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    out: dict[str, Any] = client.predict(
        PROMPT, ["base", "llamacpp-q4_k_m", "gone"], 12, 0.0, 0, api_name="/compare"
    )
    panels = {p["name"]: p for p in out["panels"]}
    for name in ("base", "llamacpp-q4_k_m"):
        assert panels[name]["state"] == "done" and len(panels[name]["tokens"]) == 12
        assert panels[name]["decode_tokens_per_s"] > 0 and panels[name]["time_to_first_token_s"] > 0
    assert panels["gone"]["state"] == "not runnable" and "missing" in panels["gone"]["message"]
    assert client.predict("", ["base"], 12, 0.0, 0, api_name="/compare") == {
        "error": "the prompt is empty (type a prompt, then press Generate)"
    }
    assert (
        "limit is 64" in client.predict(PROMPT, ["base"], 65, 0.0, 0, api_name="/compare")["error"]
    )
    status, *slots = client.predict(PROMPT, ["base", "rtn-int8"], 8, 0.0, 0, api_name="/generate")
    assert status.startswith("Done in")
    assert "### base" in slots[0]["value"] and "tok/s" in slots[2]["value"]
    assert slots[9]["visible"] is False  # the fourth column stays empty


def test_the_page_in_headless_chromium(app_url: str, cache_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).is_file(), "Debian's chromium is missing: apt-get install -y chromium"
    shot = cache_dir / "screenshots" / "space.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser, page = open_space_page(pw, app_url)
        # the variants that cannot run are listed with why before anyone asks
        expect(page.locator("#qf-not-runnable")).to_contain_text("gone")
        variants = page.locator("#qf-variants")
        variants.get_by_label("rtn-int8", exact=True).uncheck()  # default: base + rtn-int8
        variants.get_by_label("llamacpp-q4_k_m", exact=True).check()
        ask_space(page, PROMPT, 32, 120_000)
        names = [page.locator(f"#qf-name-{i}").inner_text() for i in range(2)]
        assert names[0].startswith("base") and names[1].startswith("llamacpp-q4_k_m")
        texts = [page.locator(f"#qf-output-{i}").inner_text() for i in range(2)]
        stats = [page.locator(f"#qf-stats-{i}").inner_text() for i in range(2)]
        assert all(t.strip() for t in texts), texts
        for line in stats:
            assert "tok/s" in line and "32 tokens" in line and "first token" in line, line
        assert "llama.cpp" in stats[1]
        assert page.locator("#qf-slot-2 .qf-text").count() == 0  # unused columns stay empty
        assert not page.locator("#qf-slot-2").is_visible()
        expect(page.locator("#qf-table")).to_contain_text("KL vs base")
        expect(page.locator("#qf-table")).to_contain_text("llama.cpp")
        expect(page.locator("#qf-fit")).to_contain_text("rpi5")
        expect(page.locator("#qf-recommendations")).to_contain_text(
            "rpi5 (estimate from a device profile): llamacpp-q4_k_m"
        )
        expect(page.locator("#qf-plot img")).to_be_visible()
        # an empty prompt gets one line, and the previous answers are cleared
        page.locator("#qf-prompt textarea").fill("")
        page.locator("#qf-generate").click()
        expect(page.locator("#qf-status")).to_contain_text("the prompt is empty")
        page.locator("#qf-prompt textarea").fill(PROMPT)
        page.locator("#qf-generate").click()
        expect(page.locator("#qf-status")).to_contain_text("Done in", timeout=120_000)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000
