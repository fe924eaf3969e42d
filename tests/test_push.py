"""``quantforge push`` against the local Hub-protocol server, through huggingface_hub only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import READ_TOKEN, ROOT, WRITE_TOKEN, fails_with, quantforge

VARIANTS = ("rtn-int4", "rtn-int8", "rtn-int4-group_size64")


@pytest.fixture(scope="module")
def run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the same run as tests/test_cards.py: its steps and measurements come from the cache
    out = tmp_path_factory.mktemp("push") / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "rtn:int4", "-v", "rtn:int8", "-v", "rtn:int4,group_size=64",
        "--target", "cpu", "--target", "rpi5,context=256", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def base_on_hub(hub, tiny_model: Path) -> str:  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    api = HfApi(token=WRITE_TOKEN)
    api.create_repo("qf-org/tiny-llama", exist_ok=True)
    api.upload_folder(folder_path=tiny_model, repo_id="qf-org/tiny-llama")
    return "qf-org/tiny-llama"


def _push(
    run: Path, *args: str, token: str | None = WRITE_TOKEN
) -> subprocess.CompletedProcess[str]:
    env = {"HF_TOKEN": token} if token else {}
    return quantforge("push", str(run), *args, env=env)


def _repo_ids(run: Path, namespace: str) -> dict[str, str]:
    base = Path(
        json.loads(quantforge("results", str(run), "--json").stdout)["run"]["base_model"]
    ).name
    return {
        "rtn-int4": f"{namespace}/{base}-rtn-int4",  # two int4 RTN variants: named by variant
        "rtn-int4-group_size64": f"{namespace}/{base}-rtn-int4-group_size64",
        "rtn-int8": f"{namespace}/{base}-rtn-8bit",
    }


def _variant_folder(run: Path, name: str) -> Path:
    return (run / "variants" / name).resolve()


def test_push_creates_one_repo_and_commit_per_variant_and_files_match(  # type: ignore[no-untyped-def]
    hub, run: Path, base_on_hub: str
) -> None:
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    done = _push(
        run, "--namespace", "qf-org", "--base-model", base_on_hub, "--collection", "tiny family",
        "--quantized-by", "quantforge-ci",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert WRITE_TOKEN not in done.stdout + done.stderr
    api = HfApi(token=WRITE_TOKEN)
    ids = _repo_ids(run, "qf-org")
    for name, repo_id in ids.items():
        assert len(api.list_repo_commits(repo_id)) == 2  # the repo's initial commit + ours
        folder = _variant_folder(run, name)
        local = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
        remote = set(api.list_repo_files(repo_id))
        assert set(local) | {"README.md", "quantforge-tradeoffs.png"} <= remote
        for path, file in local.items():
            got = hf_hub_download(repo_id, path, token=WRITE_TOKEN)
            assert Path(got).read_bytes() == file.read_bytes(), path
        card = ModelCard.load(hf_hub_download(repo_id, "README.md", token=WRITE_TOKEN))
        card.validate()
        assert card.data.base_model == base_on_hub and card.data.base_model_relation == "quantized"
        assert WRITE_TOKEN not in card.text
    (collection,) = [c for c in hub.state.collections.values() if c["title"] == "tiny family"]
    assert [i["id"] for i in collection["items"]] == [base_on_hub, *[ids[v] for v in VARIANTS]]
    assert not any(WRITE_TOKEN in p.read_text(errors="ignore") for p in run.rglob("*.log"))


def test_a_second_push_uploads_nothing_and_creates_nothing(  # type: ignore[no-untyped-def]
    hub, run: Path, base_on_hub: str
) -> None:
    from huggingface_hub import HfApi

    first = _push(
        run, "--namespace", "qf-org", "--base-model", base_on_hub, "--collection", "tiny family"
    )
    assert first.returncode == 0, first.stderr
    api = HfApi(token=WRITE_TOKEN)
    ids = _repo_ids(run, "qf-org")
    commits = {r: len(api.list_repo_commits(r)) for r in ids.values()}
    collections = len(hub.state.collections)
    writes = [r for r in hub.state.requests if r[0] in ("POST", "PUT")]
    again = _push(
        run, "--namespace", "qf-org", "--base-model", base_on_hub, "--collection", "tiny family"
    )
    assert again.returncode == 0, again.stderr
    assert {r: len(api.list_repo_commits(r)) for r in ids.values()} == commits
    assert "3 unchanged" in again.stdout
    new_writes = [r for r in hub.state.requests if r[0] in ("POST", "PUT")][len(writes) :]
    assert not [w for w in new_writes if "/commit/" in w[1] or w[1].startswith("/lfs-upload/")]
    assert len(hub.state.collections) == collections  # the same collection, not a second


def test_dry_run_prints_the_plan_and_writes_nothing(hub, run: Path) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    done = _push(run, "--namespace", "alice", "--dry-run")
    assert done.returncode == 0, done.stderr
    ids = _repo_ids(run, "alice")
    for repo_id in ids.values():
        assert f"create {repo_id}: " in done.stdout
    assert "    model.safetensors (" in done.stdout and "    README.md (" in done.stdout
    assert "Dry run: nothing was created or uploaded." in done.stdout
    for repo_id in ids.values():
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=WRITE_TOKEN).model_info(repo_id)


@pytest.mark.parametrize(
    ("args", "token", "fragments"),
    [
        (["--namespace", "alice"], None, ["no Hugging Face token found", "hf auth login"]),
        (["--namespace", "bob"], READ_TOKEN, ["token of 'bob' is read-only"]),
        (
            ["--namespace", "someone-else"],
            WRITE_TOKEN,
            ["cannot write to the namespace 'someone-else'", "alice, qf-org"],
        ),
        (["--namespace", "bad name!"], WRITE_TOKEN, ["is not a valid Hub repo id"]),
        (
            ["--namespace", "alice", "--variant", "rtn-int5"],
            WRITE_TOKEN,
            ["unknown variant 'rtn-int5'"],
        ),
    ],
)
def test_bad_pushes_fail_in_one_line_and_create_nothing(  # type: ignore[no-untyped-def]
    hub, run: Path, args: list[str], token: str | None, fragments: list[str]
) -> None:
    repos = set(hub.state.repos)
    out = _push(run, *args, token=token)
    fails_with(out, *fragments)
    assert set(hub.state.repos) == repos
    if token:
        assert token not in out.stdout + out.stderr


def test_a_repo_with_unrelated_content_is_refused_unless_overwrite(hub, run: Path) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    api = HfApi(token=WRITE_TOKEN)
    repo_id = _repo_ids(run, "alice")["rtn-int8"]
    api.create_repo(repo_id, exist_ok=True)
    api.upload_file(path_or_fileobj=b"someone else's", path_in_repo="weights.bin", repo_id=repo_id)
    out = _push(run, "--namespace", "alice", "--variant", "rtn-int8")
    fails_with(out, f"{repo_id} already holds other content", "--overwrite")
    assert len(api.list_repo_commits(repo_id)) == 2
    done = _push(run, "--namespace", "alice", "--variant", "rtn-int8", "--overwrite")
    assert done.returncode == 0, done.stderr
    files = set(api.list_repo_files(repo_id))
    assert "weights.bin" not in files and "model.safetensors" in files


def test_a_push_killed_mid_upload_finishes_on_rerun_without_duplicates(  # type: ignore[no-untyped-def]
    hub, run: Path
) -> None:
    from huggingface_hub import HfApi

    namespace = "qf-org"
    scheme = ["--repo-name", "killed-{variant}"]
    hub.state.upload_delay = 1.5
    env = {**os.environ, "HF_TOKEN": WRITE_TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantforge", "push", str(run), "--namespace", namespace, *scheme],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any(p.startswith("/lfs-upload/") for _, p in hub.state.requests[-50:]):
            assert proc.poll() is None and time.monotonic() < deadline, (
                "push ended before uploading"
            )
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-upload: the first commit has not happened
        proc.wait(timeout=30)
    finally:
        hub.state.upload_delay = 0.0
    api = HfApi(token=WRITE_TOKEN)
    ids = {v: f"{namespace}/killed-{v}" for v in VARIANTS}
    assert all(
        len(api.list_repo_commits(r)) == 1
        for r in ids.values()
        if (("model", r) in hub.state.repos)
    )
    done = _push(run, "--namespace", namespace, *scheme)
    assert done.returncode == 0, done.stderr
    for repo_id in ids.values():
        assert len(api.list_repo_commits(repo_id)) == 2, repo_id  # exactly one commit of ours
        assert "model.safetensors" in api.list_repo_files(repo_id)
    assert len([k for k in hub.state.repos if k[1].startswith(f"{namespace}/killed-")]) == 3


def test_the_hub_going_down_mid_push_is_one_line_and_a_rerun_after_it_is_back_finishes(  # type: ignore[no-untyped-def]
    hub, run: Path
) -> None:
    """The server stops (listening socket closed, open connections cut) right after the
    first variant's commit, and comes back with its repos: the rerun commits the others
    once each and leaves the first alone."""
    from huggingface_hub import HfApi

    namespace, scheme = "qf-org", ["--repo-name", "outage-{variant}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "quantforge", "push", str(run), "--namespace", namespace, *scheme],
        env={**os.environ, "HF_TOKEN": WRITE_TOKEN}, cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any("/outage-" in p and "/commit/" in p for _, p in hub.state.requests[-50:]):
            assert proc.poll() is None and time.monotonic() < deadline, "push ended first"
            time.sleep(0.02)
        hub.stop()
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        hub.start()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    fails_with(result, "rerun", after_progress=True)
    api = HfApi(token=WRITE_TOKEN)
    ids = [f"{namespace}/outage-{v}" for v in VARIANTS]
    assert 1 <= sum(("model", r) in hub.state.repos for r in ids) < len(ids) + 1
    done = _push(run, "--namespace", namespace, *scheme)
    assert done.returncode == 0, done.stderr
    for repo_id in ids:
        assert len(api.list_repo_commits(repo_id)) == 2, repo_id  # exactly one commit of ours
        assert "model.safetensors" in api.list_repo_files(repo_id)


def test_branch_layout_puts_each_variant_on_a_branch_and_the_family_on_main(  # type: ignore[no-untyped-def]
    hub, run: Path
) -> None:
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    done = _push(
        run, "--namespace", "alice", "--layout", "branches", "--repo-name", "{base}-family"
    )
    assert done.returncode == 0, done.stderr
    base = Path(
        json.loads(quantforge("results", str(run), "--json").stdout)["run"]["base_model"]
    ).name
    repo_id = f"alice/{base}-family"
    api = HfApi(token=WRITE_TOKEN)
    refs = api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", *VARIANTS}
    assert set(api.list_repo_files(repo_id)) == {"README.md", "quantforge-tradeoffs.png"}
    family = ModelCard.load(hf_hub_download(repo_id, "README.md", token=WRITE_TOKEN))
    family.validate()
    assert f"[rtn-int8](https://huggingface.co/{repo_id}/tree/rtn-int8)" in family.text
    for name in VARIANTS:
        folder = _variant_folder(run, name)
        for file in folder.rglob("*"):
            if file.is_file():
                path = file.relative_to(folder).as_posix()
                got = hf_hub_download(repo_id, path, revision=name, token=WRITE_TOKEN)
                assert Path(got).read_bytes() == file.read_bytes(), (name, path)
        card = hf_hub_download(repo_id, "README.md", revision=name, token=WRITE_TOKEN)
        assert f'from_pretrained("{repo_id}", revision="{name}")' in Path(card).read_text()
    again = _push(
        run, "--namespace", "alice", "--layout", "branches", "--repo-name", "{base}-family"
    )
    assert again.returncode == 0 and "4 unchanged" in again.stdout, again.stdout + again.stderr
    bad = _push(run, "--namespace", "alice", "--layout", "branches", "--repo-name", "{variant}")
    fails_with(bad, "with --layout branches the repo name may use {base} only")


@pytest.fixture(scope="module")
def gguf_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("push-gguf") / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "gguf", "-v", "llamacpp:q8_0", "-v", "llamacpp:q4_k_m",
        "-v", "rtn:int4", "--target", "llama.cpp", "--target", "cpu", "--out", str(out),
        timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.slow
def test_gguf_variants_can_share_one_repo_a_file_per_type(hub, gguf_run: Path) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    done = _push(gguf_run, "--namespace", "qf-org", "--gguf-repo", "{base}-GGUF")
    assert done.returncode == 0, done.stderr
    base = Path(
        json.loads(quantforge("results", str(gguf_run), "--json").stdout)["run"]["base_model"]
    ).name
    repo_id = f"qf-org/{base}-GGUF"
    api = HfApi(token=WRITE_TOKEN)
    assert len(api.list_repo_commits(repo_id)) == 2  # every GGUF file in one commit
    expected = {"gguf": "F16", "llamacpp-q8_0": "Q8_0", "llamacpp-q4_k_m": "Q4_K_M"}
    for name, label in expected.items():
        local = next(_variant_folder(gguf_run, name).glob("*.gguf"))
        got = hf_hub_download(repo_id, f"{base}-{label}.gguf", token=WRITE_TOKEN)
        assert Path(got).read_bytes() == local.read_bytes()
        assert f"quantforge/{name}.json" in api.list_repo_files(repo_id)
    card = ModelCard.load(hf_hub_download(repo_id, "README.md", token=WRITE_TOKEN))
    card.validate()
    assert card.data.library_name == "gguf"
    assert f"llama-cli -hf {repo_id}:Q4_K_M" in card.text
    assert f"| `{base}-Q8_0.gguf` | Q8_0 |" in card.text
    # the non-GGUF variant still gets a repo of its own, and its card links to the GGUF repo
    rtn = f"qf-org/{base}-rtn-4bit"
    assert "model.safetensors" in api.list_repo_files(rtn)
    rtn_card = Path(hf_hub_download(rtn, "README.md", token=WRITE_TOKEN)).read_text()
    assert f"[llamacpp-q4_k_m](https://huggingface.co/{repo_id})" in rtn_card
    again = _push(gguf_run, "--namespace", "qf-org", "--gguf-repo", "{base}-GGUF")
    assert again.returncode == 0 and "2 unchanged" in again.stdout, again.stdout + again.stderr


def test_a_variant_folder_with_missing_files_is_refused_before_any_write(  # type: ignore[no-untyped-def]
    hub, run: Path, tmp_path: Path
) -> None:
    import shutil
    import sqlite3

    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True)
    broken = tmp_path / "broken-variant"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    with sqlite3.connect(copy / "results.sqlite") as db:
        db.execute("UPDATE variants SET path=? WHERE name='rtn-int8'", (str(broken),))
    repos = set(hub.state.repos)
    out = _push(copy, "--namespace", "alice", "--repo-name", "broken-{variant}")
    fails_with(out, f"variant folder {broken} is missing files", "quantforge quantize")
    assert set(hub.state.repos) == repos


def test_an_unreachable_hub_is_one_line_and_names_the_rerun(run: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = quantforge(
        "push", str(run), "--namespace", "alice",
        env={"HF_TOKEN": WRITE_TOKEN, "HF_ENDPOINT": f"http://127.0.0.1:{port}"},
    )  # fmt: skip
    fails_with(out, f"http://127.0.0.1:{port} could not be reached", "rerun the same command")
    assert WRITE_TOKEN not in out.stderr


def test_no_token_value_appears_in_any_output_log_card_store_or_space(  # type: ignore[no-untyped-def]
    hub, run: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Every command that may see HF_TOKEN, with a good token and a bad one, and every
    file they and the Hub server wrote: grepped for the tokens' values."""
    bogus = "hf_quantforge_bogus_value_8f3a"
    env = {"HF_TOKEN": WRITE_TOKEN}
    measured = tmp_path / "measured"  # workers inherit the environment, token included
    scheme = ["--repo-name", "secret-{variant}"]
    outputs = [
        quantforge("quantize", str(tiny_model), "-v", "rtn:int8", "--evaluator", "size",
                   "--out", str(measured), env=env),
        quantforge("push", str(measured), "--namespace", "alice", *scheme, "--collection",
                   "Secret test", env=env),
        quantforge("push", str(run), "--namespace", "alice", "--dry-run", env=env),
        quantforge("push", str(run), "--namespace", "someone-else", env=env),
        quantforge("push", str(run), "--namespace", "alice", env={"HF_TOKEN": bogus}),
        quantforge("cards", str(measured), "--out", str(tmp_path / "cards"), "--namespace",
                   "alice", *scheme, env=env),
        quantforge("space", "build", str(measured), "--out", str(tmp_path / "space"),
                   "--namespace", "alice", *scheme, env=env),
        quantforge("space", "push", str(tmp_path / "space"), "--repo-id", "alice/secret-space",
                   env=env),
        quantforge("results", str(measured), "--json", env=env),
    ]  # fmt: skip
    assert [o.returncode for o in outputs] == [0, 0, 0, 2, 2, 0, 0, 0, 0], [
        o.stderr[-300:] for o in outputs
    ]
    secrets = (WRITE_TOKEN, bogus)
    for out in outputs:
        assert not any(s in out.stdout + out.stderr for s in secrets), out.args
    folders = [measured, tmp_path / "cards", tmp_path / "space", hub.state.root]
    files = [f for folder in folders for f in folder.rglob("*") if f.is_file()]
    assert len(files) > 20  # logs, store, cards, the Space, the Hub's blobs
    for file in files:
        data = file.read_bytes()
        assert not any(s.encode() in data for s in secrets), file
