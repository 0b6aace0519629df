"""A local HTTP server that serves repositories in the Hugging Face hub's layout.

Enough of the hub's API for ``huggingface_hub`` (pointed at it by ``HF_ENDPOINT``)
to pull from it as from the real one:

- ``GET /api/models/<repo>/revision/<rev>``: the repo's commit and files;
- ``GET /api/models/<repo>/tree/<rev>``: the file listing, with the git blob id of
  every file and, for a large (LFS) one, its sha256 and size;
- ``HEAD``/``GET /<repo>/resolve/<rev>/<path>``: a file, with ``X-Repo-Commit`` and
  ``ETag`` (the sha256 for LFS files, the blob id for others, as the hub does) and
  ``Range`` requests answered with 206.

Errors carry the hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``), so the client raises its real exceptions. A private repo
answers 401 without its bearer token. Two faults can be injected: ``cut`` serves
the first GET of a file short and drops the connection (the client must resume),
and ``corrupt`` serves other bytes than the listing describes (the puller must
catch it). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_THRESHOLD = 10_000
"""Files above this many bytes are served as LFS files (the hub's limit is 10 MB;
lower here so small test repos have both kinds)."""


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None
    """A private repo's token; ``None`` is public."""
    corrupt: dict[str, bytes] = field(default_factory=dict)
    """Bytes served instead of the listed ones, by path."""
    cut: set[str] = field(default_factory=set)
    """Paths whose first full GET is cut off halfway."""

    @property
    def commit(self) -> str:
        digest = hashlib.sha1(usedforsecurity=False)
        for path in sorted(self.files):
            digest.update(path.encode() + b"\0" + hashlib.sha256(self.files[path]).digest())
        return digest.hexdigest()


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _entry(path: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "file",
        "oid": blob_id(data),
        "size": len(data),
        "path": path,
    }
    if len(data) > LFS_THRESHOLD:
        lfs = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        entry["lfs"] = lfs
    return entry


class FakeHub:
    def __init__(self, repos: dict[str, Repo]) -> None:
        self.repos = repos
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def gets(self, filename: str) -> list[Seen]:
        """The file downloads (GETs) of ``filename`` so far."""
        return [s for s in self.seen if s.method == "GET" and s.path.endswith(f"/{filename}")]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, body=False)

            def do_GET(self) -> None:
                hub._serve(self, body=True)

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(request.path).path)
        with self._lock:
            self.seen.append(
                Seen(
                    request.command,
                    path,
                    request.headers.get("Range"),
                    request.headers.get("Authorization"),
                )
            )
        if path.startswith("/api/models/"):
            self._api(request, path.removeprefix("/api/models/"))
        elif "/resolve/" in path:
            repo_id, _, rest = path.lstrip("/").partition("/resolve/")
            revision, _, filename = rest.partition("/")
            self._file(request, repo_id, revision, filename, body=body)
        else:
            _send(request, 404, b"", {"X-Error-Code": "RepoNotFound"})

    def _repo(self, request: BaseHTTPRequestHandler, repo_id: str, revision: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            _send(request, 404, b"not found", {"X-Error-Code": "RepoNotFound"})
            return None
        if (
            repo.token is not None
            and request.headers.get("Authorization") != f"Bearer {repo.token}"
        ):
            _send(request, 401, b"unauthorized", {"X-Error-Code": "RepoNotFound"})
            return None
        if revision not in ("main", repo.commit):
            _send(request, 404, b"no revision", {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo

    def _api(self, request: BaseHTTPRequestHandler, rest: str) -> None:
        for marker in ("/revision/", "/tree/"):
            if marker in rest:
                repo_id, _, tail = rest.partition(marker)
                revision = tail.split("/", 1)[0]
                repo = self._repo(request, repo_id, revision)
                if repo is None:
                    return
                if marker == "/revision/":
                    document: object = {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": repo.commit,
                        "private": repo.token is not None,
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                    }
                else:
                    document = [_entry(p, d) for p, d in sorted(repo.files.items())]
                _send(
                    request,
                    200,
                    json.dumps(document).encode(),
                    {"Content-Type": "application/json"},
                )
                return
        _send(request, 404, b"", {"X-Error-Code": "RepoNotFound"})

    def _file(
        self, request: BaseHTTPRequestHandler, repo_id: str, revision: str, name: str, *, body: bool
    ) -> None:
        repo = self._repo(request, repo_id, revision)
        if repo is None:
            return
        if name not in repo.files:
            _send(
                request, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.commit}
            )
            return
        listed = repo.files[name]
        data = repo.corrupt.get(name, listed)
        etag = (
            hashlib.sha256(listed).hexdigest() if len(listed) > LFS_THRESHOLD else blob_id(listed)
        )
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if not body:
            headers["Content-Length"] = str(len(data))
            request.send_response(200)
            for key, value in headers.items():
                request.send_header(key, value)
            request.end_headers()
            return
        start = 0
        if (ranged := request.headers.get("Range")) and ranged.startswith("bytes="):
            start = int(ranged.removeprefix("bytes=").split("-", 1)[0])
        if start == 0 and name in repo.cut:
            repo.cut.discard(name)
            request.send_response(200)
            for key, value in {**headers, "Content-Length": str(len(data))}.items():
                request.send_header(key, value)
            request.end_headers()
            request.wfile.write(data[: len(data) // 2])
            request.wfile.flush()
            request.close_connection = True
            request.connection.shutdown(2)  # the peer sees the body end early
            return
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        _send(request, 206 if start else 200, data[start:], headers)

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _send(
    request: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]
) -> None:
    request.send_response(status)
    for key, value in {**headers, "Content-Length": str(len(body))}.items():
        request.send_header(key, value)
    request.end_headers()
    request.wfile.write(body)
