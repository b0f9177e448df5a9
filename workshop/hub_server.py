"""A local Hugging Face Hub: serves a folder of model repos to the real huggingface_hub client.

The folder holds one repo per `<root>/<org>/<name>/`, an ordinary model folder plus an optional
`.hub.json` with the repo's Hub settings:

    {"createdAt": "2025-01-01T00:00:00.000Z", "gated": false | "auto" | "manual",
     "private": false, "tokens": ["hf_..."], "tags": [...], "pipeline_tag": "text-generation",
     "library_name": "transformers", "base_model": "org/base" | ["org/a", "org/b"]}

A declared `base_model` is served as the Hub does: in the card data (`cardData.base_model`,
with the full model info and with `expand=cardData`), as `base_model:<id>` and
`base_model:finetune:<id>` tags, and as `baseModels` ({"relation": "finetune", "models":
[{"_id", "id"}]}) when `/api/models/{id}` is asked `expand=baseModels` (the Hub's listing
refuses that property, so the listing leaves it out).

`tokens` are the tokens allowed into a gated or private repo. A repo's sha is a hash of its id
and its files, so it changes whenever a file changes; its `lastModified` is its newest file's
modification time. Only the current revision exists: `main` or the current sha.

Routes (the ones huggingface_hub 2.4 and transformers 5 call):

    GET  /api/models?author=&search=&filter=&pipeline_tag=&sort=&limit=&expand=&cursor=
    GET  /api/models/{org}/{name}[/revision/{rev}]
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]?recursive=
    HEAD|GET /{org}/{name}/resolve/{rev}/{path}      (Range: bytes=a-b supported)

Start one with `python -m workshop.hub_server --root DIR --port N` (or `make hub`), or in
Python with `HubServer(root).start()`; `publish(root, repo_id, folder)` adds or updates a repo.
`--synthetic-models K` (`SyntheticHubStore`) serves a listing of K file-less repos held in
memory instead: a Hub-sized listing for the scale benchmark, with no folders to walk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

SETTINGS_FILE = ".hub.json"
DEFAULT_PAGE_SIZE = 1000  # the real Hub's page size for /api/models
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REPO_ID_RE = re.compile(rf"^{_PART}/{_PART}$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# Fields /api/models returns per model when no `expand` is given (as the real Hub does:
# no sha, no lastModified, no siblings).
_LIST_FIELDS = (
    "id",
    "author",
    "createdAt",
    "private",
    "gated",
    "tags",
    "pipeline_tag",
    "library_name",
    "downloads",
    "likes",
)


def iso(ts: datetime) -> str:
    """A Hub-style UTC timestamp: `2025-01-01T00:00:00.000Z`."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _parse_iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------------------------
# The repos on disk


