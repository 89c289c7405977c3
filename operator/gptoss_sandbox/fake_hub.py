"""A test stand-in for a Hugging Face Hub-compatible endpoint, used by tests and the local
sandbox only. Nothing in the product imports it.

It speaks the part of the Hub's HTTP protocol that ``huggingface_hub`` uses to read a model
repository: ``GET /api/models/{repo}[/revision/{rev}]`` (``model_info``, with ``blobs=true`` for
file metadata), ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (the listing ``snapshot_download``
reads) and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (``hf_hub_download``). Small files are
served like regular git files (``ETag`` = git blob id). Large files behave like Git LFS files on
the real Hub: ``resolve`` answers ``302`` with ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``
and points at a signed URL on a second origin, the "CDN" (another port on 127.0.0.1), which
serves the bytes without needing the token. No ``X-Xet-*`` header is ever sent, so clients use
plain HTTP. Error responses carry ``X-Error-Code``/``X-Error-Message`` like the Hub's, so the
client raises its usual exception classes.

Knobs, settable at any time: ``required_token`` (every repo private), ``gated_repos``,
``bytes_per_second``, ``stall_after_bytes``, ``fail_after_bytes`` (with ``fail_with_reset``)
and ``lfs_redirect``. Counters: ``bytes_served``, ``bytes_served_per_path`` and ``requests``.
It binds 127.0.0.1, or the one address of this machine it is given (``host``: the real
node's link, where pods reach it through a Service).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import select
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["DEFAULT_LFS_THRESHOLD", "LFS_SUFFIXES", "FakeHub", "RequestRecord"]

#: Files with these suffixes are always stored as LFS files, whatever their size.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".msgpack", ".h5")
#: Files at least this large are stored as LFS files.
DEFAULT_LFS_THRESHOLD = 10 * 1024

_HOST = "127.0.0.1"
_CHUNK = 64 * 1024
_TIMESTAMP = "2025-08-05T00:00:00.000Z"
_URL_TTL_SECONDS = 3600
_POLL_SECONDS = 0.05
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_REPO_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class RequestRecord(NamedTuple):
    """One request as the hub or its CDN received it (``path`` without the query)."""

    method: str
    path: str
    range: str | None


@dataclass(frozen=True)
class _Blob:
    data: bytes
    git_oid: str
    sha256: str
    lfs: bool
    pointer_size: int

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class _Repo:
    repo_id: str
    default_branch: str
    commits: dict[str, Mapping[str, _Blob]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class _HubError(Exception):
    """An error answer: status, ``X-Error-Code`` and ``X-Error-Message``."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        commit: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit
        self.headers = dict(headers or {})


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _make_blob(data: bytes, lfs: bool) -> _Blob:
    sha256 = hashlib.sha256(data).hexdigest()
    if not lfs:
        return _Blob(data, _git_blob_oid(data), sha256, False, 0)
    pointer = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    ).encode()
    return _Blob(data, _git_blob_oid(pointer), sha256, True, len(pointer))


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid file path in repo: {path!r}")


