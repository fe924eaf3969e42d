"""Publishing a run's variants to the Hugging Face Hub, one repo and one commit per variant.

Everything is checked before the first write: the token (from huggingface_hub's usual
sources, never printed), write access to the namespace, every variant folder, and each
target repo's current content. A repo that holds something else is refused unless
``overwrite``; a repo that already holds exactly these files gets no new commit. Files go
up in one ``create_commit`` per repo, so an interrupted push leaves no partial commit; LFS
objects that reached the server are not sent again when the push is rerun.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from quantforge.errors import PublishError, UsageError
from quantforge.model.artifacts import MANIFEST, PRECISION_FILE
from quantforge.model.source import file_sha256
from quantforge.publishing.card_data import gguf_label
from quantforge.publishing.cards import (
    CARD_FILE,
    CardOptions,
    gguf_card,
    write_family_card,
    write_variant_card,
)
from quantforge.publishing.plot import PLOT_FILE, pareto_plot
from quantforge.publishing.repo_names import DEFAULT_REPO_SCHEME, check_repo_id, repo_ids
from quantforge.store.facts import RunFacts


@dataclass
class RepoPlan:
    """What one variant's push creates and uploads."""

    variant: str
    repo_id: str
    files: dict[str, Path]  # path in repo -> local file
    revision: str = "main"  # the branch it goes to (one branch per variant in the branch layout)
    manifest: str = MANIFEST  # the file that says whose variant the repo holds
    exists: bool = False  # the repo (and branch) exists already
    action: str = "create"  # create | update | unchanged
    changed: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        """``org/repo``, or ``org/repo@branch`` for a variant branch."""
        return self.repo_id + ("" if self.revision == "main" else f"@{self.revision}")

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


def git_blob_oid(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def repo_files(folder: Path) -> dict[str, Path]:
    """Every file of a folder to upload, by its path in the repo: no hidden files or
    folders, no ``__pycache__``."""
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and not any(
            part.startswith(".") or part == "__pycache__" for part in p.relative_to(folder).parts
        )
    }


