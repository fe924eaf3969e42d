"""The main job: `quantforge demo` builds the tiny model, makes the variants and measures them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import WRITE_TOKEN, quantforge


def test_demo_measures_every_variant(tmp_path: Path, hub) -> None:  # type: ignore[no-untyped-def]
    out = quantforge("demo", "--out", str(tmp_path / "demo"), "--json", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    (table,) = result["tables"]
    assert table["target"] == "cpu"
    rows = {r["variant"]: r for r in table["rows"]}
    assert list(rows) == ["base", "rtn-int4", "bnb-nf4", "bnb-int8"]
    metrics = {
        "size_mb",
        "peak_rss_mb",
        "model_memory_mb",
        "prefill_tps",
        "decode_tps",
        "perplexity",
        "kl_divergence",
        "top1_agreement",
    }
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row["error"])
        assert metrics <= set(row["metrics"]), name
    m = {name: row["metrics"] for name, row in rows.items()}
    # Quantization really shrinks the model, and quality loss is ordered by bits.
    assert m["rtn-int4"]["size_mb"] < m["bnb-int8"]["size_mb"] < m["base"]["size_mb"]
    assert m["bnb-nf4"]["size_mb"] < 0.6 * m["base"]["size_mb"]
    assert m["base"]["kl_divergence"] == 0 and m["base"]["top1_agreement"] == 1
    assert m["bnb-int8"]["kl_divergence"] < m["bnb-nf4"]["kl_divergence"]
    assert m["bnb-int8"]["kl_divergence"] < m["rtn-int4"]["kl_divergence"]
    assert m["bnb-int8"]["top1_agreement"] > m["rtn-int4"]["top1_agreement"]
    # Every number carries its provenance.
    for row in result["measurements"]:
        prov = row["provenance"]
        assert prov["hardware"] and prov["libraries"]["torch"].startswith("2.13")
        assert prov["dataset_fingerprint"].startswith("sha256:") and prov["base_revision"]
    # The printed table comes from the same store.
    table_out = quantforge("results", str(tmp_path / "demo"))
    assert (
        table_out.returncode == 0
        and "bnb-nf4" in table_out.stdout
        and "KL vs base" in table_out.stdout
    )
    # ... and goes to the Hub: a repo and a commit per variant, the base beside them in a collection
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(token=WRITE_TOKEN)
    api.create_repo("qf-org/demo-base", exist_ok=True)
    pushed = quantforge(
        "push", str(tmp_path / "demo"), "--namespace", "qf-org", "--base-model", "qf-org/demo-base",
        "--collection", "demo family", "--repo-name", "demo-{variant}", env={"HF_TOKEN": WRITE_TOKEN},
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    for name in ("rtn-int4", "bnb-nf4", "bnb-int8"):
        repo_id = f"qf-org/demo-{name}"
        assert len(api.list_repo_commits(repo_id)) == 2
        local = (tmp_path / "demo" / "variants" / name).resolve() / "model.safetensors"
        got = hf_hub_download(repo_id, "model.safetensors", token=WRITE_TOKEN)
        assert Path(got).read_bytes() == local.read_bytes()
    (collection,) = [c for c in hub.state.collections.values() if c["title"] == "demo family"]
    assert [i["id"] for i in collection["items"]] == [
        "qf-org/demo-base", "qf-org/demo-rtn-int4", "qf-org/demo-bnb-nf4", "qf-org/demo-bnb-int8",
    ]  # fmt: skip