def _disposition(kind: str, path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    fallback = name.encode("ascii", "replace").decode().replace('"', "_")
    return f"{kind}; filename*=UTF-8''{quote(name)}; filename=\"{fallback}\";"


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) for one byte range; None to ignore the header."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = size if not last else min(int(last) + 1, size)
        if last and int(last) < start:
            return None
    if start >= size:
        raise _HubError(
            416,
            None,
            "Requested Range Not Satisfiable",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub, role: str, host: str) -> None:
        self.hub = hub
        self.role = role
        self.host = host
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.idle = threading.Condition(self.connections_lock)
        super().__init__((host, 0), _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer's reverse DNS lookup of the address.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.host
        self.server_port = int(self.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.server_port}"

    def drop_connections(self, timeout: float) -> None:
        """Cut every open connection and wait for their handlers to finish."""
        with self.connections_lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self.idle.wait_for(lambda: not self.connections, timeout=timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    sys_version = ""

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _srv(self) -> _Server:
        assert isinstance(self.server, _Server)
        return self.server

    @property
    def _hub(self) -> FakeHub:
        return self._srv.hub

    def setup(self) -> None:
        super().setup()
        with self._srv.connections_lock:
            self._srv.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self._srv.connections_lock:
                self._srv.connections.discard(self.connection)
                self._srv.idle.notify_all()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet; tests read ``FakeHub.requests`` instead."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self._hub._record(RequestRecord(self.command, split.path, self.headers.get("Range")))
        try:
            if self._srv.role == "cdn":
                self._serve_cdn(split.path, parse_qs(split.query))
            else:
                self._serve_hub(split.path, parse_qs(split.query))
        except _HubError as error:
            self._send_error(error, api=split.path.startswith("/api/"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _start(self, status: int, headers: Mapping[str, str], length: int) -> None:
        self.send_response(status)
        self.send_header("X-Request-Id", f"Root=1-{uuid.uuid4().hex}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send_bytes(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self._start(status, headers, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, error: _HubError, *, api: bool) -> None:
        if self._srv.role == "cdn":
            code = {403: "AccessDenied", 404: "NoSuchKey", 416: "InvalidRange"}
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><Error>"
                f"<Code>{code.get(error.status, 'Error')}</Code>"
                f"<Message>{error.message}</Message></Error>"
            ).encode()
            self._send_bytes(
                error.status, body, {"Content-Type": "application/xml", **error.headers}
            )
            return
        headers = {"X-Error-Message": error.message}
        if error.code is not None:
            headers["X-Error-Code"] = error.code
        if error.commit is not None:
            headers["X-Repo-Commit"] = error.commit
        headers.update(error.headers)
        if api:
            headers["Content-Type"] = "application/json; charset=utf-8"
            body = json.dumps({"error": error.message}).encode()
        else:
            headers["Content-Type"] = "text/plain; charset=utf-8"
            body = error.message.encode()
        self._send_bytes(error.status, body, headers)

    # -- the hub ----------------------------------------------------------------------------

    def _serve_hub(self, path: str, query: dict[str, list[str]]) -> None:
        segments = [unquote(s) for s in path.split("/")[1:]]
        if len(segments) >= 4 and segments[0] == "api":
            self._serve_api(segments[1], f"{segments[2]}/{segments[3]}", segments[4:], query)
        elif len(segments) >= 5 and segments[2] == "resolve":
            self._serve_resolve(f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:]))
        else:
            raise _HubError(404, None, "Not Found")

    def _authorize(self, repo_id: str, *, content: bool) -> _Repo:
        """Apply the Hub's access rules: private (token), missing, gated."""
        hub = self._hub
        header = self.headers.get("Authorization") or ""
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        required = hub.required_token
        if required is not None:
            if token is None:
                raise _HubError(401, "RepoNotFound", "Repository not found")
            if not hmac.compare_digest(token.encode(), required.encode()):
                raise _HubError(401, None, "Invalid credentials in Authorization header")
        authenticated = token is not None
        repo = hub._repo(repo_id)
        if repo is None:
            raise _HubError(404 if authenticated else 401, "RepoNotFound", "Repository not found")
        if repo_id in hub.gated_repos:
            if not authenticated:
                raise _HubError(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                )
            if content:
                raise _HubError(
                    403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted and you are not in the authorized "
                    f"list. Visit {hub.url}/{repo_id} to ask for access.",
                )
        return repo

    def _files(self, repo: _Repo, revision: str) -> tuple[str, Mapping[str, _Blob]]:
        found = self._hub._lookup(repo, revision)
        if found is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return found

    def _serve_api(
        self, kind: str, repo_id: str, rest: list[str], query: dict[str, list[str]]
    ) -> None:
        if kind != "models":
            raise _HubError(404, "RepoNotFound", "Repository not found")
        repo = self._authorize(repo_id, content=False)
        if not rest or (rest[0] == "revision" and len(rest) >= 2):
            revision = "/".join(rest[1:]) or repo.default_branch
            commit, files = self._files(repo, revision)
            blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
            info = self._hub._model_info(repo_id, commit, files, blobs=blobs)
            self._send_json(info)
        elif rest[0] == "tree" and len(rest) >= 2:
            commit, files = self._files(repo, rest[1])
            recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
            self._send_json(_tree(commit, files, "/".join(rest[2:]).strip("/"), recursive))
        else:
            raise _HubError(404, None, "Not Found")

    def _send_json(self, payload: object) -> None:
        body = json.dumps(payload).encode()
        self._send_bytes(200, body, {"Content-Type": "application/json; charset=utf-8"})

    def _serve_resolve(self, repo_id: str, revision: str, path: str) -> None:
        repo = self._authorize(repo_id, content=True)
        commit, files = self._files(repo, revision)
        blob = files.get(path)
        if blob is None:
            raise _HubError(404, "EntryNotFound", "Entry not found", commit=commit)
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
        if not blob.lfs:
            headers["ETag"] = f'"{blob.git_oid}"'
            headers["Content-Type"] = "text/plain; charset=utf-8"
            headers["Content-Disposition"] = _disposition("inline", path)
            self._send_file(blob, f"{repo_id}/{path}", headers)
            return
        headers["ETag"] = f'"{blob.sha256}"'
        headers["X-Linked-Etag"] = f'"{blob.sha256}"'
        headers["X-Linked-Size"] = str(blob.size)
        if self._hub.lfs_redirect:
            location = self._hub._signed_cdn_url(repo_id, path, blob)
            headers["Location"] = location
            headers["Content-Type"] = "text/plain; charset=utf-8"
            self._send_bytes(302, f"Found. Redirecting to {location}".encode(), headers)
            return
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Disposition"] = _disposition("attachment", path)
        self._send_file(blob, f"{repo_id}/{path}", headers)

    # -- the CDN ----------------------------------------------------------------------------

    def _serve_cdn(self, path: str, query: dict[str, list[str]]) -> None:
        expires = query.get("Expires", [""])[-1]
        signature = query.get("Signature", [""])[-1]
        expected = self._hub._sign(path, expires)
        if not expires.isdigit() or not hmac.compare_digest(signature, expected):
            raise _HubError(403, None, "Access denied")
        if int(expires) < time.time():
            raise _HubError(403, None, "Request has expired")
        segments = [unquote(s) for s in path.split("/")[1:]]
        blob = self._hub._blob(segments[3]) if len(segments) >= 5 else None
        if blob is None:
            raise _HubError(404, None, "Not Found")
        repo_path = "/".join(segments[4:])
        headers = {
            "ETag": f'"{blob.sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": _disposition("attachment", repo_path),
        }
        self._send_file(blob, f"{segments[1]}/{segments[2]}/{repo_path}", headers)

    # -- file bodies ------------------------------------------------------------------------

    def _send_file(self, blob: _Blob, key: str, headers: dict[str, str]) -> None:
        start, end, status = 0, blob.size, 200
        requested = self.headers.get("Range")
        if requested is not None:
            byte_range = _parse_range(requested, blob.size)
            if byte_range is not None:
                start, end = byte_range
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        self._start(status, headers, end - start)
        if self.command != "HEAD":
            self._stream(blob.data, start, end, key)

    def _stream(self, data: bytes, start: int, end: int, key: str) -> None:
        hub = self._hub
        view = memoryview(data)
        pos = start
        while pos < end:
            if hub._stopping.is_set():
                self._drop(reset=False)
                return
            sent = pos - start
            fail = hub._armed("fail")
            if fail is not None and sent >= fail and hub._take("fail"):
                self._drop(reset=hub.fail_with_reset)
                return
            stall = hub._armed("stall")
            if stall is not None and sent >= stall and hub._take("stall"):
                if not self._stall(sent):
                    self._drop(reset=False)
                    return
                continue
            rate = hub.bytes_per_second
            chunk = max(1, min(_CHUNK, rate // 20)) if rate > 0 else _CHUNK
            limit = min(end, pos + chunk)
            for offset in (fail, stall):
                if offset is not None and offset > sent:
                    limit = min(limit, start + offset)
            self.wfile.write(view[pos:limit])
            hub._count(key, limit - pos)
            if rate > 0:
                hub._stopping.wait((limit - pos) / rate)
            pos = limit

    def _stall(self, sent: int) -> bool:
        """Hold the body; True once the knob is cleared or raised, False on stop or hang-up."""
        hub = self._hub
        while (knob := hub.stall_after_bytes) is not None and knob <= sent:
            if hub._stopping.is_set():
                return False
            readable, _, _ = select.select([self.connection], [], [], _POLL_SECONDS)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return False  # the client hung up
                except OSError:
                    return False
                hub._stopping.wait(_POLL_SECONDS)
        return True

    def _drop(self, *, reset: bool) -> None:
        """End the connection mid-body: a FIN, or a TCP reset when ``reset``."""
        self.close_connection = True
        try:
            if reset:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _tree(
    commit: str, files: Mapping[str, _Blob], prefix: str, recursive: bool
) -> list[dict[str, Any]]:
    base = f"{prefix}/" if prefix else ""
    folders: set[str] = set()
    listed: list[str] = []
    for path in sorted(files):
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        if recursive:
            folders.update(base + "/".join(parts[:i]) for i in range(1, len(parts)))
            listed.append(path)
        elif len(parts) > 1:
            folders.add(base + parts[0])
        else:
            listed.append(path)
    if prefix and not folders and not listed:
        raise _HubError(404, "EntryNotFound", "Entry not found", commit=commit)
    entries: list[dict[str, Any]] = [
        {
            "type": "directory",
            "oid": hashlib.sha1(f"tree {commit} {folder}".encode()).hexdigest(),
            "size": 0,
            "path": folder,
        }
        for folder in sorted(folders)
    ]
    for path in listed:
        blob = files[path]
        entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": blob.size}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
        entry["path"] = path
        entries.append(entry)
    return entries


class FakeHub:
    """A Hub-compatible HTTP endpoint on 127.0.0.1, with a companion "CDN" for LFS bytes.

    Knobs (plain attributes, read on every request or chunk):

    - ``required_token``: None for public repos; else every repo is private and requests need
      ``Authorization: Bearer <token>`` (no token: 401 ``RepoNotFound``; another token: 401
      ``Invalid credentials in Authorization header``).
    - ``gated_repos``: repo ids that are gated for every token. Anonymous requests get 401
      ``GatedRepo``; authenticated ones may read metadata but get 403 ``GatedRepo`` for files.
    - ``bytes_per_second``: throttle for file bodies (0 = unlimited).
    - ``stall_after_bytes``: each file body (full or ranged) sends this many bytes, then
      hangs with the connection open until the knob is cleared or raised (the body then goes
      on), the client hangs up, or the hub stops.
    - ``fail_after_bytes``: each file body sends this many bytes, then the connection is
      closed (FIN; a TCP reset when ``fail_with_reset``, which may lose bytes in flight).
    - ``stall_times`` / ``fail_times``: None = every body is hit while the knob is set; a
      number = only that many more bodies are hit (counted down as they are).
    - ``lfs_redirect``: LFS files answer 302 to the CDN (default, as the Hub does); when False
      the hub serves their bytes itself.

    Counters: ``bytes_served``, ``bytes_served_per_path`` (keyed ``"{repo_id}/{path}"``, hub
    and CDN alike) and ``requests`` (one ``RequestRecord`` per request, hub and CDN).
    """

    def __init__(
        self,
        *,
        required_token: str | None = None,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        lfs_redirect: bool = True,
        host: str = _HOST,
    ) -> None:
        self.host = host
        self.required_token = required_token
        self.gated_repos: set[str] = set()
        self.bytes_per_second = 0
        self.stall_after_bytes: int | None = None
        self.stall_times: int | None = None
        self.fail_after_bytes: int | None = None
        self.fail_times: int | None = None
        self.fail_with_reset = False
        self.lfs_redirect = lfs_redirect
        self.lfs_threshold = lfs_threshold

        self.bytes_served = 0
        self.bytes_served_per_path: dict[str, int] = {}
        self.requests: list[RequestRecord] = []

        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, _Blob] = {}
        self._secret = secrets.token_bytes(32)
        self._stopping = threading.Event()
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeHub:
        """Listen on two free ports of ``host`` (hub and CDN) and serve in threads."""
        if self._servers:
            raise RuntimeError("FakeHub is already running")
        self._stopping.clear()
        self._servers = [_Server(self, "hub", self.host), _Server(self, "cdn", self.host)]
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": _POLL_SECONDS},
                name=f"fake-hub-{server.role}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop serving, cut open (also stalled) connections and release the ports."""
        servers, threads = self._servers, self._threads
        self._servers, self._threads = [], []
        self._stopping.set()
        for server in servers:
            server.shutdown()
        for server in servers:
            server.drop_connections(timeout=5)
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint to give ``huggingface_hub`` (``http://HOST:PORT``)."""
        return self._server("hub").origin

    @property
    def cdn_url(self) -> str:
        """The origin LFS downloads are redirected to."""
        return self._server("cdn").origin

    def _server(self, role: str) -> _Server:
        for server in self._servers:
            if server.role == role:
                return server
        raise RuntimeError("FakeHub is not running; call start() first")

    # -- content ----------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        branch: str = "main",
        commit: str | None = None,
        *,
        tags: Iterable[str] = (),
    ) -> str:
        """Add a revision of ``repo_id`` (created if new), point ``branch`` and ``tags`` at it.

        Returns the commit sha: ``commit`` if given, else derived from the repo id and files.
        """
        if _REPO_ID_RE.fullmatch(repo_id) is None:
            raise ValueError(f"repo id must look like 'owner/name': {repo_id!r}")
        blobs: dict[str, _Blob] = {}
        for path, data in files.items():
            _check_path(path)
            lfs = path.endswith(LFS_SUFFIXES) or len(data) >= self.lfs_threshold
            blobs[path] = _make_blob(bytes(data), lfs)
        if commit is None:
            digest = hashlib.sha1(f"commit {repo_id}\n".encode())
            for path in sorted(blobs):
                digest.update(f"{path}\0{blobs[path].git_oid}\n".encode())
            commit = digest.hexdigest()
        elif _COMMIT_RE.fullmatch(commit) is None:
            raise ValueError(f"commit must be 40 lowercase hex digits: {commit!r}")
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo(repo_id, default_branch=branch))
            known = repo.commits.get(commit)
            if known is not None and dict(known) != blobs:
                raise ValueError(f"commit {commit} already exists with other files")
            repo.commits[commit] = blobs
            repo.refs[branch] = commit
            for tag in tags:
                repo.refs[tag] = commit
            self._blobs.update((blob.sha256, blob) for blob in blobs.values() if blob.lfs)
        return commit

    def add_tag(self, repo_id: str, tag: str, revision: str = "main") -> str:
        """Point ``tag`` (or a branch name) at ``revision``; returns the commit sha."""
        with self._lock:
            repo = self._repos.get(repo_id)
            commit = repo.resolve(revision) if repo is not None else None
            if repo is None or commit is None:
                raise KeyError(f"unknown repo or revision: {repo_id}@{revision}")
            repo.refs[tag] = commit
            return commit

    def resolve(self, repo_id: str, revision: str) -> str | None:
        """The commit sha ``revision`` names in ``repo_id``, or None."""
        with self._lock:
            repo = self._repos.get(repo_id)
            return repo.resolve(revision) if repo is not None else None

    def reset_counters(self) -> None:
        """Forget served bytes and recorded requests."""
        with self._lock:
            self.bytes_served = 0
            self.bytes_served_per_path = {}
            self.requests = []

    # -- used by the handler ----------------------------------------------------------------

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def _armed(self, kind: Literal["fail", "stall"]) -> int | None:
        """The byte count at which a fault knob bites, if set and not used up."""
        knob, times = (
            (self.fail_after_bytes, self.fail_times)
            if kind == "fail"
            else (self.stall_after_bytes, self.stall_times)
        )
        return knob if knob is not None and (times is None or times > 0) else None

    def _take(self, kind: Literal["fail", "stall"]) -> bool:
        """Use up one fault of ``kind``; False when its budget is spent."""
        with self._lock:
            times = self.fail_times if kind == "fail" else self.stall_times
            if times is None:
                return True
            if times <= 0:
                return False
            if kind == "fail":
                self.fail_times = times - 1
            else:
                self.stall_times = times - 1
            return True

    def _count(self, key: str, size: int) -> None:
        with self._lock:
            self.bytes_served += size
            self.bytes_served_per_path[key] = self.bytes_served_per_path.get(key, 0) + size

    def _repo(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    def _lookup(self, repo: _Repo, revision: str) -> tuple[str, Mapping[str, _Blob]] | None:
        with self._lock:
            commit = repo.resolve(revision)
            return None if commit is None else (commit, repo.commits[commit])

    def _blob(self, sha256: str) -> _Blob | None:
        with self._lock:
            return self._blobs.get(sha256)

    def _sign(self, path: str, expires: str) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def _signed_cdn_url(self, repo_id: str, path: str, blob: _Blob) -> str:
        cdn_path = f"/lfs/{quote(repo_id)}/{blob.sha256}/{quote(path)}"
        expires = str(int(time.time()) + _URL_TTL_SECONDS)
        signature = self._sign(cdn_path, expires)
        return f"{self.cdn_url}{cdn_path}?Expires={expires}&Signature={signature}"

    def _model_info(
        self, repo_id: str, commit: str, files: Mapping[str, _Blob], *, blobs: bool
    ) -> dict[str, Any]:
        siblings: list[dict[str, Any]] = []
        for path in sorted(files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                blob = files[path]
                sibling.update(blobId=blob.git_oid, size=blob.size)
                if blob.lfs:
                    sibling["lfs"] = {
                        "sha256": blob.sha256,
                        "size": blob.size,
                        "pointerSize": blob.pointer_size,
                    }
            siblings.append(sibling)
        return {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/", 1)[0],
            "sha": commit,
            "lastModified": _TIMESTAMP,
            "createdAt": _TIMESTAMP,
            "private": self.required_token is not None,
            "gated": "manual" if repo_id in self.gated_repos else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(blob.size for blob in files.values()),
        }