class _DigestCache:
    """Per-file git-blob sha1s, recomputed only when a file's size or mtime changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[int, int, str]] = {}

    def blob_sha1(self, path: Path) -> str:
        st = path.stat()
        with self._lock:
            hit = self._cache.get(path)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = hashlib.sha1(f"blob {st.st_size}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            self._cache[path] = (st.st_size, st.st_mtime_ns, value)
        return value


class Repo:
    """One model repo folder and its settings."""

    def __init__(self, root: Path, repo_id: str, digests: _DigestCache) -> None:
        self.id = repo_id
        self.folder = root / repo_id
        self._digests = digests
        path = self.folder / SETTINGS_FILE
        self.settings: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def files(self) -> list[Path]:
        """The repo's regular files (relative paths, sorted), without the settings file.

        Symlinks (to files or folders) are neither listed nor followed: their content is never
        served, so their size and hash are not published either.
        """
        out = []
        for top, dirs, names in os.walk(self.folder, followlinks=False):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
            for name in names:
                path = Path(top) / name
                if name == SETTINGS_FILE or name.startswith(".tmp") or path.is_symlink():
                    continue
                if path.is_file():
                    out.append(path.relative_to(self.folder))
        return sorted(out)

    def inside(self, path: str) -> Path | None:
        """`path` (relative, in the repo) if it names something the repo publishes, else None:
        absolute paths, `..`, symlinks and anything resolving outside the folder are refused."""
        rel = Path(path)
        if rel.is_absolute() or ".." in rel.parts or rel.name == SETTINGS_FILE:
            return None
        full = self.folder / rel
        if any(
            (self.folder / Path(*rel.parts[: i + 1])).is_symlink() for i in range(len(rel.parts))
        ):
            return None
        root = self.folder.resolve()
        resolved = full.resolve()
        if resolved != root and root not in resolved.parents:
            return None
        return rel

    def oid(self, rel: Path) -> str:
        return self._digests.blob_sha1(self.folder / rel)

    @property
    def sha(self) -> str:
        """40 hex characters from the repo id and every file's path and content hash."""
        digest = hashlib.sha1(f"repo {self.id}\n".encode())
        for rel in self.files():
            digest.update(f"{rel.as_posix()} {self.oid(rel)}\n".encode())
        return digest.hexdigest()

    @property
    def created_at(self) -> str:
        if "createdAt" in self.settings:
            return self.settings["createdAt"]
        return iso(datetime.fromtimestamp(self.folder.stat().st_ctime, UTC))

    @property
    def last_modified(self) -> str:
        times = [(self.folder / rel).stat().st_mtime for rel in self.files()]
        latest = datetime.fromtimestamp(max(times), UTC) if times else _parse_iso(self.created_at)
        return iso(max(latest, _parse_iso(self.created_at)))

    @property
    def gated(self) -> bool | str:
        return self.settings.get("gated", False)

    @property
    def private(self) -> bool:
        return bool(self.settings.get("private", False))

    def allows(self, token: str | None) -> bool:
        return token is not None and token in self.settings.get("tokens", [])

    def config(self) -> dict | None:
        path = self.folder / "config.json"
        try:
            return json.loads(path.read_text()) if path.exists() else None
        except ValueError:
            return None

    @property
    def base_models(self) -> list[str]:
        declared = self.settings.get("base_model")
        if not declared:
            return []
        return [declared] if isinstance(declared, str) else list(declared)

    def tags(self) -> list[str]:
        tags = list(self.settings.get("tags", []))
        for base in self.base_models:  # the Hub derives these from the card
            tags += [f"base_model:{base}", f"base_model:finetune:{base}"]
        for tag in (self.library_name, self.pipeline_tag):
            if tag and tag not in tags:
                tags.append(tag)
        if any(rel.suffix == ".safetensors" for rel in self.files()):
            tags.append("safetensors")
        config = self.config() or {}
        if config.get("model_type"):
            tags.append(config["model_type"])
        return tags

    @property
    def pipeline_tag(self) -> str | None:
        return self.settings.get("pipeline_tag", "text-generation")

    @property
    def library_name(self) -> str | None:
        return self.settings.get("library_name", "transformers")

    def info(self, full: bool = True) -> dict[str, Any]:
        """The JSON of /api/models/{id}: everything the client's ModelInfo reads."""
        author = self.id.split("/")[0]
        out: dict[str, Any] = {
            "_id": hashlib.sha1(self.id.encode()).hexdigest()[:24],
            "id": self.id,
            "modelId": self.id,
            "author": author,
            "createdAt": self.created_at,
            "private": self.private,
            "gated": self.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": self.tags(),
            "pipeline_tag": self.pipeline_tag,
            "library_name": self.library_name,
        }
        if full:
            config = self.config()
            card = {"base_model": self.settings["base_model"]} if self.base_models else {}
            out.update(
                {
                    "cardData": card,
                    "sha": self.sha,
                    "lastModified": self.last_modified,
                    "siblings": [{"rfilename": rel.as_posix()} for rel in self.files()],
                    "config": {
                        "model_type": config.get("model_type"),
                        "architectures": config.get("architectures"),
                    }
                    if config
                    else None,
                }
            )
        return out


