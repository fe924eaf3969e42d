"""A Gradio Space folder from a run: the app, the results it reads, and where each variant lives.

``quantforge space build RUN`` writes a folder that is a complete Space repo:

- ``README.md``: the Space card (``sdk: gradio``, ``app_file``), written by
  huggingface_hub's ``SpaceCard``;
- ``app.py``: the app (``spaces/app.py`` of this repo);
- ``results.sqlite``: the run's results store, read by the app as cards read it;
- ``quantforge-space.json``: the catalog, one entry per variant with the target that runs
  it and where its files are (a local folder, or a Hub repo and revision);
- ``tokenizer/``: the base tokenizer, so every variant gets the same token ids;
- ``requirements.txt``: the libraries those targets and loaders need, pinned to the
  versions that measured the run, with PyTorch from its CPU index;
- ``vendor/``: quantforge and its first-party plugins with their entry points, used
  when quantforge is not installed (as on the Hub, where it is not on PyPI).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from quantforge.errors import ResultsError, UsageError
from quantforge.model import artifacts
from quantforge.publishing.repo_names import DEFAULT_REPO_SCHEME, check_repo_id, repo_ids
from quantforge.store.facts import RunFacts
from quantforge.store.results import STORE_NAME

CATALOG_FILE = "quantforge-space.json"
APP_FILE = "app.py"
TOKENIZER_DIR = "tokenizer"
VENDOR_DIR = "vendor"
APP_SOURCE = Path(__file__).parent / "space_app" / "app.py"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# the Space SDK installs gradio itself, at the card's sdk_version
SDK_PROVIDED = {"gradio", "gradio-client"}
# a loaded model takes more than its weights: activations, KV cache, runtime buffers
MEMORY_OVERHEAD = 1.3


@dataclass(frozen=True)
class SpaceVariant:
    """One variant the Space offers.

    :ivar target: the target that measured it in the run (the app falls back to another
        available target that runs the format).
    :ivar producer: the quantizer whose ``load_model`` loads it (``None``: the target's own loader).
    :ivar source: ``{"path": ...}`` or ``{"repo_id": ..., "revision": ...}``.
    :ivar memory_mb: what loading it is expected to take (measured peak RSS when the run
        has it, else size on disk with overhead), for the app's memory budget.
    """

    name: str
    method: str
    bits: str
    format: str
    target: str | None
    producer: str | None
    source: Mapping[str, Any]
    memory_mb: float | None

    @property
    def where(self) -> str:
        if "repo_id" in self.source:
            revision = self.source.get("revision") or "main"
            return str(self.source["repo_id"]) + ("" if revision == "main" else f"@{revision}")
        return str(self.source.get("path"))


@dataclass(frozen=True)
class Catalog:
    """What a Space folder offers (``quantforge-space.json``)."""

    title: str
    base_model: str | None
    run_id: str
    variants: list[SpaceVariant]

    @classmethod
    def read(cls, folder: Path) -> Catalog:
        file = folder / CATALOG_FILE
        if not file.is_file():
            raise UsageError(
                f"{folder} is not a quantforge Space folder (no {CATALOG_FILE})",
                hint="make one with `quantforge space build RUN`",
            )
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            variants = [SpaceVariant(**v) for v in data["variants"]]
            return cls(data["title"], data.get("base_model"), data["run_id"], variants)
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{file} is damaged ({type(exc).__name__}: {exc})") from None

    def write(self, folder: Path) -> None:
        data = {**asdict(self), "variants": [asdict(v) for v in self.variants]}
        (folder / CATALOG_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def variant(self, name: str) -> SpaceVariant:
        for v in self.variants:
            if v.name == name:
                return v
        from quantforge.errors import UnknownNameError

        raise UnknownNameError("variant", name, [v.name for v in self.variants])

    def hub_repos(self) -> list[str]:
        return list(
            dict.fromkeys(v.source["repo_id"] for v in self.variants if "repo_id" in v.source)
        )


def load_facts(run_dir: Path) -> RunFacts:
    """The run's facts; refuses a store with no measurements (nothing to show)."""
    facts = RunFacts.load(run_dir)
    if not facts.rows:
        raise ResultsError(
            f"the results store in {run_dir} holds no measurements",
            hint="measure the run first: `quantforge quantize MODEL -v ... --target cpu`",
        )
    if not facts.variants:
        raise ResultsError(f"the results store in {run_dir} holds no built variants")
    return facts


def producer(variant_steps: Sequence[Mapping[str, Any]], fmt: str) -> str | None:
    """The quantizer that loads a variant: its last quantize step, else the format's suffix
    (``hf+gptq`` -> ``gptq``, for imported checkpoints)."""
    for step in reversed(variant_steps):
        if step.get("kind") == "quantize":
            return str(step["method"])
    return fmt.split("+", 1)[1] if "+" in fmt else None


def _memory_mb(facts: RunFacts, name: str, target: str | None) -> float | None:
    if target is not None:
        rss = facts.value(name, target, "peak_rss_mb")
        if rss:
            return rss
    for t in facts.targets("measured"):
        size = facts.value(name, t, "size_mb")
        if size:
            return round(size * MEMORY_OVERHEAD, 1)
    return None


def catalog_from_run(
    facts: RunFacts,
    *,
    namespace: str | None = None,
    scheme: str | None = None,
    layout: str = "repos",
    base_model: str | None = None,
) -> Catalog:
    """The catalog of a run: local folders, or the Hub repos ``quantforge push`` made
    (same ``namespace``, ``scheme`` and ``layout``); the base from ``base_model`` on the Hub."""
    from quantforge.publishing.push import FAMILY_REPO_SCHEME

    if namespace:
        check_repo_id(f"{namespace}/x", "the namespace")
    if base_model:
        check_repo_id(base_model, "the base model")
    ids: dict[str, str] = {}
    if namespace and layout == "branches":
        family = f"{namespace}/{(scheme or FAMILY_REPO_SCHEME).format(base=facts.base_name)}"
        check_repo_id(family, "the family repo")
        ids = {v.name: family for v in facts.variants if v.name != "base"}
    elif namespace:
        ids = repo_ids(facts, namespace, scheme or DEFAULT_REPO_SCHEME)
    elif layout != "repos":
        raise UsageError("--layout needs --namespace", hint="name the namespace you pushed to")
    variants = []
    for v in facts.variants:
        source: dict[str, Any]
        if v.name == "base" and namespace:
            source = {"repo_id": base_model, "revision": "main"} if base_model else {}
        elif namespace:
            revision = v.name if layout == "branches" else "main"
            source = {"repo_id": ids[v.name], "revision": revision}
        else:
            source = {"path": str(v.path)} if v.path else {}
        target = facts.measuring_target(v.name) or next(
            (t for t in facts.targets("measured") if facts.value(v.name, t, "size_mb")), None
        )
        variants.append(
            SpaceVariant(
                name=v.name,
                method=v.method,
                bits=v.bits_label,
                format=v.format,
                target=target,
                producer=producer(v.steps, v.format),
                source=source,
                memory_mb=_memory_mb(facts, v.name, target),
            )
        )
    title = f"{base_model or facts.base_name}: quantized variants side by side"
    return Catalog(title, base_model, str(facts.run["run_id"]), variants)


def requirements(extras: Sequence[str], distribution: str = "quantforge") -> list[str]:
    """``requirements.txt`` lines for ``distribution[extras]``: its core and extra
    requirements, followed through its own extras, pinned to the installed versions."""
    from packaging.requirements import Requirement

    requires = [Requirement(r) for r in metadata.distribution(distribution).requires or []]
    wanted = list(dict.fromkeys(extras))
    pinned: dict[str, str] = {}
    grew = True
    while grew:
        grew = False
        for req in requires:
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in wanted
            ):
                continue
            if req.name == distribution:  # quantforge[torch] inside another extra
                new = [e for e in req.extras if e not in wanted]
                wanted.extend(new)
                grew = grew or bool(new)
            elif req.name.lower() not in SDK_PROVIDED:
                try:
                    pinned[req.name.lower()] = f"{req.name}=={metadata.version(req.name)}"
                except metadata.PackageNotFoundError:
                    pinned[req.name.lower()] = f"{req.name}{req.specifier}"
    lines = sorted(pinned.values(), key=str.lower)
    return [f"--extra-index-url {TORCH_CPU_INDEX}", *lines] if "torch" in pinned else lines


