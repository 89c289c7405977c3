"""The model's gateway for InferenceBatch shards, served by each sidecar.

A shard never holds the engine's API key: it presents its batch's own key, which the
operator put in a Secret of the batch's namespace, and whose SHA-256 it lists in the
model's ``status.batches`` while the batch is unfinished. The gateway admits a request
whose key hashes to a listed batch, sets the request's priority to that batch's (as
vLLM reads it, see engine.request.engine_priority: a shard cannot jump ahead of
interactive work), forwards it to vLLM on the pod's loopback with
the engine's key, and streams the answer back. A finished or deleted batch leaves the
list, and its key opens nothing any more.

Routes, as vLLM's: ``GET /health`` (open, as vLLM's is), ``GET /v1/models`` and
``GET /metrics`` (the shard's client reads them to tell a busy engine from a lost
request) and ``POST /v1/completions``; anything else is 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp import web

from gptoss_operator.api.batch import gateway_key_sha256
from gptoss_operator.engine.request import engine_priority
from gptoss_operator.workers.sidecar.line_slots import Done, LineSlots

log = logging.getLogger(__name__)

HELD_GAUGE = "gptoss:gateway_lines_held"  # in the engine's /metrics, as the gateway serves it
DEFAULT_MAX_TOKENS = 256  # a line's estimate while it runs, when it names no max_tokens


@dataclass(frozen=True)
class BatchGrant:
    """What a batch's key opens: requests for that batch, at its priority."""

    namespace: str
    name: str
    priority: int


def read_grants(model: Mapping[str, Any]) -> dict[str, BatchGrant]:
    """The batches a model's status lists, by the hash of their key. Entries this
    version cannot read are skipped (a newer operator may write more)."""
    grants: dict[str, BatchGrant] = {}
    for entry in (model.get("status") or {}).get("batches") or []:
        if not isinstance(entry, dict):
            continue
        digest = entry.get("keySHA256")
        priority = entry.get("priority", 0)
        if not isinstance(digest, str) or not isinstance(priority, int):
            continue
        grants[digest] = BatchGrant(
            str(entry.get("namespace") or ""), str(entry.get("name") or ""), priority
        )
    return grants


def bearer(header: str | None) -> str | None:
    if not header or not header.startswith("Bearer "):
        return None
    return header[len("Bearer ") :].strip() or None