def commit_operations(files: dict[str, Path], remote: dict[str, Any] | None) -> list[Any]:
    """Add every local file; delete what the branch holds beyond them (``.gitattributes`` stays)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    operations: list[Any] = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(file))
        for path, file in sorted(files.items())
    ]
    operations += [
        CommitOperationDelete(path_in_repo=path)
        for path in (remote or {})
        if path not in files and path != ".gitattributes"
    ]
    return operations


def _variant_files(folder: Path) -> dict[str, Path]:
    """Every file of a variant folder, by its path in the repo; refuses an incomplete folder."""
    if not folder.is_dir():
        raise UsageError(
            f"variant folder {folder} is missing", hint="rebuild it with `quantforge quantize`"
        )
    files = repo_files(folder)
    if MANIFEST not in files or len(files) < 2:
        raise UsageError(
            f"variant folder {folder} is missing files (it has {len(files)}, and "
            f"{'no' if MANIFEST not in files else 'a'} {MANIFEST})",
            hint="rebuild it with `quantforge quantize`",
        )
    return files


def token_and_user(api: Any, namespace: str) -> dict[str, Any]:
    """The user the saved token belongs to, checked for write access to ``namespace``."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not get_token():
        raise PublishError(
            "no Hugging Face token found",
            hint="run `hf auth login` or set HF_TOKEN to a token with write access",
        )
    try:
        user: dict[str, Any] = api.whoami()
    except HfHubHTTPError as exc:
        raise PublishError(
            f"the Hub did not accept the token ({_status(exc)})",
            hint="run `hf auth login` again with a valid token",
        ) from None
    role = ((user.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise PublishError(
            f"the token of {user.get('name')!r} is read-only",
            hint="create a token with write access and run `hf auth login`",
        )
    writable = {user.get("name"), *(o.get("name") for o in user.get("orgs") or [])}
    if namespace not in writable:
        raise PublishError(
            f"{user.get('name')!r} cannot write to the namespace {namespace!r}",
            hint=f"use --namespace with one of: {', '.join(sorted(str(w) for w in writable))}",
        )
    return user


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return f"HTTP {response.status_code}" if response is not None else type(exc).__name__


def remote_state(
    api: Any, repo_id: str, revision: str = "main", repo_type: str = "model"
) -> dict[str, dict[str, Any]] | None:
    """``{path: {"oid", "lfs"}}`` of a branch, or ``None`` if the repo or branch does not exist."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = list(
            api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type=repo_type)
        )
    except (RepositoryNotFoundError, RevisionNotFoundError):
        return None
    return {
        e.path: {"oid": e.blob_id, "lfs": e.lfs.sha256 if e.lfs else None}
        for e in entries
        if isinstance(e, RepoFile)
    }


def changed_paths(local: dict[str, Path], remote: dict[str, dict[str, Any]]) -> list[str]:
    """Paths whose content differs between the local files and the repo (empty: identical)."""
    changed = []
    for path, file in local.items():
        entry = remote.get(path)
        if entry is None:
            changed.append(path)
        elif entry["lfs"]:
            if entry["lfs"] != file_sha256(file):
                changed.append(path)
        elif entry["oid"] != git_blob_oid(file):
            changed.append(path)
    changed += [p for p in remote if p not in local and p != ".gitattributes"]
    return changed


def _belongs_to_run(api: Any, plan: RepoPlan, facts: RunFacts) -> bool:
    """Whether the branch's manifest says it holds a quantforge variant of this run's base."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(plan.repo_id, plan.manifest, revision=plan.revision)
        manifest = json.loads(Path(path).read_text())
    except (EntryNotFoundError, ValueError):
        return False
    return bool((manifest.get("base") or {}).get("content_hash") == facts.run["base_hash"])


FAMILY_REPO_SCHEME = "{base}-quantized"


def plan_push(
    api: Any,
    facts: RunFacts,
    staging: Path,
    *,
    namespace: str,
    scheme: str | None,
    options: CardOptions,
    variants: Sequence[str] | None,
    overwrite: bool,
    layout: str = "repos",
    gguf_repo: str | None = None,
) -> list[RepoPlan]:
    """Cards and plots into ``staging``, and what each repo would get. Writes nothing remote.

    ``repos``: one repo per variant, named by ``scheme``; with ``gguf_repo`` (a name that
    may use ``{base}``) the GGUF variants share that one repo instead, a file per type, as
    the community publishes them. ``branches``: one repo (``scheme`` may use ``{base}``
    only; default ``{base}-quantized``) with a branch per variant and the family card on
    ``main``.
    """
    names = list(variants) if variants else [v.name for v in facts.variants if v.name != "base"]
    for name in names:
        facts.variant(name)
        if name == "base":
            raise UsageError(
                "the base model is not republished", hint="push the quantized variants"
            )
    if layout == "branches":
        repo = _base_only_repo(
            facts, namespace, scheme or FAMILY_REPO_SCHEME, "with --layout branches the repo name"
        )
        ids = {v.name: repo for v in facts.variants if v.name != "base"}
        revisions = {name: name for name in ids}
    else:
        ids = repo_ids(facts, namespace, scheme or DEFAULT_REPO_SCHEME)
        revisions = {}
    shared = [n for n in names if gguf_repo and facts.variant(n).family == "gguf"]
    if gguf_repo and layout == "branches":
        raise UsageError("--gguf-repo goes with --layout repos", hint="leave out one of them")
    if shared:
        gguf_id = _base_only_repo(facts, namespace, str(gguf_repo), "--gguf-repo")
        ids.update({n: gguf_id for n in shared})
    card_options = CardOptions(
        base_model=options.base_model,
        repo_ids=ids,
        revisions=revisions,
        quantized_by=options.quantized_by,
        license=options.license,
        plot=PLOT_FILE,
    )
    plans = []
    for name in [n for n in names if n not in shared]:
        variant = facts.variant(name)
        files = _variant_files(variant.path) if variant.path else {}
        if not files:
            raise UsageError(f"variant {name!r} has no folder recorded in the results store")
        files = {**files, **write_variant_card(facts, name, staging / name, card_options)}
        plans.append(RepoPlan(name, ids[name], files, revision=revisions.get(name, "main")))
    if shared:
        plans.append(_gguf_plan(facts, shared, ids[shared[0]], staging, card_options))
    if layout == "branches":
        files = write_family_card(facts, staging / "_family", card_options)
        plans.append(RepoPlan("family card", next(iter(ids.values())), files, revision="main"))
    for plan in plans:
        _compare_with_remote(api, plan, facts, overwrite)
    return plans


def _gguf_plan(
    facts: RunFacts, names: list[str], repo_id: str, staging: Path, options: CardOptions
) -> RepoPlan:
    """One repo for several GGUF variants: ``{base}-{TYPE}.gguf`` each, their manifests under
    ``quantforge/``, one card with a row per file."""
    base = facts.base_name
    files: dict[str, Path] = {}
    file_names: dict[str, str] = {}
    for name in names:
        variant = facts.variant(name)
        local = _variant_files(variant.path) if variant.path else {}
        ggufs = [p for p in local if p.endswith(".gguf")]
        if len(ggufs) != 1:
            raise UsageError(f"variant folder of {name!r} holds {len(ggufs)} .gguf files, not one")
        file = f"{base}-{gguf_label(variant)}.gguf"
        if file in files:  # two variants of one type (e.g. with and without imatrix)
            file = f"{base}-{name}.gguf"
        file_names[name] = file
        files[file] = local[ggufs[0]]
        files[f"quantforge/{name}.json"] = local[MANIFEST]
        if PRECISION_FILE in local:
            files[f"quantforge/{name}-precision.json"] = local[PRECISION_FILE]
        if "config.json" in local:
            files.setdefault("config.json", local["config.json"])
    folder = staging / "_gguf"
    folder.mkdir()
    plot = pareto_plot(facts, folder / PLOT_FILE)
    card_options = options if plot else replace(options, plot=None)
    gguf_card(facts, names, file_names, card_options, repo_id).save(folder / CARD_FILE)
    files[CARD_FILE] = folder / CARD_FILE
    if plot:
        files[PLOT_FILE] = plot
    return RepoPlan(
        f"gguf ({', '.join(names)})", repo_id, files, manifest=f"quantforge/{names[0]}.json"
    )


def _base_only_repo(facts: RunFacts, namespace: str, pattern: str, what: str) -> str:
    """``namespace/<pattern with {base} filled in>``: a repo name for several variants."""
    try:
        repo_id = f"{namespace}/{pattern.format(base=facts.base_name)}"
    except (KeyError, IndexError) as exc:
        raise UsageError(
            f"{what} may use {{base}} only, not {exc}", hint="e.g. {base}-GGUF or {base}-quantized"
        ) from None
    check_repo_id(repo_id, "a repo shared by several variants")
    return repo_id


def _compare_with_remote(api: Any, plan: RepoPlan, facts: RunFacts, overwrite: bool) -> None:
    """Set what the push would do to this branch; refuse content that is not ours."""
    remote = remote_state(api, plan.repo_id, plan.revision)
    if remote is None:
        return
    plan.exists = True
    plan.changed = changed_paths(plan.files, remote)
    if not plan.changed:
        plan.action = "unchanged"
        return
    plan.action = "update"
    if plan.variant == "family card":  # main of a branch-layout repo: a card and a plot only
        foreign = [p for p in remote if p not in (CARD_FILE, PLOT_FILE, ".gitattributes")]
    else:
        content = [p for p in remote if p != ".gitattributes"]
        ours = not content or _belongs_to_run(api, plan, facts)
        foreign = [] if ours else content
    if foreign and not overwrite:
        raise PublishError(
            f"{plan.where} already holds other content ({len(foreign)} files, "
            "not a quantforge variant of this base)",
            hint="pick another --namespace or --repo-name, or pass --overwrite",
        )


def push(
    api: Any,
    plans: Sequence[RepoPlan],
    *,
    private: bool,
    collection: str | None,
    namespace: str,
    base_model: str | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Create the repos, one commit each, then the collection. Returns what was done."""
    done: dict[str, Any] = {"created": [], "committed": [], "unchanged": [], "collection": None}
    ready: set[str] = set()  # repos known to exist
    for plan in plans:
        if plan.action == "unchanged":
            done["unchanged"].append(plan.where)
            log(f"{plan.where}: unchanged, nothing uploaded")
            continue
        if plan.repo_id not in ready:
            if not api.repo_exists(plan.repo_id):
                api.create_repo(plan.repo_id, private=private, exist_ok=True)
                done["created"].append(plan.repo_id)
            ready.add(plan.repo_id)
        if plan.revision != "main":
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
        parent = api.model_info(plan.repo_id, revision=plan.revision).sha
        remote = remote_state(api, plan.repo_id, plan.revision)
        info = api.create_commit(
            plan.repo_id,
            revision=plan.revision,
            operations=commit_operations(plan.files, remote),
            commit_message=f"quantforge: {plan.variant}",
            commit_description=f"{len(plan.files)} files, {plan.size() / 1e6:.1f} MB, "
            "built and measured with quantforge",
            parent_commit=parent,
        )
        done["committed"].append(
            {"repo_id": plan.repo_id, "revision": plan.revision, "commit": info.oid}
        )
        log(f"{plan.where}: {plan.action}d in commit {info.oid[:10]} ({len(plan.files)} files)")
    if collection:
        coll = api.create_collection(
            collection, namespace=namespace, private=private, exists_ok=True
        )
        present = {i.item_id for i in coll.items}
        items = list(
            dict.fromkeys(([base_model] if base_model else []) + [p.repo_id for p in plans])
        )
        for item in items:
            if item not in present:
                api.add_collection_item(coll.slug, item_id=item, item_type="model", exists_ok=True)
        done["collection"] = coll.slug
        log(f"collection: {coll.slug} ({len(items)} models)")
    return done