def extras_for(catalog: Catalog, plugins: Any) -> list[str]:
    """The pip extras of every target and loader the catalog's variants use."""
    extras = ["space"]
    for v in catalog.variants:
        if v.target in plugins.targets:
            extras.append(plugins.targets.get(v.target).extra or "")
        if v.producer and v.producer in plugins.methods:
            extras.append(plugins.methods.get(v.producer).extra or "")
    return [e for e in dict.fromkeys(extras) if e]


def vendor(folder: Path, distribution: str = "quantforge") -> list[str]:
    """Copy quantforge and the first-party plugins (sources and package data) into
    ``folder``, with a ``.dist-info`` holding their entry points, so that putting ``folder``
    on ``sys.path`` makes them importable and discoverable. Returns the package names."""
    import importlib.util

    dist = metadata.distribution(distribution)
    points = [ep for ep in dist.entry_points if ep.group == "quantforge"]
    packages = ["quantforge", *dict.fromkeys(ep.value.split(".")[0].split(":")[0] for ep in points)]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "testing")
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"cannot find the installed package {package!r} to put in the Space")
        shutil.copytree(
            Path(next(iter(spec.submodule_search_locations))), folder / package, ignore=ignore
        )
    info = folder / f"{distribution}-{dist.version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(dist.read_text("METADATA") or "", encoding="utf-8")
    lines = ["[quantforge]", *(f"{ep.name} = {ep.value}" for ep in points)]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return packages