class HubStore:
    """The folder of repos: lookup and search."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.digests = _DigestCache()

    def repo(self, repo_id: str) -> Repo | None:
        if not _REPO_ID_RE.match(repo_id) or ".." in repo_id:
            return None
        folder = self.root / repo_id
        if not folder.is_dir():
            return None
        return Repo(self.root, repo_id, self.digests)

    def repos(self) -> Iterator[Repo]:
        if not self.root.is_dir():
            return
        for org in sorted(self.root.iterdir()):
            if org.is_dir() and not org.name.startswith("."):
                for name in sorted(org.iterdir()):
                    if name.is_dir() and not name.name.startswith("."):
                        yield Repo(self.root, f"{org.name}/{name.name}", self.digests)

    def search(self, query: dict[str, list[str]], token: str | None) -> list[Repo]:
        """Repos matching author/search/filter/pipeline_tag, sorted as asked (newest first)."""
        author = query.get("author", [None])[0]
        search = (query.get("search", [""])[0] or "").lower()
        filters = [f for value in query.get("filter", []) for f in value.split(",") if f]
        pipeline = query.get("pipeline_tag", [None])[0]
        found = []
        for repo in self.repos():
            if repo.private and not repo.allows(token):
                continue
            if author and repo.id.split("/")[0] != author:
                continue
            if search and search not in repo.id.lower():
                continue
            if pipeline and repo.pipeline_tag != pipeline:
                continue
            tags = set(repo.tags())
            if any(f not in tags and f != repo.id for f in filters):
                continue
            found.append(repo)
        sort = query.get("sort", ["createdAt"])[0]
        if sort in ("lastModified", "last_modified"):
            found.sort(key=lambda r: (r.last_modified, r.id), reverse=True)
        elif sort in ("id", "modelId"):
            found.sort(key=lambda r: r.id)
        else:  # createdAt; also the default for sorts this server does not know
            found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return found


class SyntheticRepo:
    """A listed repo without files: only what `/api/models` and a model's info page show."""

    private = False
    gated = False

    def __init__(self, repo_id: str, created_at: str, family: str) -> None:
        self.id = repo_id
        self.created_at = self.last_modified = created_at
        self.sha = synthetic_sha(repo_id)
        base = f"{family}/base"
        # A fine-tune declares its family's base, as a Hub model card does.
        self.settings: dict[str, Any] = {} if repo_id == base else {"base_model": base}
        self._tags = [f"family:{family}"]
        self._tags += [f"base_model:{b}" for b in self.base_models]
        self._tags += [f"base_model:finetune:{b}" for b in self.base_models]
        self._tags += ["transformers", "text-generation", "safetensors"]
        self.pipeline_tag, self.library_name = "text-generation", "transformers"

    base_models = Repo.base_models

    def allows(self, token: str | None) -> bool:
        return False

    def files(self) -> list[Path]:
        return []

    def tags(self) -> list[str]:
        return list(self._tags)

    def config(self) -> dict | None:
        return None

    info = Repo.info


def synthetic_sha(repo_id: str) -> str:
    """The sha a synthetic repo is listed at (40 hex, from its id)."""
    return hashlib.sha1(f"synthetic {repo_id}".encode()).hexdigest()


def synthetic_keys(n_models: int, family_size: int = 10) -> list[tuple[str, str]]:
    """(repo id, family) of `n_models` synthetic models: families `synth-fNNNNN` of one base
    (`.../base`) and `family_size - 1` fine-tunes (`.../ft-NNN`), in creation order."""
    keys = []
    for i in range(n_models):
        family, member = f"synth-f{i // family_size:05d}", i % family_size
        name = "base" if member == 0 else f"ft-{member:03d}"
        keys.append((f"{family}/{name}", family))
    return keys


class SyntheticHubStore(HubStore):
    """`n_models` synthetic repos held in memory (no folders): a Hub-sized listing served
    cheaply, for the scale benchmark's `hub_models_sensor` tick. Repo `i` was created `i`
    seconds after `start`, so the listing newest first is the reverse of `synthetic_keys`."""

    def __init__(self, n_models: int, family_size: int = 10, start: datetime | None = None):
        super().__init__(Path("/nonexistent-synthetic-hub"))
        from datetime import timedelta

        start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=n_models)
        self._repos = [
            SyntheticRepo(repo_id, iso(start + timedelta(seconds=i)), family)
            for i, (repo_id, family) in enumerate(synthetic_keys(n_models, family_size))
        ]
        self._by_id = {r.id: r for r in self._repos}
        self._newest_first = self._repos[::-1]

    def repo(self, repo_id: str):  # type: ignore[override]
        return self._by_id.get(repo_id)

    def repos(self):  # type: ignore[override]
        return iter(self._repos)

    def search(self, query: dict[str, list[str]], token: str | None) -> list:  # type: ignore[override]
        author = query.get("author", [None])[0]
        search = (query.get("search", [""])[0] or "").lower()
        if not author and not search:
            return self._newest_first  # createdAt and lastModified orders are the same here
        return [
            r
            for r in self._newest_first
            if (not author or r.id.split("/")[0] == author) and search in r.id.lower()
        ]