def usage_of(line: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from a streamed ``data:`` line carrying usage."""
    if not line.startswith(b"data:") or b'"usage"' not in line:
        return None
    try:
        usage = json.loads(line[len(b"data:") :]).get("usage")
    except (ValueError, AttributeError):
        return None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return prompt, completion


class Gateway:
    def __init__(
        self,
        engine_url: str,
        engine_api_key: str | None,
        *,
        priority_scheduling: bool,
        lines: LineSlots | None = None,
        load_wait_seconds: float = 15.0,
    ) -> None:
        self.grants: dict[str, BatchGrant] = {}
        # Set once the model's status was read: before, a shard's request waits for it
        # (a sidecar just started), then gets 503, never a 401 that would be its own.
        self._loaded = asyncio.Event()
        self.load_wait_seconds = load_wait_seconds
        self.priority_scheduling = priority_scheduling
        self.lines = lines
        self._http = httpx.AsyncClient(
            base_url=engine_url.rstrip("/"),
            headers={"Authorization": f"Bearer {engine_api_key}"} if engine_api_key else None,
            # A queued request waits as long as the engine holds it; the shard's client
            # decides when silence means trouble.
            timeout=httpx.Timeout(None, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
        )

    def take_grants(self, grants: dict[str, BatchGrant]) -> None:
        if grants != self.grants:
            log.info("the gateway admits the shards of %d batches", len(grants))
        self.grants = grants
        self._loaded.set()

    async def close(self) -> None:
        await self._http.aclose()

    async def grant_of(self, request: web.Request) -> BatchGrant | web.Response:
        """The batch the request's key opens, or the answer to give instead."""
        if not self._loaded.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loaded.wait(), self.load_wait_seconds)
        if not self._loaded.is_set():
            return web.Response(status=503, text="the gateway has not read its model yet")
        key = bearer(request.headers.get("Authorization"))
        grant = self.grants.get(gateway_key_sha256(key)) if key else None
        if grant is None:
            return web.json_response(
                {"error": {"message": "no unfinished InferenceBatch of this model has this key"}},
                status=401,
            )
        return grant

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._read)
        app.router.add_get("/metrics", self._read)
        app.router.add_post("/v1/completions", self._completions)
        return app

    async def _health(self, _: web.Request) -> web.StreamResponse:
        try:
            response = await self._http.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return web.Response(status=503, text="the engine does not answer")
        return web.Response(status=response.status_code, body=response.content)

    async def _read(self, request: web.Request) -> web.StreamResponse:
        grant = await self.grant_of(request)
        if isinstance(grant, web.Response):
            return grant
        try:
            response = await self._http.get(request.path, timeout=10.0)
        except httpx.HTTPError:
            return web.Response(status=503, text="the engine does not answer")
        body = response.content
        if request.path == "/metrics" and response.status_code == 200 and self.lines is not None:
            # The lines held here wait for the engine as those in its queue do: a shard
            # whose request waits here sees it counted, and waits on.
            held = self.lines.held()
            body += f"# TYPE {HELD_GAUGE} gauge\n{HELD_GAUGE} {held}\n".encode()
        return web.Response(
            status=response.status_code,
            body=body,
            content_type=response.headers.get("content-type", "text/plain").split(";")[0],
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        grant = await self.grant_of(request)
        if isinstance(grant, web.Response):
            return grant
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "the body is not JSON"}}, status=400)
        if not isinstance(body, dict):
            return web.json_response(
                {"error": {"message": "the body is not an object"}}, status=400
            )
        if self.priority_scheduling:
            body["priority"] = engine_priority(grant.priority)
        else:
            body.pop("priority", None)
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int):
            max_tokens = DEFAULT_MAX_TOKENS
        async with contextlib.AsyncExitStack() as stack:
            done: Done = _ignore
            if self.lines is not None:
                done = await stack.enter_async_context(self.lines.slot(grant.namespace, max_tokens))
            try:
                upstream = await stack.enter_async_context(
                    self._http.stream("POST", "/v1/completions", json=body)
                )
            except httpx.HTTPError as error:
                return _cut(request, grant, error)
            return await self._relay(request, upstream, grant, done)
        raise AssertionError("unreachable")  # for the type checker: the block returns

    async def _relay(
        self, request: web.Request, upstream: httpx.Response, grant: BatchGrant, done: Done
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status_code)
        content_type = upstream.headers.get("content-type", "application/json")
        response.content_type = content_type.split(";")[0]
        await response.prepare(request)
        tail = b""
        try:
            async for chunk in upstream.aiter_raw():
                await response.write(chunk)
                tail = (tail + chunk)[-4096:]
            await response.write_eof()
        except httpx.HTTPError as error:
            return _cut(request, grant, error, response)
        except ConnectionResetError:
            return response  # the shard went away
        for line in reversed(tail.split(b"\n")):
            usage = usage_of(line.strip())
            if usage is not None:
                done(sum(usage))
                break
        return response


def _cut(
    request: web.Request,
    grant: BatchGrant,
    error: httpx.HTTPError,
    response: web.StreamResponse | None = None,
) -> web.StreamResponse:
    """The engine's connection failed or its stream was cut (a replica stopping): the
    shard's connection is cut too, which its client reads as the platform's doing, as it
    would the engine's own, and asks again without charging the line."""
    log.info("the engine cut a request of batch %s/%s: %s", grant.namespace, grant.name, error)
    if request.transport is not None:
        request.transport.close()
    return response if response is not None else web.StreamResponse(status=502)


def _ignore(tokens: int) -> None:
    del tokens


async def start_gateway(gateway: Gateway, port: int) -> web.AppRunner:
    # A shard that goes away (its pod deleted) cancels its requests: a line waiting for
    # a slot leaves the queue, one streaming closes its stream (vLLM aborts it).
    runner = web.AppRunner(gateway.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