def space_card(catalog: Catalog, facts: RunFacts, license_: str | None) -> Any:
    """The Space's README: huggingface_hub's SpaceCard with the gradio SDK header."""
    from huggingface_hub import SpaceCard, SpaceCardData

    gradio_version = _installed("gradio")
    models = [r for r in [catalog.base_model, *catalog.hub_repos()] if r]
    data = SpaceCardData(
        title=catalog.title[:60],
        sdk="gradio",
        sdk_version=gradio_version,
        app_file=APP_FILE,
        python_version="3.11",
        license=license_ or "apache-2.0",
        models=list(dict.fromkeys(models)) or None,
        tags=["quantforge", "quantization"],
        short_description="Quantized variants side by side, with measured trade-offs",
    )
    names = ", ".join(v.name for v in catalog.variants)
    body = (
        f"# {catalog.title}\n\n"
        f"Try the variants of `{facts.base_name}` built and measured by quantforge "
        f"(run `{catalog.run_id}`): {names}.\n\n"
        "Pick two or more, give one prompt, and watch them answer side by side with their "
        "time to first token and decode speed measured live on this Space's CPU. The "
        "trade-off table and plot are the run's measurements; device fits are estimates "
        "from device profiles.\n"
    )
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        raise UsageError(
            f"{name} is not installed", hint="pip install 'quantforge[space]'"
        ) from None


def _copy_tokenizer(facts: RunFacts, out: Path) -> None:
    """The base tokenizer files, from the base model folder or the first variant holding them."""
    candidates = [Path(str(facts.config.get("model") or facts.run["base_model"]))]
    candidates += [v.path for v in facts.variants if v.path]
    for folder in candidates:
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file():
            out.mkdir()
            artifacts.copy_files(folder, out, artifacts.TOKENIZER_FILES)
            return
    raise UsageError(
        "no tokenizer found for the Space (looked in the base model folder and the variants)",
        hint="make sure the base model folder still exists",
    )