# --------------------------------------------------------------------------------------------
# HTTP


class HubRequestHandler(BaseHTTPRequestHandler):
    """Answers the Hub routes for the `HubStore` in `self.server.store`."""

    server_version = "modelmap-hub/1"
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections

    @property
    def store(self) -> HubStore:
        return self.server.store  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    # -- plumbing -------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(
        self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        extra = {"X-Error-Message": message, **(headers or {})}
        if code:
            extra["X-Error-Code"] = code
        self._json(status, {"error": message}, extra)

    def _open_repo(self, repo_id: str, content: bool) -> Repo | None:
        """The repo if this request may see it, else answer the error and return None.

        Like the Hub: a private repo without access is indistinguishable from a missing one;
        a gated repo's metadata is public but its files need an allowed token (401 without a
        token, 403 with one that has no access).
        """
        repo = self.store.repo(repo_id)
        token = self._token()
        if repo is None or (repo.private and not repo.allows(token)):
            status = 401 if repo is not None and token is None else 404
            self._error(status, "RepoNotFound", "Repository not found")
            return None
        if content and repo.gated and not repo.allows(token):
            status = 401 if token is None else 403
            self._error(
                status,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in.",
            )
            return None
        return repo

    def _check_revision(self, repo: Repo, revision: str) -> str | None:
        """The repo's sha if `revision` names the current revision, else answer 404."""
        sha = repo.sha
        if unquote(revision) in ("main", sha):
            return sha
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return None

    # -- routes ---------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802
        self._route()

    def do_GET(self) -> None:  # noqa: N802
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        try:
            if parts[:2] == ["api", "models"]:
                if len(parts) == 2:
                    return self._list_models(query)
                repo_id = "/".join(parts[2:4])
                rest = parts[4:]
                if not rest:
                    return self._model_info(repo_id, "main", query)
                if rest[0] == "revision" and len(rest) >= 2:
                    return self._model_info(repo_id, "/".join(rest[1:]), query)
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
            elif len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            self._error(404, None, f"no route for {url.path}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a cancelled download): nothing to answer
        except Exception as exc:  # a bug or a bad request: a 500 that says so, never a hang-up
            self.log_error("%s %s: %r", self.command, self.path, exc)
            self._error(500, None, f"server error: {type(exc).__name__}")

    def _list_models(self, query: dict[str, list[str]]) -> None:
        repos = self.store.search(query, self._token())
        page_size = getattr(self.server, "page_size", DEFAULT_PAGE_SIZE)
        try:
            limit = max(1, min(int(query.get("limit", [page_size])[0]), page_size))
            start = int(query.get("cursor", ["0"])[0])
            if start < 0:
                raise ValueError(start)
        except ValueError:
            self._error(400, None, "limit and cursor must be non-negative integers")
            return
        page = repos[start : start + limit]
        expand = [e for value in query.get("expand", []) for e in value.split(",") if e]
        full = query.get("full", ["false"])[0].lower() in ("1", "true")
        items = []
        for repo in page:
            info = repo.info(full=full or bool(expand))
            if expand:  # the Hub returns exactly the expanded properties (and the id)
                info = {"_id": info["_id"], "id": info["id"]} | {k: info.get(k) for k in expand}
            elif not full:
                info = {k: info[k] for k in ("_id", "modelId", *_LIST_FIELDS)}
            items.append(info)
        headers = {}
        if start + limit < len(repos):
            next_query = {k: v for k, v in query.items() if k != "cursor"}
            next_query["cursor"] = [str(start + limit)]
            # The client needs an absolute URL; the Host header names us as the client sees us.
            host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
            url = f"http://{host}/api/models?{urlencode(next_query, doseq=True)}"
            headers["Link"] = f'<{url}>; rel="next"'
        self._json(200, items, headers)

    def _model_info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        repo = self._open_repo(repo_id, content=False)
        if repo is None or self._check_revision(repo, revision) is None:
            return
        info = repo.info(full=True)
        if repo.gated and not repo.allows(self._token()):
            info["siblings"] = [{"rfilename": s["rfilename"]} for s in info["siblings"]]
        n_params = _safetensors_parameters(repo)
        if n_params is not None:
            info["safetensors"] = {"parameters": n_params, "total": sum(n_params.values())}
        expand = [e for value in query.get("expand", []) for e in value.split(",") if e]
        if "baseModels" in expand and repo.base_models:
            info["baseModels"] = {
                "relation": "finetune",
                "models": [
                    {"_id": hashlib.sha1(b.encode()).hexdigest()[:24], "id": b}
                    for b in repo.base_models
                ],
            }
        if expand:
            info = {"_id": info["_id"], "id": info["id"]} | {k: info.get(k) for k in expand}
        self._json(200, info)

    def _tree(self, repo_id: str, revision: str, path: str, query: dict[str, list[str]]) -> None:
        repo = self._open_repo(repo_id, content=False)
        if repo is None or self._check_revision(repo, revision) is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = repo.inside(path) if path else None
        if path and (prefix is None or not (repo.folder / prefix).is_dir()):
            sha = repo.sha
            self._error(
                404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": sha}
            )
            return
        entries: dict[str, dict] = {}
        for rel in repo.files():
            if prefix is not None and prefix not in rel.parents:
                continue
            inner = rel.relative_to(prefix) if prefix else rel
            if len(inner.parts) > 1:
                top = (prefix / inner.parts[0]) if prefix else Path(inner.parts[0])
                entries.setdefault(
                    top.as_posix(),
                    {
                        "type": "directory",
                        "path": top.as_posix(),
                        "size": 0,
                        "oid": hashlib.sha1(top.as_posix().encode()).hexdigest(),
                    },
                )
                if not recursive:
                    continue
            entries[rel.as_posix()] = {
                "type": "file",
                "path": rel.as_posix(),
                "size": (repo.folder / rel).stat().st_size,
                "oid": repo.oid(rel),
            }
        self._json(200, sorted(entries.values(), key=lambda e: e["path"]))

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._open_repo(repo_id, content=True)
        if repo is None:
            return
        sha = self._check_revision(repo, revision)
        if sha is None:
            return
        rel = repo.inside(path)
        file = repo.folder / rel if rel is not None else None
        if file is None or not file.is_file():
            self._error(
                404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": sha}
            )
            return
        size = file.stat().st_size
        oid = repo.oid(rel)
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{oid}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(rel.name)}",
        }
        start, end = 0, size - 1
        status = 200
        ranged = _parse_range(self.headers.get("Range"), size)
        if ranged is not None:
            start, end = ranged
            status = HTTPStatus.PARTIAL_CONTENT
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        if self.command == "HEAD":
            self._send(status, b"", headers, "application/octet-stream", length=length)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        with open(file, "rb") as f:
            f.seek(start)
            remaining = length
            while remaining > 0:
                block = f.read(min(1 << 20, remaining))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end) inclusive for a single `bytes=a-b` / `bytes=a-` / `bytes=-n` range."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if not m or (not m.group(1) and not m.group(2)) or size == 0:
        return None
    if not m.group(1):  # suffix range: the last n bytes
        return max(0, size - int(m.group(2))), size - 1
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (start, end) if start <= end else None


