"""llama.cpp's own HF -> GGUF converter, from the llama-cpp-python release that is installed.

``convert_hf_to_gguf.py``, its ``conversion/`` package and the matching ``gguf-py``
ship only in llama-cpp-python's source distribution (PyPI ``gguf`` does not match
the script). They are fetched once per version from the package index with pip and
kept in the quantforge cache; ``QUANTFORGE_LLAMA_CPP_DIR`` may point at a llama.cpp
checkout instead.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from quantforge.errors import MissingDependencyError, QuantforgeError
from quantforge.model.package_index import pip_download

CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise MissingDependencyError("llama.cpp", ["llama-cpp-python"], "gguf") from None


def _cache_dir() -> Path:
    from quantforge.running.runner import default_cache_dir

    return default_cache_dir() / "llama.cpp"


def cached_converter() -> Path | None:
    """The converter folder when it is already here (no fetching)."""
    env = os.environ.get("QUANTFORGE_LLAMA_CPP_DIR")
    if env:
        return Path(env)
    try:
        folder = _cache_dir() / llama_cpp_version()
    except MissingDependencyError:
        return None
    return folder if (folder / "convert_hf_to_gguf.py").exists() else None


def converter_dir() -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` for the installed llama.cpp, fetched once."""
    env = os.environ.get("QUANTFORGE_LLAMA_CPP_DIR")
    if env:
        folder = Path(env)
        if not (folder / "convert_hf_to_gguf.py").exists():
            raise QuantforgeError(
                f"QUANTFORGE_LLAMA_CPP_DIR={env} holds no convert_hf_to_gguf.py",
                hint="point it at a llama.cpp checkout, or unset it to fetch the matching one",
            )
        return folder
    found = cached_converter()
    if found:
        return found
    version = llama_cpp_version()
    final = _cache_dir() / version
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as tmp:
        files, error = pip_download(f"llama-cpp-python=={version}", Path(tmp), sources=True)
        archives = [
            f for f in files if f.name.startswith("llama_cpp_python-") and f.suffix == ".gz"
        ]
        if error or not archives:
            raise QuantforgeError(
                f"cannot fetch llama.cpp's converter (llama-cpp-python {version} sources): "
                f"{error or 'no source archive'}",
                hint="check access to the package index, or set QUANTFORGE_LLAMA_CPP_DIR "
                "to a llama.cpp checkout of the same version",
            )
        staging = Path(tmp) / "converter"
        staging.mkdir()
        with tarfile.open(archives[0]) as tar:
            prefix = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(prefix)
                and m.name[len(prefix) :].split("/")[0] in CONVERTER_FILES
                and (m.isfile() or m.isdir())
            ]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(staging, members=members, filter="data")
        try:
            staging.rename(final)
        except OSError:  # another process finished first
            if not (final / "convert_hf_to_gguf.py").exists():
                raise
    return final


def supported_architectures(folder: Path) -> frozenset[str]:
    """Architectures the converter knows, read from its ``TEXT_MODEL_MAP`` without importing it."""
    source = (folder / "conversion" / "__init__.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == "TEXT_MODEL_MAP" for t in targets):
                assert node.value is not None
                return frozenset(ast.literal_eval(node.value))
    return frozenset()


def _run_converter(model: Path, outfile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    folder = converter_dir()
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    return subprocess.run(
        [
            sys.executable,
            str(folder / "convert_hf_to_gguf.py"),
            str(model),
            "--outfile",
            str(outfile),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def _last_error(out: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in out.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "ERROR" in ln or "error" in ln]
    return (errors or lines or ["no output"])[-1]


def convert(model: Path, outfile: Path, outtype: str) -> None:
    """Run ``convert_hf_to_gguf.py``; its own last error line goes into the raised error."""
    out = _run_converter(model, outfile, "--outtype", outtype)
    sys.stderr.write(out.stderr[-20000:])
    if out.returncode or not outfile.exists():
        raise QuantforgeError(
            f"llama.cpp's convert_hf_to_gguf.py failed on {model.name}: {_last_error(out)}",
            hint="llama.cpp may not support this model yet; see its log above",
        )


# loads a vocab-only GGUF with llama.cpp itself; what it says on failure is on stderr
_LOAD_VOCAB = (
    "import sys\nfrom llama_cpp import Llama\n"
    "Llama(model_path=sys.argv[1], vocab_only=True, verbose=True)"
)


def _check_vocab(model: Path) -> str | None:
    with tempfile.TemporaryDirectory(prefix="gguf-vocab-") as tmp:
        vocab = Path(tmp) / "vocab.gguf"
        out = _run_converter(model, vocab, "--vocab-only")
        if out.returncode:
            return f"its converter fails: {_last_error(out)}"
        loaded = subprocess.run(
            [sys.executable, "-c", _LOAD_VOCAB, str(vocab)], capture_output=True, text=True
        )
        if loaded.returncode:
            lines = [ln for ln in loaded.stderr.splitlines() if "error loading model" in ln]
            reason = lines[-1].split(": ", 1)[-1] if lines else _last_error(loaded)
            return f"llama.cpp cannot load the converted vocabulary: {reason}"
    return None


def _vocab_key(model: Path) -> str:
    """What the check's answer depends on: the converter (its version, or the checkout
    ``QUANTFORGE_LLAMA_CPP_DIR`` names), the transformers that loads the tokenizer for it,
    and the bytes of the config and tokenizer files."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    digest.update((os.environ.get("QUANTFORGE_LLAMA_CPP_DIR") or llama_cpp_version()).encode())
    digest.update(version("transformers").encode())
    files = sorted(p for p in model.glob("tokenizer*") if p.is_file())
    for path in [model / "config.json", *files]:
        if path.is_file():
            digest.update(f"\0{path.name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:32]


def vocab_problem(model: Path) -> str | None:
    """Why llama.cpp cannot take the model's config and tokenizer, or ``None``: its converter
    run with ``--vocab-only`` (seconds; the weights are not read), then llama.cpp loading
    that vocabulary. A BPE tokenizer the converter does not know by the hash of its output,
    a config field it lacks, a vocabulary llama.cpp cannot load: all are refused here,
    before any compute. The answer is kept in the cache by the content of the files it
    depends on, so the next run on the same model does not pay for the check again."""
    kept = _cache_dir() / "vocab-checks" / f"{_vocab_key(model)}.json"
    try:
        return json.loads(kept.read_text(encoding="utf-8"))["problem"]  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError):
        pass
    problem = _check_vocab(model.resolve())
    with contextlib.suppress(OSError):  # a cache that cannot be written: check next time
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_name(f".{kept.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"problem": problem, "model": str(model)}), encoding="utf-8")
        tmp.replace(kept)
    return problem


def remove_fetched() -> None:
    """Forget the cached converter of the installed version (it is fetched again when needed)."""
    shutil.rmtree(_cache_dir() / llama_cpp_version(), ignore_errors=True)
