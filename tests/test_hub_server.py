"""The local Hub-protocol server, driven only through the real huggingface_hub client.

These pin the protocol the publishing code relies on (create, LFS upload, commit,
download, refs, collections, card validation), so a failure in a push test points at
quantforge and not at the test double.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import READ_TOKEN, WRITE_TOKEN


def test_a_folder_uploads_in_one_commit_and_downloads_byte_for_byte(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(token=WRITE_TOKEN)
    assert api.whoami()["name"] == "alice"
    api.create_repo("qf-org/protocol", exist_ok=True)
    api.create_repo("qf-org/protocol", exist_ok=True)  # a second create is not an error
    folder = tmp_path / "upload"
    folder.mkdir()
    files = {
        "model.safetensors": os.urandom(2_500_000),  # LFS
        "config.json": b'{"model_type": "llama"}',  # a regular git blob
        "sub/notes.txt": b"nested\n",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    commit = api.upload_folder(folder_path=folder, repo_id="qf-org/protocol", commit_message="add")
    assert len(api.list_repo_commits("qf-org/protocol")) == 2  # the initial commit + one
    for name, data in files.items():
        got = hf_hub_download("qf-org/protocol", name, revision=commit.oid, token=WRITE_TOKEN)
        assert Path(got).read_bytes() == data
    tree = {f.path: f for f in api.list_repo_tree("qf-org/protocol", recursive=True)}
    assert tree["model.safetensors"].lfs is not None and tree["config.json"].lfs is None
    # an LFS object already on the server is not uploaded again
    before = len([r for r in hub.state.requests if r[1].startswith("/lfs-upload/")])
    api.upload_file(
        path_or_fileobj=files["model.safetensors"],
        path_in_repo="copy.safetensors",
        repo_id="qf-org/protocol",
    )
    assert len([r for r in hub.state.requests if r[1].startswith("/lfs-upload/")]) == before


def test_branches_tags_and_collections(hub) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi

    api = HfApi(token=WRITE_TOKEN)
    api.create_repo("qf-org/refs", exist_ok=True)
    api.create_branch("qf-org/refs", branch="q4")
    api.upload_file(
        path_or_fileobj=b"4", path_in_repo="bits.txt", repo_id="qf-org/refs", revision="q4"
    )
    api.create_tag("qf-org/refs", tag="v1", revision="q4")
    refs = api.list_repo_refs("qf-org/refs")
    assert {b.name for b in refs.branches} == {"main", "q4"}
    assert [t.name for t in refs.tags] == ["v1"]
    assert "bits.txt" not in api.list_repo_files("qf-org/refs")
    assert "bits.txt" in api.list_repo_files("qf-org/refs", revision="q4")
    collection = api.create_collection("refs family", namespace="qf-org")
    api.add_collection_item(collection.slug, item_id="qf-org/refs", item_type="model", note="q4")
    items = api.get_collection(collection.slug).items
    assert [(i.item_id, i.note) for i in items] == [("qf-org/refs", "q4")]


def test_tokens_and_namespaces_are_enforced(hub) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    with pytest.raises(HfHubHTTPError, match="write access"):
        HfApi(token=READ_TOKEN).create_repo("bob/nope")
    with pytest.raises(HfHubHTTPError, match="rights to create a model under the namespace"):
        HfApi(token=WRITE_TOKEN).create_repo("someone-else/nope")
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        HfApi(token="hf_wrong").whoami()
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=WRITE_TOKEN).model_info("qf-org/never-created")
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo("alice/short-lived")
    assert api.repo_exists("alice/short-lived")
    api.delete_repo("alice/short-lived")
    assert not api.repo_exists("alice/short-lived")


def test_generated_cards_pass_card_validation(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from huggingface_hub import ModelCard

    examples = Path(__file__).resolve().parent.parent / "model_cards" / "examples"
    cards = sorted(examples.rglob("README.md"))
    assert len(cards) >= 4
    for path in cards:
        ModelCard.load(path).validate()  # POST /api/validate-yaml
    broken = ModelCard("---\nlicense: not-a-license\nbase_model_relation: quantized\n---\n# x\n")
    with pytest.raises(ValueError, match="license"):
        broken.validate()