def _safetensors_parameters(repo: Repo) -> dict[str, int] | None:
    """Parameters per dtype from the safetensors headers (what the Hub shows on a model page)."""
    counts: dict[str, int] = {}
    files = [rel for rel in repo.files() if rel.suffix == ".safetensors"]
    if not files:
        return None
    for rel in files:
        try:
            with open(repo.folder / rel, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
        except (OSError, ValueError):
            return None
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in tensor["shape"]:
                count *= dim
            counts[tensor["dtype"]] = counts.get(tensor["dtype"], 0) + count
    return counts


class HubServer:
    """A threaded local Hub on 127.0.0.1; `start()` runs it in a background thread."""

    def __init__(
        self,
        root: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        verbose: bool = False,
        page_size: int = DEFAULT_PAGE_SIZE,
        store: HubStore | None = None,
    ) -> None:
        self.store = store or HubStore(root)
        self.httpd = ThreadingHTTPServer((host, port), HubRequestHandler)
        self.httpd.daemon_threads = True
        self.httpd.store = self.store  # type: ignore[attr-defined]
        self.httpd.verbose = verbose  # type: ignore[attr-defined]
        self.httpd.page_size = page_size  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Publishing


def publish(
    root: Path | str,
    repo_id: str,
    src_folder: Path | str,
    created_at: datetime | str | None = None,
    **settings: Any,
) -> Path:
    """Copy a model folder into the local Hub as `repo_id` (replacing its files if it exists).

    `created_at` defaults to now for a new repo and is kept for an existing one; other keyword
    settings (gated, private, tokens, tags, pipeline_tag, library_name) go into `.hub.json`.
    Returns the repo folder.
    """
    if not _REPO_ID_RE.match(repo_id) or ".." in repo_id:
        raise ValueError(f"invalid repo id {repo_id!r}: expected 'org/name'")
    dest = Path(root) / repo_id
    settings_path = dest / SETTINGS_FILE
    old = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    if isinstance(created_at, datetime):
        created_at = iso(created_at)
    merged = {
        **old,
        **settings,
        "createdAt": created_at or old.get("createdAt") or iso(datetime.now(UTC)),
    }
    # Copy next to the destination, then swap, so a server never serves a half-copied repo.
    tmp = dest.parent / f".tmp-{dest.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    # copy (not copy2): fresh mtimes, so an updated repo shows a new lastModified.
    shutil.copytree(
        src_folder,
        tmp,
        ignore=shutil.ignore_patterns(SETTINGS_FILE, ".*"),
        copy_function=shutil.copy,
    )
    (tmp / SETTINGS_FILE).write_text(json.dumps(merged, indent=1))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def publish_zoo(
    root: Path | str,
    zoo_dir: Path | str,
    org: str | None = None,
    only: Collection[str] | None = None,
) -> list[str]:
    """Publish every model of a zoo registry (`zoo.json`) to the local Hub; returns repo ids.

    Models are published in registry order, one second apart in `createdAt`, so a listing
    newest first is deterministic. `org` replaces the keys' organisation when given; `only`
    keeps the registry keys it lists.
    """
    from datetime import timedelta

    from workshop.zoo import load_registry

    start = datetime.now(UTC).replace(microsecond=0)
    ids = []
    models = [m for m in load_registry(zoo_dir) if only is None or m.key in only]
    for i, model in enumerate(models):
        repo_id = f"{org}/{model.key.split('/', 1)[1]}" if org else model.key
        publish(
            root,
            repo_id,
            model.local_path(zoo_dir),
            created_at=start + timedelta(seconds=i),
            tags=[f"family:{model.family}", f"role:{model.role}"],
            base_model=_renamed(model.base_model, org),
        )
        ids.append(repo_id)
    return ids


def _renamed(key: str | None, org: str | None) -> str | None:
    """A zoo key under the organisation the zoo is published as."""
    if key is None or org is None:
        return key
    return f"{org}/{key.split('/', 1)[1]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a folder of model repos as a local Hub.")
    parser.add_argument("--root", type=Path, required=True, help="folder of <org>/<name>/ repos")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    parser.add_argument("--publish-zoo", type=Path, help="publish this zoo folder first")
    parser.add_argument(
        "--synthetic-models",
        type=int,
        default=0,
        help="serve this many synthetic repos from memory instead of --root (listing only)",
    )
    parser.add_argument("--synthetic-family-size", type=int, default=10)
    args = parser.parse_args(argv)
    args.root.mkdir(parents=True, exist_ok=True)
    if args.publish_zoo:
        ids = publish_zoo(args.root, args.publish_zoo)
        print(f"published {len(ids)} zoo models to {args.root}", flush=True)
    store = (
        SyntheticHubStore(args.synthetic_models, args.synthetic_family_size)
        if args.synthetic_models
        else None
    )
    server = HubServer(args.root, args.host, args.port, verbose=not args.quiet, store=store)
    n = sum(1 for _ in server.store.repos())
    print(f"local Hub: {n} repos in {server.store.root} at {server.url}", flush=True)
    print(f"use it with: export HF_ENDPOINT={server.url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
