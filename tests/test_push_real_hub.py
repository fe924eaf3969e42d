"""Opt-in: push one variant to the real Hugging Face Hub.

Runs only when QUANTFORGE_REAL_HUB_TOKEN (a write token) and QUANTFORGE_REAL_HUB_NAMESPACE
are set and huggingface.co answers; otherwise it is skipped, and a skip is not a pass.
It creates a private repo, checks the upload byte for byte, and deletes the repo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, quantforge

TOKEN = os.environ.get("QUANTFORGE_REAL_HUB_TOKEN")
NAMESPACE = os.environ.get("QUANTFORGE_REAL_HUB_NAMESPACE")
REAL = "https://huggingface.co"


def _reachable() -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(f"{REAL}/api/whoami-v2", timeout=5)  # noqa: S310
    except OSError as exc:
        return getattr(exc, "code", None) == 401  # answered, without a token
    return True


pytestmark = pytest.mark.skipif(
    not (TOKEN and NAMESPACE and _reachable()),
    reason="set QUANTFORGE_REAL_HUB_TOKEN and QUANTFORGE_REAL_HUB_NAMESPACE, with network",
)


def test_push_to_the_real_hub(tiny_model: Path, tmp_path: Path) -> None:
    assert TOKEN and NAMESPACE
    run = tmp_path / "run"
    done = quantforge(
        "quantize", str(tiny_model), "-v", "rtn:int4", "--target", "cpu", "--evaluator", "size",
        "--out", str(run),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "HF_ENDPOINT": REAL, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1"}
    scheme = f"quantforge-ci-{os.getpid()}-{{variant}}"
    args = [sys.executable, "-m", "quantforge", "push", str(run), "--namespace", NAMESPACE]
    args += ["--repo-name", scheme, "--private"]
    pushed = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    repo_id = f"{NAMESPACE}/quantforge-ci-{os.getpid()}-rtn-int4"
    check = f"""
import json, sys
from pathlib import Path
from huggingface_hub import HfApi, hf_hub_download
api = HfApi()
try:
    local = Path(sys.argv[1])
    same = all(
        Path(hf_hub_download({repo_id!r}, p.name)).read_bytes() == p.read_bytes()
        for p in local.iterdir() if p.is_file()
    )
    print(json.dumps({{"same": same}}))
finally:
    api.delete_repo({repo_id!r}, missing_ok=True)
"""
    folder = (run / "variants" / "rtn-int4").resolve()
    checked = subprocess.run(
        [sys.executable, "-c", check, str(folder)], env=env, capture_output=True, text=True
    )
    assert pushed.returncode == 0, pushed.stderr
    assert TOKEN not in pushed.stdout + pushed.stderr
    assert json.loads(checked.stdout.strip().splitlines()[-1]) == {"same": True}, checked.stderr
