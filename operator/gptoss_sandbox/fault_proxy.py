"""A fault-injecting proxy in front of kube-apiserver, for the fault tests.

Components under test talk plain HTTP to the proxy (``kubeconfig`` writes a kubeconfig
for that); the proxy forwards every request over TLS with the credentials of the
upstream kubeconfig it was given, streaming responses (watches included), except those a
:class:`Fault` rule matches: those get the rule's status (429 with ``Retry-After``, 500,
503, ...) or a dropped connection, without reaching the apiserver.

``freeze_watches`` holds every watch stream's data from then on (new watches included)
without closing anything: what a half-open connection looks like to the client.

It is a test tool: the identity is the upstream kubeconfig's, whoever the caller is.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from gptoss_sandbox.cluster import free_port

# Hop-by-hop headers and those aiohttp recomputes; never forwarded.
_SKIPPED_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
    "upgrade",
    "accept-encoding",
}


@dataclass
class Fault:
    """Answer matching requests with ``status`` instead of forwarding them, or drop the
    connection when ``status`` is 0, ``times`` times (None: until removed). With
    ``forward`` the request reaches the apiserver first and only its answer is lost
    (a write that succeeded while the client timed out); with ``forward`` and ``status``
    None the answer arrives, ``delay`` seconds late (a write in flight for that long).

    ``method`` and ``path`` (a regular expression searched in the path) select the
    requests; ``body`` (a substring) narrows them to requests whose body contains it.
    """

    method: str
    path: str
    status: int | None = 0
    body: str | None = None
    times: int | None = 1
    retry_after: int | None = None
    forward: bool = False
    delay: float = 0.0
    hits: int = 0

    def matches(self, method: str, path: str, body: bytes) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if method != self.method or not re.search(self.path, path):
            return False
        return self.body is None or self.body.encode() in body


@dataclass
class _Upstream:
    server: str
    ssl: ssl.SSLContext


def _upstream(kubeconfig: Path, workdir: Path) -> _Upstream:
    document = yaml.safe_load(kubeconfig.read_text())
    cluster = document["clusters"][0]["cluster"]
    user = document["users"][0]["user"]
    files = {}
    for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
        path = workdir / key
        path.write_bytes(base64.b64decode(cluster.get(key) or user[key]))
        files[key] = str(path)
    context = ssl.create_default_context(cafile=files["certificate-authority-data"])
    context.load_cert_chain(files["client-certificate-data"], files["client-key-data"])
    return _Upstream(cluster["server"], context)


@dataclass
class FaultProxy:
    upstream_kubeconfig: Path
    faults: list[Fault] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    forwarded: int = 0
    injected: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._thawed: asyncio.Event | None = None  # cleared while watches are frozen
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="fault-proxy-")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig that reaches the apiserver through this proxy."""
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fault-proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "through-proxy", "user": {}}],
            "contexts": [
                {
                    "name": "fault-proxy",
                    "context": {"cluster": "fault-proxy", "user": "through-proxy"},
                }
            ],
            "current-context": "fault-proxy",
        }
        path.write_text(yaml.safe_dump(document))
        return path

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
        self._in_loop(lambda thawed: thawed.set())

    def freeze_watches(self) -> None:
        self._in_loop(lambda thawed: thawed.clear())

    def _in_loop(self, action: Any) -> None:
        if self._loop is not None and self._thawed is not None:
            self._loop.call_soon_threadsafe(action, self._thawed)

    def _match(self, method: str, path: str, body: bytes) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path, body):
                    fault.hits += 1
                    self.injected += 1
                    return fault
            self.forwarded += 1
        return None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout=30):
            raise RuntimeError("the fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._workdir.cleanup()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._thawed = asyncio.Event()
        self._thawed.set()
        upstream = _upstream(self.upstream_kubeconfig, Path(self._workdir.name))
        connector = aiohttp.TCPConnector(ssl=upstream.ssl, limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handler(session, upstream.server))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", self.port)
            await site.start()
            self._started.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()

    def _handler(self, session: aiohttp.ClientSession, server: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            fault = self._match(request.method, request.path, body)
            if fault is not None and not fault.forward:
                return _injected(request, fault)
            headers = {
                key: value
                for key, value in request.headers.items()
                if key.lower() not in _SKIPPED_HEADERS
            }
            async with session.request(
                request.method,
                server + request.path_qs,
                headers=headers,
                data=body or None,
            ) as upstream:
                kept = {
                    key: value
                    for key, value in upstream.headers.items()
                    if key.lower() not in _SKIPPED_HEADERS
                }
                if fault is not None:
                    answer = await upstream.read()
                    await asyncio.sleep(fault.delay)
                    if fault.status is None:
                        return web.Response(body=answer, status=upstream.status, headers=kept)
                    return _injected(request, fault)
                response = web.StreamResponse(status=upstream.status)
                response.headers.update(kept)
                await response.prepare(request)
                watch = request.query.get("watch") in ("true", "1")
                try:
                    async for chunk in upstream.content.iter_any():
                        if watch and self._thawed is not None:
                            await self._thawed.wait()
                        await response.write(chunk)
                except aiohttp.ClientPayloadError:
                    # The apiserver cut a stream (a watch at shutdown): cut it here too.
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                await response.write_eof()
                return response

        return handle


def _injected(request: web.Request, fault: Fault) -> web.StreamResponse:
    if not fault.status:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("fault proxy dropped the connection")
    reason = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}.get(
        fault.status, "InternalError"
    )
    headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
    return web.Response(
        content_type="application/json",  # exactly what the apiserver sends
        text=json.dumps(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"injected by the fault proxy ({fault.status})",
                "reason": reason,
                "code": fault.status,
            }
        ),
        status=fault.status,
        headers=headers,
    )
