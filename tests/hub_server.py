"""A local Hugging Face Hub-compatible HTTP server, for tests.

The machine has no route to the real Hub, so tests point the real client libraries (`huggingface_hub`,
`transformers`, `datasets`, `peft`, `diffusers`) at this server through `HF_ENDPOINT` and exercise their genuine
HTTP code. It speaks the subset of the Hub API that those clients use (checked against huggingface_hub 2.4):

- account: `GET /api/whoami-v2`, `POST /api/validate-yaml`, and `GET /api/agent-harnesses` (which the client
  fetches once per process to build its user agent);
- repos: `POST /api/repos/create` (409 with the repo url when it exists), `DELETE /api/repos/delete`;
- uploads: `POST /api/{type}s/{id}/preupload/{rev}`, the LFS batch API `POST /{prefix}{id}.git/info/lfs/objects/batch`
  with its `PUT` upload and `POST` verify, and `POST /api/{type}s/{id}/commit/{rev}` (NDJSON: header, file,
  lfsFile, deletedFile, deletedFolder; `create_pr=1` commits to a new `refs/pr/N`);
- downloads: `HEAD`/`GET /{prefix}{id}/resolve/{rev}/{path}`, with single `Range` requests;
- metadata: `GET /api/{type}s/{id}[/revision/{rev}]`, `GET .../tree/{rev}[/{path}]`, `POST .../paths-info/{rev}`,
  `GET .../refs`, `GET .../commits/{rev}`, `GET .../discussions` (always none), `POST .../branch/{branch}`, `POST`/`DELETE .../tag/...`.

Models have no URL prefix, datasets use `datasets/` and spaces `spaces/`. Every commit gets a fresh 40-hex id and
old commits stay readable; a revision is a branch, a tag or a full commit id. Errors carry the `X-Error-Code`
header (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`) from which the client builds its typed exceptions.

Deliberate simplifications: Xet is never advertised (clients must run with `HF_HUB_DISABLE_XET=1`), the LFS store is
shared by all repos, listings are not paginated, `expand=` and `.gitignore` are ignored, writes only require some
bearer token, and the history of a branch is linear.
"""

import base64
import hashlib
import json
import re
import secrets
import socket
import tempfile
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
"""The account `whoami` reports: repos created without a namespace land under it."""

LFS_MIN_SIZE = 10 * 1024 * 1024
"""Files of at least this size must go through LFS, whatever `.gitattributes` says (as on the Hub)."""

_LFS_EXTENSIONS = (
    "7z arrow bin bz2 ckpt ftz gz h5 joblib mlmodel model msgpack npy npz onnx ot parquet pb pickle pkl pt pth rar"
    " safetensors tar tflite tgz wasm xz zip zst"
).split()
DEFAULT_GITATTRIBUTES = "".join(f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in _LFS_EXTENSIONS)
"""The `.gitattributes` of every new repo's initial commit: like the Hub's, it sends binary formats to LFS."""

_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}
_API_REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<id>[^/]+/[^/]+)"
_WEB_REPO = r"/(?:(?P<prefix>datasets|spaces)/)?(?P<id>[^/]+/[^/]+?)"


