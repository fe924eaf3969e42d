"""A local server that speaks the Hugging Face Hub's HTTP protocol, for tests.

It implements what ``huggingface_hub.HfApi`` calls to publish and read back model
repos: whoami, create/delete repo, repo info, preupload, the Git LFS batch API with
basic uploads and verify, NDJSON commits, refs, branches, tags, commits, tree listing,
file download (``resolve``), YAML validation of cards, and collections. State lives in
memory (blobs on disk) for the life of the server; tests drive it only through the real
``huggingface_hub`` client with ``HF_ENDPOINT`` pointing here and ``HF_HUB_DISABLE_XET=1``.

It is a test double of the protocol, not of the Hub's policies: it checks tokens,
namespaces, parent commits and card metadata where the client depends on the answer.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files above 10 MB (and binaries) in LFS
PIPELINE_TAGS = {"text-generation", "text2text-generation", "fill-mask", "feature-extraction"}
RELATIONS = {"adapter", "merge", "quantized", "finetune"}
LICENSES = {"apache-2.0", "mit", "other", "llama3", "llama3.1", "gemma", "cc-by-4.0", "unknown"}
SPACE_SDKS = ("gradio", "docker", "static")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FileEntry:
    size: int
    sha256: str
    lfs: bool

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n"
        ).encode()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, FileEntry]
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    sdk: str | None = None  # Spaces only: gradio, docker, static
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and revision in self.commits:
            oid = revision
        return self.commits.get(oid) if oid else None


@dataclass
class HubState:
    """Users, repos, LFS objects and collections."""

    root: Path
    tokens: dict[str, dict[str, Any]]  # token -> {"name", "orgs", "role"}
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) log
    upload_delay: float = 0.0  # seconds each LFS upload waits before it is read

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).exists()

    def put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.rename(path)
        return sha

    def commits_of(self, repo: Repo, revision: str) -> list[Commit]:
        commit = repo.resolve(revision)
        chain = []
        while commit is not None:
            chain.append(commit)
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return chain


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = extra


class Handler(BaseHTTPRequestHandler):
    server: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing -----------------------------------------------------------------

    @property
    def state(self) -> HubState:
        return self.server.state

    def _body(self) -> bytes:
        return self._raw

    def _json_body(self) -> Any:
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Type" not in (headers or {}):
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), headers)

    def _user(self, required: bool = True, write: bool = False) -> dict[str, Any] | None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        user = self.state.tokens.get(token)
        if user is None and (required or token):
            raise HubError(401, "Invalid credentials in Authorization header")
        if user is not None and write and user.get("role") != "write":
            raise HubError(403, "You don't have write access with this token (role: read)")
        return user

    def _can_write(self, user: dict[str, Any], namespace: str) -> None:
        if namespace != user["name"] and namespace not in user.get("orgs", []):
            raise HubError(
                403,
                f'You don\'t have the rights to create a model under the namespace "{namespace}"',
            )

    def _repo(self, repo_type: str, repo_id: str, user: dict[str, Any] | None) -> Repo:
        repo = self.state.repos.get((repo_type, repo_id))
        visible = repo is not None and (
            not repo.private
            or (user is not None and repo_id.split("/")[0] in [user["name"], *user.get("orgs", [])])
        )
        if not visible:
            raise HubError(404, "Repository not found", "RepoNotFound")
        assert repo is not None
        return repo

    def _dispatch(self) -> None:
        # read the whole body first: an error answered before reading it would leave it
        # on the keep-alive connection as the start of the next request
        length = int(self.headers.get("Content-Length") or 0)
        self._raw = self.rfile.read(length) if length else b""
        url = urlparse(self.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        with self.state.lock:
            self.state.requests.append((self.command, path))
        if path.startswith("/lfs-upload/") and self.state.upload_delay:
            time.sleep(self.state.upload_delay)  # lets a test kill a client mid-upload
        try:
            with self.state.lock:
                self._route(path, query)
        except HubError as exc:
            headers = {"X-Error-Message": exc.message.replace("\n", "; ")}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            self._json(exc.status, {"error": exc.message, **exc.extra}, headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch  # noqa: N815

    # -- routes -------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        m = self.command
        if path == "/api/whoami-v2" and m == "GET":
            return self._whoami()
        if path == "/api/repos/create" and m == "POST":
            return self._create_repo()
        if path == "/api/repos/delete" and m == "DELETE":
            return self._delete_repo()
        if path == "/api/validate-yaml" and m == "POST":
            return self._validate_yaml()
        if path == "/api/collections" and m == "POST":
            return self._create_collection()
        if match := re.fullmatch(r"/api/collections/([^/]+/[^/]+)(/items)?", path):
            return self._collection(match.group(1), bool(match.group(2)))
        if match := re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", path):
            return self._api_repo(match.group(1)[:-1], match.group(2), match.group(3) or "", query)
        if match := re.fullmatch(
            r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", path
        ):
            return self._lfs_batch((match.group(1) or "models")[:-1], match.group(2))
        if match := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path):
            return self._lfs_upload(match.group(1))
        if match := re.fullmatch(r"/lfs-verify/([0-9a-f]{64})", path):
            return self._lfs_verify(match.group(1))
        if match := re.fullmatch(
            r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path
        ):
            return self._resolve(
                (match.group(1) or "models")[:-1], match.group(2), match.group(3), match.group(4)
            )
        raise HubError(404, f"no route for {m} {path}")

    def _whoami(self) -> None:
        user = self._user()
        assert user is not None
        self._json(
            200,
            {
                "type": "user",
                "name": user["name"],
                "orgs": [{"name": o, "roleInOrg": "write"} for o in user.get("orgs", [])],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": user["role"]},
                },
            },
        )

    def _create_repo(self) -> None:
        user = self._user(write=True)
        assert user is not None
        body = self._json_body()
        namespace = body.get("organization") or user["name"]
        repo_type = body.get("type") or "model"
        repo_id = f"{namespace}/{body['name']}"
        if not REPO_ID.match(repo_id):
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        self._can_write(user, namespace)
        key = (repo_type, repo_id)
        if key in self.state.repos:
            # the Hub answers a conflict with the existing repo's url
            raise HubError(
                409, "You already created this model repo", url=f"{self.server.url}/{repo_id}"
            )
        sdk = body.get("sdk")
        if repo_type == "space" and sdk not in SPACE_SDKS:
            raise HubError(400, f"a Space needs an sdk, one of {', '.join(SPACE_SDKS)}")
        repo = Repo(
            repo_type, repo_id, bool(body.get("private")), sdk if repo_type == "space" else None
        )
        initial = self._commit(repo, None, "initial commit", {})
        repo.branches["main"] = initial.oid
        self.state.repos[key] = repo
        self._json(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _delete_repo(self) -> None:
        user = self._user(write=True)
        assert user is not None
        body = self._json_body()
        namespace = body.get("organization") or user["name"]
        repo_id = f"{namespace}/{body['name']}"
        self._can_write(user, namespace)
        if self.state.repos.pop((body.get("type") or "model", repo_id), None) is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        self._json(200, {})

    def _commit(
        self, repo: Repo, parent: Commit | None, title: str, files: dict[str, FileEntry]
    ) -> Commit:
        seed = json.dumps([parent.oid if parent else None, title, sorted(files), time.time_ns()])
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(
            oid,
            parent.oid if parent else None,
            title,
            files,
            time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        )
        repo.commits[oid] = commit
        return commit

    def _api_repo(
        self, repo_type: str, repo_id: str, rest: str, query: dict[str, list[str]]
    ) -> None:
        m = self.command
        write = m in ("POST", "PUT", "DELETE")
        user = self._user(required=write, write=write)
        repo = self._repo(repo_type, repo_id, user)
        if write:
            assert user is not None
            self._can_write(user, repo_id.split("/")[0])
        parts = rest.split("/", 1)
        action, arg = parts[0], (parts[1] if len(parts) > 1 else "")
        if action in ("", "revision") and m == "GET":
            return self._info(repo, arg or "main")
        if action == "preupload" and m == "POST":
            return self._preupload(repo)
        if action == "commit" and m == "POST":
            return self._create_commit(repo, arg or "main")
        if action == "refs" and m == "GET":
            return self._json(
                200,
                {
                    "branches": [
                        {"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                        for b, oid in repo.branches.items()
                    ],
                    "tags": [
                        {"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid}
                        for t, oid in repo.tags.items()
                    ],
                    "converts": [],
                },
            )
        if action == "branch":
            return self._branch(repo, arg)
        if action == "tag" and m == "POST":
            body = self._json_body()
            commit = repo.resolve(arg or "main")
            if commit is None:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            if body["tag"] in repo.tags:
                raise HubError(409, f"Tag {body['tag']} already exists")
            repo.tags[body["tag"]] = commit.oid
            return self._json(200, {})
        if action == "commits" and m == "GET":
            chain = self.state.commits_of(repo, arg or "main")
            if not chain:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            return self._json(
                200,
                [
                    {"id": c.oid, "title": c.title, "message": "", "authors": [], "date": c.date}
                    for c in chain
                ],
            )
        if action == "tree" and m == "GET":
            revision, _, folder = arg.partition("/")
            return self._tree(
                repo, revision, folder, "recursive" in query and query["recursive"][0] == "true"
            )
        if action == "paths-info" and m == "POST":
            commit = repo.resolve(arg)
            if commit is None:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            body = self._json_body() or {}
            wanted = body.get("paths") or []
            return self._json(
                200, [self._entry(p, commit.files[p]) for p in wanted if p in commit.files]
            )
        raise HubError(404, f"no route for {m} /api/{repo_type}s/{repo_id}/{rest}")

    def _info(self, repo: Repo, revision: str) -> None:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        card = self._file_bytes(commit.files["README.md"]) if "README.md" in commit.files else b""
        self._json(
            200,
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": commit.oid,
                "private": repo.private,
                "lastModified": commit.date,
                "siblings": [
                    {"rfilename": p, "size": f.size} for p, f in sorted(commit.files.items())
                ],
                "cardData": _front_matter(card.decode("utf-8", "replace")) if card else None,
                "tags": [],
                **({"sdk": repo.sdk} if repo.sdk else {}),
                "downloads": 0,
                "likes": 0,
            },
        )

    def _preupload(self, repo: Repo) -> None:
        body = self._json_body()
        files = []
        for f in body.get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            binary = b"\0" in sample
            mode = (
                "lfs"
                if f["size"] > LFS_THRESHOLD
                or binary
                or f["path"].endswith((".safetensors", ".gguf", ".bin", ".onnx", ".data", ".png"))
                else "regular"
            )
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False})
        self._json(200, {"files": files, "commitOid": repo.branches.get("main")})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        user = self._user(write=True)
        assert user is not None
        repo = self._repo(repo_type, repo_id, user)
        self._can_write(user, repo.repo_id.split("/")[0])
        body = self._json_body()
        objects = []
        for obj in body.get("objects", []):
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if not self.state.has_blob(obj["oid"]):
                entry["actions"] = {
                    "upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{self.server.url}/lfs-verify/{obj['oid']}"},
                }
            objects.append(entry)
        self._json(
            200,
            {"transfer": "basic", "objects": objects},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_upload(self, sha256: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise HubError(400, "uploaded content does not match its oid")
        self.state.put_blob(data)
        self._send(200, b"")

    def _lfs_verify(self, sha256: str) -> None:
        body = self._json_body()
        if not self.state.has_blob(sha256) or self.state.blob_path(
            sha256
        ).stat().st_size != body.get("size"):
            raise HubError(404, "object not found or wrong size")
        self._json(200, {})

    def _create_commit(self, repo: Repo, revision: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = lines[0]["value"] if lines and lines[0]["key"] == "header" else {}
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        parent = repo.commits[repo.branches[revision]]
        if header.get("parentCommit") and header["parentCommit"] != parent.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(parent.files)
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                data = (
                    base64.b64decode(value["content"])
                    if value.get("encoding") == "base64"
                    else value["content"].encode()
                )
                files[value["path"]] = FileEntry(len(data), self.state.put_blob(data), lfs=False)
            elif line["key"] == "lfsFile":
                if not self.state.has_blob(value["oid"]):
                    raise HubError(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = FileEntry(int(value["size"]), value["oid"], lfs=True)
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif line["key"] == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
        commit = self._commit(repo, parent, header.get("summary", "commit"), files)
        repo.branches[revision] = commit.oid
        url = f"{self.server.url}/{repo.repo_id}/commit/{commit.oid}"
        self._json(200, {"success": True, "commitOid": commit.oid, "commitUrl": url})

    def _branch(self, repo: Repo, name: str) -> None:
        if self.command == "POST":
            body = self._json_body() or {}
            if name in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{name}")
            start = repo.resolve(body.get("startingPoint") or "main")
            if start is None:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            repo.branches[name] = start.oid
            return self._json(200, {})
        if self.command == "DELETE":
            if repo.branches.pop(name, None) is None:
                raise HubError(404, "Revision not found", "RevisionNotFound")
            return self._json(200, {})
        raise HubError(405, "method not allowed")

    def _entry(self, path: str, entry: FileEntry) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "path": path, "size": entry.size}
        if entry.lfs:
            out["oid"] = git_blob_oid(entry.pointer)
            out["lfs"] = {
                "oid": entry.sha256,
                "size": entry.size,
                "pointerSize": len(entry.pointer),
            }
        else:
            out["oid"] = git_blob_oid(self._file_bytes(entry))
        return out

    def _tree(self, repo: Repo, revision: str, folder: str, recursive: bool) -> None:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "Revision not found", "RevisionNotFound")
        prefix = folder.rstrip("/") + "/" if folder else ""
        entries: list[dict[str, Any]] = []
        dirs = set()
        for path, entry in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if "/" in rest:
                parts = rest.split("/")
                for i in range(1, len(parts)):
                    dirs.add(prefix + "/".join(parts[:i]))
            entries.append(self._entry(path, entry))
        entries += [
            {"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0}
            for d in sorted(dirs)
        ]
        if folder and not entries:
            raise HubError(404, "Entry not found", "EntryNotFound")
        self._json(200, entries)

    def _file_bytes(self, entry: FileEntry) -> bytes:
        return self.state.blob_path(entry.sha256).read_bytes()

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        user = self._user(required=False)
        repo = self._repo(repo_type, repo_id, user)
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, "Revision not found", "RevisionNotFound")
        entry = commit.files.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        data = b"" if self.command == "HEAD" else self._file_bytes(entry)
        etag = entry.sha256 if entry.lfs else git_blob_oid(self._file_bytes(entry))
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{etag}"',
            "Content-Type": "application/octet-stream",
        }
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(entry.size))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _validate_yaml(self) -> None:
        body = self._json_body()
        meta = _front_matter(body.get("content", ""))
        problems = validate_model_metadata(meta)
        status = 400 if problems else 200
        if "text/plain" in self.headers.get("Accept", ""):
            # ModelCard.validate asks for text and raises ValueError with it
            self._send(status, "\n".join(problems).encode(), {"Content-Type": "text/plain"})
        else:  # HfApi (upload_folder of a README.md) reads errors and warnings as JSON
            self._json(status, {"errors": [{"message": p} for p in problems], "warnings": []})

    def _create_collection(self) -> None:
        user = self._user(write=True)
        assert user is not None
        body = self._json_body()
        namespace = body.get("namespace") or user["name"]
        self._can_write(user, namespace)
        title = body["title"]
        existing = [
            c
            for c in self.state.collections.values()
            if c["owner"]["name"] == namespace and c["title"] == title
        ]
        if existing:  # the Hub names the existing collection in its conflict answer
            raise HubError(409, "Collection already exists", slug=existing[0]["slug"])
        slug = f"{namespace}/{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}-{hashlib.sha1(title.encode()).hexdigest()[:24]}"
        collection = {
            "slug": slug,
            "title": title,
            "description": body.get("description"),
            "owner": {"name": namespace, "type": "user" if namespace == user["name"] else "org"},
            "items": [],
            "lastUpdated": time.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "position": 0,
            "private": bool(body.get("private")),
            "theme": "indigo",
            "upvotes": 0,
            "url": f"{self.server.url}/collections/{slug}",
        }
        self.state.collections[slug] = collection
        self._json(200, collection)

    def _collection(self, slug: str, items: bool) -> None:
        collection = self.state.collections.get(slug)
        if collection is None:
            raise HubError(404, "Collection not found")
        if self.command == "GET" and not items:
            self._user(required=False)
            return self._json(200, collection)
        if self.command == "POST" and items:
            user = self._user(write=True)
            assert user is not None
            self._can_write(user, collection["owner"]["name"])
            body = self._json_body()
            item = body["item"]
            if any(
                i["id"] == item["id"] and i["type"] == item["type"] for i in collection["items"]
            ):
                raise HubError(409, "Item already exists in collection")
            collection["items"].append(
                {
                    "_id": hashlib.sha1(item["id"].encode()).hexdigest()[:24],
                    "id": item["id"],
                    "type": item["type"],
                    "position": len(collection["items"]),
                    "note": {"text": body["note"]} if body.get("note") else None,
                }
            )
            return self._json(200, collection)
        raise HubError(405, "method not allowed")


def _front_matter(text: str) -> dict[str, Any]:
    import yaml

    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    if not match:
        return {}
    value = yaml.safe_load(match.group(1))
    return value if isinstance(value, dict) else {}


def validate_model_metadata(meta: dict[str, Any]) -> list[str]:
    """What the Hub's model-card validation would refuse in ``meta`` (a subset of its rules)."""
    problems = []
    license_ = meta.get("license")
    if license_ is not None and license_ not in LICENSES:
        problems.append(f'"license" must be one of the Hub\'s license ids, got {license_!r}')
    if license_ == "other" and not meta.get("license_name"):
        problems.append('"license_name" is required when "license" is "other"')
    bases = meta.get("base_model")
    for base in [bases] if isinstance(bases, str) else bases or []:
        if not isinstance(base, str) or not REPO_ID.match(base):
            problems.append(f'"base_model" must be a Hub repo id, got {base!r}')
    if meta.get("base_model_relation") is not None:
        if meta["base_model_relation"] not in RELATIONS:
            problems.append(f'"base_model_relation" must be one of {sorted(RELATIONS)}')
        if not bases:
            problems.append('"base_model_relation" needs "base_model"')
    if meta.get("pipeline_tag") is not None and meta["pipeline_tag"] not in PIPELINE_TAGS:
        problems.append(f'"pipeline_tag" {meta["pipeline_tag"]!r} is not a known task')
    tags = meta.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        problems.append('"tags" must be a list of strings')
    for entry in meta.get("model-index") or []:
        if not isinstance(entry, dict) or not entry.get("name"):
            problems.append('"model-index" entries need a "name"')
            continue
        for result in entry.get("results") or []:
            task, dataset = result.get("task") or {}, result.get("dataset") or {}
            if not task.get("type"):
                problems.append('"model-index" results need "task.type"')
            if not dataset.get("type") or not dataset.get("name"):
                problems.append('"model-index" results need "dataset.type" and "dataset.name"')
            for metric in result.get("metrics") or []:
                if not metric.get("type") or not isinstance(metric.get("value"), int | float | str):
                    problems.append('"model-index" metrics need "type" and a "value"')
    return problems


class HubServer(ThreadingHTTPServer):
    """``with HubServer(root, tokens) as hub: ...`` serves on ``hub.url`` in a thread."""

    allow_reuse_address = True

    daemon_threads = True

    def __init__(self, root: Path, tokens: dict[str, dict[str, Any]], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.state = HubState(root, tokens)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._connections: set[socket.socket] = set()

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.state.lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.state.lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def stop(self) -> None:
        """Go down as a Hub outage looks to a client: stop listening and cut every open
        connection. The repos stay; :meth:`start` serves them again on the same port."""
        self.shutdown()
        self.server_close()
        with self.state.lock:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def start(self) -> None:
        """Come back up on the same address after :meth:`stop`."""
        self.socket = socket.socket(self.address_family, self.socket_type)
        self.server_bind()
        self.server_activate()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