def build(
    run_dir: Path,
    out: Path,
    *,
    namespace: str | None = None,
    scheme: str | None = None,
    layout: str = "repos",
    base_model: str | None = None,
    license_: str | None = None,
) -> Catalog:
    """Write the Space folder ``out`` for the run in ``run_dir`` (all or nothing; a Space
    folder already there is replaced, anything else is refused)."""
    from quantforge.plugins.manager import load_plugins

    facts = load_facts(run_dir)
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if occupied and not (out / CATALOG_FILE).is_file():
        raise UsageError(f"{out} exists and is not a Space folder", hint="pick another --out")
    if not APP_SOURCE.is_file():
        raise UsageError(f"the Space app is missing from this install ({APP_SOURCE})")
    catalog = catalog_from_run(
        facts, namespace=namespace, scheme=scheme, layout=layout, base_model=base_model
    )
    plugins = load_plugins()
    _installed("gradio")
    lines = requirements(extras_for(catalog, plugins))
    with artifacts.building(out) as tmp:
        shutil.copy2(APP_SOURCE, tmp / APP_FILE)
        shutil.copy2(run_dir / STORE_NAME, tmp / STORE_NAME)
        catalog.write(tmp)
        _copy_tokenizer(facts, tmp / TOKENIZER_DIR)
        (tmp / "requirements.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        vendor(tmp / VENDOR_DIR)
        space_card(catalog, facts, license_).save(tmp / "README.md")
    return catalog


def tradeoff_table(facts: RunFacts, target: str) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the measured trade-offs on one target (as in the cards)."""
    from quantforge.publishing.card_data import CARD_METRICS, tradeoff_rows
    from quantforge.store.table import title

    metrics = list(CARD_METRICS) + facts.task_metrics()
    headers = ["variant", "method", "bits", *(title(m) for m in metrics)]
    rows = [
        [r["name"], r["method"], r["bits"], *r["cells"]] for r in tradeoff_rows(facts, target, "")
    ]
    return headers, rows


def fit_table(facts: RunFacts) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the device-profile estimates: does each variant fit, how fast."""
    from quantforge.publishing.card_data import fit_lines_for

    targets = facts.targets("estimated")
    headers = ["variant", *(f"{t} (estimate)" for t in targets)]
    rows = [[v.name, *(fit_lines_for(facts, v.name, t) for t in targets)] for v in facts.variants]
    return headers, rows


def check_space_folder(folder: Path) -> Catalog:
    """A folder ``space build`` made, whose card declares the gradio SDK and ``app_file``."""
    from huggingface_hub import SpaceCard

    catalog = Catalog.read(folder)
    for name in ("README.md", APP_FILE, STORE_NAME, "requirements.txt"):
        if not (folder / name).is_file():
            raise UsageError(
                f"{folder} lacks {name}", hint="rebuild it with `quantforge space build RUN`"
            )
    data = SpaceCard.load(folder / "README.md").data
    if data.sdk != "gradio" or data.app_file != APP_FILE:
        raise UsageError(
            f"{folder / 'README.md'} does not declare sdk: gradio and app_file: {APP_FILE}",
            hint="rebuild it with `quantforge space build RUN`",
        )
    return catalog


def push_space(
    api: Any,
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    log: Any = print,
) -> str | None:
    """Publish a Space folder as ``repo_id`` in one commit, after checking that every
    variant repo it reads exists; returns the commit id (``None``: unchanged or dry run)."""
    from quantforge.errors import PublishError
    from quantforge.publishing.push import (
        changed_paths,
        commit_operations,
        remote_state,
        repo_files,
        token_and_user,
    )

    catalog = check_space_folder(folder)
    check_repo_id(repo_id, "the Space")
    local = [v.name for v in catalog.variants if "path" in v.source]
    if local:
        raise UsageError(
            f"the Space reads {', '.join(local)} from local folders, which a Space on the Hub "
            "cannot reach",
            hint="push the variants with `quantforge push RUN --namespace NS`, then "
            "`quantforge space build RUN --namespace NS --base-model ID`",
        )
    token_and_user(api, repo_id.split("/")[0])
    missing = [
        v.where
        for v in catalog.variants
        if v.source
        and remote_state(api, v.source["repo_id"], v.source.get("revision") or "main") is None
    ]
    if missing:
        raise PublishError(
            f"the Space reads variants the Hub does not have: {', '.join(missing)}",
            hint="run `quantforge push RUN --namespace NS` first (same --repo-name and --layout)",
        )
    files = repo_files(folder)
    remote = remote_state(api, repo_id, repo_type="space")
    changed = changed_paths(files, remote) if remote is not None else sorted(files)
    if remote and CATALOG_FILE not in remote and len(remote) > 1 and not overwrite:
        raise PublishError(
            f"the Space {repo_id} already holds something else ({len(remote)} files)",
            hint="pick another --repo-id, or pass --overwrite",
        )
    size = sum(p.stat().st_size for p in files.values()) / 1e6
    verb = "create" if remote is None else ("update" if changed else "keep")
    log(
        f"{verb} Space {repo_id}: {len(files)} files, {size:.1f} MB"
        + (f", {len(changed)} changed" if remote is not None and changed else "")
    )
    if dry_run or not changed:
        return None
    if remote is None:
        api.create_repo(
            repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True
        )
    info = api.create_commit(
        repo_id,
        repo_type="space",
        operations=commit_operations(files, remote),
        commit_message=f"quantforge Space: {catalog.title}",
        commit_description=f"run {catalog.run_id}, {len(catalog.variants)} variants",
    )
    return str(info.oid)