class HubError(Exception):
    """An HTTP error reply: status, message, optional `X-Error-Code`, extra headers and extra JSON body fields."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra: Any
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra


@dataclass(frozen=True)
class Entry:
    """A file of a commit. Its bytes are in the object store under `sha256`; `oid` is its git blob id (for an
    LFS file, the id of the pointer file, as git stores the pointer)."""

    sha256: str
    size: int
    oid: str
    lfs: bool

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))

    def info(self, path: str) -> dict:
        """The entry as the `tree` and `paths-info` endpoints describe a file."""
        out = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return out


@dataclass
class Commit:
    """An immutable snapshot of a repo: `files` maps each path to its entry."""

    oid: str
    parent: str | None
    files: dict[str, Entry]
    title: str
    message: str
    date: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Repo:
    """A repo: its commits by id, and its refs (branch or tag name -> commit id). PR refs are `refs/pr/N` branches."""

    repo_type: str
    repo_id: str
    private: bool
    extra: dict  # more fields for the repo info, e.g. a space's `sdk`
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit:
        """The commit a branch, tag or full commit id points to."""
        oid = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[oid]


@dataclass
class Request:
    """What a route handler gets: URL parameters (unquoted), query (first values), headers and raw body."""

    method: str
    params: dict[str, str]
    query: dict[str, str]
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict = field(default_factory=dict)


class HubServer:
    """The Hub state (repos in memory, file contents in a temp dir) and the HTTP server in front of it.

    The listening port is reserved at construction (so `endpoint` is known before any client library is imported)
    but connections are refused until `start()`. `stop()` closes open connections and deletes the storage.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._storage = tempfile.TemporaryDirectory(prefix="hub-server-")
        self._objects = Path(self._storage.name)
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler, bind_and_activate=False)
        self._httpd.hub = self
        self._httpd.server_bind()
        self.endpoint = f"http://{host}:{self._httpd.server_port}"
        self._thread: threading.Thread | None = None
        self._routes = self._route_table()
        #: Failure injection: while True, commit calls get no answer (the connection is dropped), as if the
        #: server went away after the LFS uploads and before the commit.
        self.drop_commits = False

    def start(self) -> "HubServer":
        self._httpd.server_activate()
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._httpd.close_connections()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        self._storage.cleanup()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @staticmethod
    def repo_id(name: str) -> str:
        """A fresh `tester/{name}-{random}` id, so tests sharing the server never collide."""
        return f"{USER}/{name}-{secrets.token_hex(4)}"

    # --- dispatch ---------------------------------------------------------------------------------------------

    def _route_table(self) -> list[tuple[tuple[str, ...], re.Pattern, Callable, bool]]:
        """(methods, path regex, handler, needs a token). A regex with an `id` group gets its repo looked up."""
        rev = r"(?P<rev>[^/]+)"
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami, True),
            ("GET", r"/api/agent-harnesses", lambda req: {"standardEnvVars": [], "harnesses": {}}, False),
            ("POST", r"/api/validate-yaml", self._validate_yaml, False),
            ("POST", r"/api/repos/create", self._create_repo, True),
            ("DELETE", r"/api/repos/delete", self._delete_repo, True),
            ("GET", rf"{_API_REPO}(?:/revision/{rev})?", self._repo_info, False),
            ("GET", rf"{_API_REPO}/tree/{rev}(?:/(?P<path>.+))?", self._tree, False),
            ("POST", rf"{_API_REPO}/paths-info/{rev}", self._paths_info, False),
            ("GET", rf"{_API_REPO}/refs", self._refs, False),
            # No discussions here; transformers lists them when it looks for a safetensors conversion PR.
            (
                "GET",
                rf"{_API_REPO}/discussions",
                lambda req, repo: {"discussions": [], "count": 0, "start": 0},
                False,
            ),
            ("GET", rf"{_API_REPO}/commits/{rev}", self._commits, False),
            ("POST", rf"{_API_REPO}/branch/(?P<branch>[^/]+)", self._create_branch, True),
            ("POST", rf"{_API_REPO}/tag/{rev}", self._create_tag, True),
            ("DELETE", rf"{_API_REPO}/tag/(?P<tag>[^/]+)", self._delete_tag, True),
            ("POST", rf"{_API_REPO}/preupload/{rev}", self._preupload, True),
            ("POST", rf"{_API_REPO}/commit/{rev}", self._commit, True),
            ("POST", rf"{_WEB_REPO}\.git/info/lfs/objects/batch", self._lfs_batch, True),
            ("PUT", rf"{_WEB_REPO}\.git/info/lfs/objects/(?P<oid>[0-9a-f]{{64}})", self._lfs_put, False),
            ("POST", rf"{_WEB_REPO}\.git/info/lfs/objects/verify", self._lfs_verify, False),
            (("GET", "HEAD"), rf"{_WEB_REPO}/resolve/{rev}/(?P<path>.+)", self._resolve, False),
        ]
        return [((m,) if isinstance(m, str) else m, re.compile(p), h, auth) for m, p, h, auth in routes]

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> Response | None:
        """Route one request; errors become replies with the Hub's error headers; None: drop the connection."""
        url = urlsplit(raw_path)
        if self.drop_commits and method == "POST" and "/commit/" in url.path:
            return None
        try:
            for methods, pattern, handler, needs_token in self._routes:
                match = pattern.fullmatch(url.path)
                if match is None or method not in methods:
                    continue
                if needs_token and not headers.get("Authorization", "").startswith("Bearer "):
                    raise HubError(401, "Invalid username or password.")
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                req = Request(method, params, query, headers, body)
                with self._lock:
                    if "id" in params:
                        repo_type = _REPO_TYPES[params.get("type") or params.get("prefix")]
                        result = handler(req, self._repo(repo_type, params["id"]))
                    else:
                        result = handler(req)
                return result if isinstance(result, Response) else Response(body=result)
            raise HubError(404, f"No route for {method} {url.path}")
        except HubError as e:
            headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            return Response(e.status, {"error": e.message, **e.extra}, headers)
        except Exception:  # a server bug: show it in the client's error message
            return Response(500, traceback.format_exc().encode(), {"Content-Type": "text/plain"})

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{_URL_PREFIXES[repo_type]}{repo_id}"

    # --- object store ---------------------------------------------------------------------------------------

    def _store(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        (self._objects / sha256).write_bytes(content)
        return sha256

    def _regular_file(self, content: bytes) -> Entry:
        """Store the content of a file that git keeps itself (not in LFS)."""
        return Entry(self._store(content), len(content), _git_blob_id(content), lfs=False)

    def _read(self, entry: Entry) -> bytes:
        return (self._objects / entry.sha256).read_bytes()

    def _object_size(self, sha256: str) -> int | None:
        path = self._objects / sha256
        return path.stat().st_size if path.exists() else None

    # --- account ----------------------------------------------------------------------------------------------

    def _whoami(self, req: Request) -> dict:
        token = {"displayName": "test-token", "role": "write"}
        auth = {"type": "access_token", "accessToken": token}
        return {
            "type": "user",
            "id": "0" * 24,
            "name": USER,
            "fullname": "Test User",
            "orgs": [],
            "auth": auth,
        }

    def _validate_yaml(self, req: Request) -> dict:
        """Accept any README whose YAML front matter parses (the Hub also checks the metadata schema)."""
        try:
            _front_matter(req.json()["content"])
        except yaml.YAMLError as e:
            raise HubError(400, f"Invalid YAML in README.md: {e}") from e
        return {"errors": [], "warnings": []}

    # --- repos ------------------------------------------------------------------------------------------------

    def _create_repo(self, req: Request) -> dict:
        """Create a repo with an initial commit holding `.gitattributes`, as the Hub does."""
        payload = req.json()
        repo_type, repo_id = payload.get("type") or "model", _repo_id(payload)
        if (repo_type, repo_id) in self._repos:
            raise HubError(
                409, f"You already created this {repo_type} repo", url=self._url(repo_type, repo_id)
            )
        extra = {"sdk": payload["sdk"]} if repo_type == "space" else {}
        repo = Repo(repo_type, repo_id, payload.get("visibility") == "private", extra)
        files = {".gitattributes": self._regular_file(DEFAULT_GITATTRIBUTES.encode())}
        initial = Commit(secrets.token_hex(20), None, files, "initial commit", "")
        repo.commits[initial.oid] = initial
        repo.branches["main"] = initial.oid
        self._repos[(repo_type, repo_id)] = repo
        return {"url": self._url(repo_type, repo_id), "name": repo_id, "id": repo_id}

    def _delete_repo(self, req: Request) -> dict:
        payload = req.json()
        repo = self._repo(payload.get("type") or "model", _repo_id(payload))
        del self._repos[(repo.repo_type, repo.repo_id)]
        return {}

    def _repo_info(self, req: Request, repo: Repo) -> dict:
        """Repo metadata at a revision (default `main`); `?blobs=true` adds sizes and LFS info to `siblings`."""
        commit = repo.resolve(req.params.get("rev", "main"))
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if _flag(req.query.get("blobs")):
                sibling.update(size=entry.size, blobId=entry.oid)
                if entry.lfs:
                    sibling["lfs"] = {
                        "size": entry.size,
                        "sha256": entry.sha256,
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        readme = commit.files.get("README.md")
        card = _front_matter(self._read(readme).decode()) if readme else None
        info = {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card or {}).get("tags") or []),
            "siblings": siblings,
            **repo.extra,
        }
        if card is not None:
            info["cardData"] = card
            if repo.repo_type == "model":
                info.update({k: card[k] for k in ("library_name", "pipeline_tag") if k in card})
        return info

    # --- refs and history -------------------------------------------------------------------------------------

    def _refs(self, req: Request, repo: Repo) -> dict:
        def ref(name: str, full: str, oid: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": oid}

        out = {
            "branches": [
                ref(b, f"refs/heads/{b}", o) for b, o in repo.branches.items() if not b.startswith("refs/pr/")
            ],
            "converts": [],
            "tags": [ref(t, f"refs/tags/{t}", o) for t, o in repo.tags.items()],
        }
        if req.query.get("include_prs"):
            out["pullRequests"] = [ref(b, b, o) for b, o in repo.branches.items() if b.startswith("refs/pr/")]
        return out

    def _commits(self, req: Request, repo: Repo) -> list[dict]:
        """The history of a revision, newest first."""
        out, commit = [], repo.resolve(req.params["rev"])
        while True:
            info = {
                "id": commit.oid,
                "title": commit.title,
                "message": commit.message,
                "date": _iso(commit.date),
            }
            out.append({**info, "authors": [{"user": USER}]})
            if commit.parent is None:
                return out
            commit = repo.commits[commit.parent]

    def _create_branch(self, req: Request, repo: Repo) -> dict:
        branch = req.params["branch"]
        if branch in repo.branches:
            raise HubError(409, f"Branch {branch} already exists")
        repo.branches[branch] = repo.resolve(req.json().get("startingPoint") or "main").oid
        return {}

    def _create_tag(self, req: Request, repo: Repo) -> dict:
        tag = req.json()["tag"]
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = repo.resolve(req.params["rev"]).oid
        return {}

    def _delete_tag(self, req: Request, repo: Repo) -> dict:
        if repo.tags.pop(req.params["tag"], None) is None:
            raise HubError(404, f"Invalid rev id: {req.params['tag']}", "RevisionNotFound")
        return {}

    # --- listings ---------------------------------------------------------------------------------------------

    def _tree(self, req: Request, repo: Repo) -> list[dict]:
        """Entries under a folder (direct children, or all descendants with `recursive=true`)."""
        commit = repo.resolve(req.params["rev"])
        folder = req.params.get("path", "").strip("/")
        prefix = f"{folder}/" if folder else ""
        recursive = _flag(req.query.get("recursive"))
        folders, files = set(), []
        for path in commit.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")  # the path's folders below `folder`, then its name
            depths = range(1, len(parts)) if recursive else range(1, min(len(parts), 2))
            folders.update(prefix + "/".join(parts[:depth]) for depth in depths)
            if recursive or len(parts) == 1:
                files.append(path)
        if folder and not (folders or files):
            raise HubError(404, f"{folder} does not exist on {req.params['rev']}", "EntryNotFound")
        out = [_folder_info(commit, path) for path in folders] + [commit.files[p].info(p) for p in files]
        return sorted(out, key=lambda info: info["path"])

    def _paths_info(self, req: Request, repo: Repo) -> list[dict]:
        """Info on the given (form-encoded) `paths`; missing paths are skipped, as on the Hub."""
        paths = parse_qs(req.body.decode()).get("paths", [])
        commit = repo.resolve(req.params["rev"])
        out = []
        for path in (p.strip("/") for p in paths):
            if path in commit.files:
                out.append(commit.files[path].info(path))
            elif any(p.startswith(f"{path}/") for p in commit.files):
                out.append(_folder_info(commit, path))
        return out

    # --- uploads ----------------------------------------------------------------------------------------------

    def _preupload(self, req: Request, repo: Repo) -> dict:
        """Say, per file, whether it goes through LFS, and give the id of the file already there (so that the client
        skips unchanged files)."""
        commit = repo.resolve(req.params["rev"])
        gitattributes = commit.files.get(".gitattributes")
        lines = self._read(gitattributes).decode().splitlines() if gitattributes else []
        lfs_patterns = [line.split()[0] for line in lines if "filter=lfs" in line.split()[1:]]
        out = []
        for file in req.json()["files"]:
            path, name = file["path"], file["path"].rsplit("/", 1)[-1]
            lfs = (
                file["size"] >= LFS_MIN_SIZE
                or b"\0" in base64.b64decode(file["sample"])
                or any(fnmatch(path if "/" in pattern else name, pattern) for pattern in lfs_patterns)
            )
            old = commit.files.get(path)
            oid = None if old is None else old.sha256 if old.lfs else old.oid
            out.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return {"files": out, "commitOid": commit.oid}

    def _lfs_batch(self, req: Request, repo: Repo) -> Response:
        """Git LFS batch API (upload only): objects already stored get no actions, so the client skips them."""
        payload = req.json()
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the LFS upload operation is supported")
        base = f"{self._url(repo.repo_type, repo.repo_id)}.git/info/lfs/objects"
        objects = []
        for obj in payload["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if self._object_size(obj["oid"]) != obj["size"]:
                item["actions"] = {
                    "upload": {"href": f"{base}/{obj['oid']}"},
                    "verify": {"href": f"{base}/verify"},
                }
            objects.append(item)
        body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return Response(body=body, headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, req: Request, repo: Repo) -> dict:
        if hashlib.sha256(req.body).hexdigest() != req.params["oid"]:
            raise HubError(400, "Uploaded content does not match its sha256")
        self._store(req.body)
        return {}

    def _lfs_verify(self, req: Request, repo: Repo) -> dict:
        obj = req.json()
        if self._object_size(obj["oid"]) != obj["size"]:
            raise HubError(404, f"LFS object {obj['oid']} of size {obj['size']} was not uploaded")
        return {}

    def _commit(self, req: Request, repo: Repo) -> dict:
        """Apply an NDJSON commit on top of a branch (or of a new `refs/pr/N` with `create_pr=1`)."""
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "A commit starts with a header line")
        header, rev = lines[0]["value"], req.params["rev"]
        pr_url = None
        if req.query.get("create_pr") == "1":
            num = 1 + sum(b.startswith("refs/pr/") for b in repo.branches)
            branch, pr_url = f"refs/pr/{num}", f"{self._url(repo.repo_type, repo.repo_id)}/discussions/{num}"
            repo.branches[branch] = repo.resolve(rev).oid
        elif rev in repo.branches:
            branch = rev
        else:
            repo.resolve(rev)  # 404 RevisionNotFound if it does not exist at all
            raise HubError(400, f"Can only commit to a branch, not to {rev}")
        parent = repo.commits[repo.branches[branch]]
        if header.get("parentCommit") not in (None, parent.oid):
            raise HubError(
                412, f"A commit has happened since {header['parentCommit']}: {branch} is at {parent.oid}"
            )
        files = dict(parent.files)
        for line in lines[1:]:
            self._apply(files, line["key"], line["value"])
        commit = Commit(
            secrets.token_hex(20), parent.oid, files, header["summary"], header.get("description", "")
        )
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        commit_url = f"{self._url(repo.repo_type, repo.repo_id)}/commit/{commit.oid}"
        return {"success": True, "commitOid": commit.oid, "commitUrl": commit_url, "pullRequestUrl": pr_url}

    def _apply(self, files: dict[str, Entry], key: str, value: dict) -> None:
        """Apply one commit operation to a file map."""
        path = value["path"].strip("/")
        if key == "file":
            files[path] = self._regular_file(base64.b64decode(value["content"]))
        elif key == "lfsFile":
            sha256, size = value["oid"], self._object_size(value["oid"])
            if size is None:
                raise HubError(422, f"LFS object {sha256} for {path} was not uploaded")
            files[path] = Entry(sha256, size, _git_blob_id(_lfs_pointer(sha256, size)), lfs=True)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            inside = [p for p in files if p.startswith(f"{path}/")]
            if not inside:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in inside:
                del files[p]
        else:
            raise HubError(400, f"Unsupported commit operation: {key}")

    # --- downloads --------------------------------------------------------------------------------------------

    def _resolve(self, req: Request, repo: Repo) -> Response:
        """A file's bytes (or, for HEAD, its headers) at a revision, with the metadata headers the client needs."""
        commit = repo.resolve(req.params["rev"])
        headers = {"X-Repo-Commit": commit.oid}
        entry = commit.files.get(req.params["path"])
        if entry is None:
            raise HubError(404, f"Entry not found: {req.params['path']}", "EntryNotFound", headers)
        headers.update({"ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"', "Accept-Ranges": "bytes"})
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        span = _byte_range(req.headers.get("Range"), entry.size)
        if span is None:
            headers["Content-Length"] = str(entry.size)
            return Response(200, None if req.method == "HEAD" else self._read(entry), headers)
        start, end = span
        headers.update(
            {"Content-Range": f"bytes {start}-{end}/{entry.size}", "Content-Length": str(end - start + 1)}
        )
        return Response(206, None if req.method == "HEAD" else self._read(entry)[start : end + 1], headers)


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server that remembers its open connections, so that `stop()` can end idle keep-alive threads."""

    hub: HubServer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()

    def process_request(self, request, client_address):
        self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """Reads a request (with a `Content-Length` or chunked body), lets the HubServer answer it, writes the reply."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients pool connections
    server: _HTTPServer

    def _serve(self) -> None:
        response = self.server.hub.handle(self.command, self.path, self.headers, self._read_body())
        if response is None:  # failure injection: no reply at all
            self.close_connection = True
            return
        body = response.body
        if not isinstance(body, bytes | None):
            body = json.dumps(body).encode()
            response.headers.setdefault("Content-Type", "application/json")
        self.send_response(response.status)
        response.headers.setdefault("Content-Length", str(len(body or b"")))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailer headers
            pass
        return b"".join(chunks)

    def log_message(self, format, *args) -> None:
        """Silence the per-request access log."""


def _repo_id(payload: dict) -> str:
    """The id named by a `repos/create` or `repos/delete` payload; no organization means the user's namespace."""
    return f"{payload.get('organization') or USER}/{payload['name']}"


def _flag(value: str | None) -> bool:
    """A boolean query parameter, as clients spell it."""
    return value in ("1", "true", "True")


def _git_blob_id(blob: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    """The small file git stores in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _folder_info(commit: Commit, folder: str) -> dict:
    """A folder as the `tree` and `paths-info` endpoints describe it; its oid hashes what it contains."""
    inside = sorted((p, e.oid) for p, e in commit.files.items() if p.startswith(f"{folder}/"))
    return {
        "type": "directory",
        "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest(),
        "size": 0,
        "path": folder,
    }


def _front_matter(text: str) -> dict | None:
    """The YAML metadata block at the top of a README (the Hub's `cardData`), or None."""
    match = re.match(r"\s*---\r?\n(.*?)\r?\n---(?:\r?\n|$)", text, re.DOTALL)
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else None


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) of a single `Range: bytes=...` header, or None to send the whole file."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    start, end = (size - int(last), size - 1) if first == "" else (int(first), int(last or size - 1))
    start, end = max(start, 0), min(end, size - 1)
    if start > end:
        raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _iso(date: datetime) -> str:
    return date.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
