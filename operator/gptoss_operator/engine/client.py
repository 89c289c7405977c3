"""Client of the vLLM OpenAI-compatible server next to the sidecar (``/v1/completions``).

The prompt goes as harmony token ids; generated token ids come back in each streamed
chunk (``return_token_ids``), with special tokens kept so the harmony parser sees them.

A busy engine sends nothing while a request waits in its queue, and nothing between
tokens while it is preempted. So silence is never a timeout by itself: after
``quiet_seconds`` without a byte the client asks the engine. Healthy and holding requests:
it goes on waiting, for as long as it takes (the job's deadline bounds it). Down, or
healthy with nothing in flight (the request was lost, a dead connection say): the
request ends with an EngineError marked ``platform``, which no attempt is charged for.
TCP keepalive finds a peer that vanished without closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from gptoss_operator.engine.metrics import MAX_PAGE_BYTES, requests_in_flight
from gptoss_operator.engine.sse import Event, EventReader

# Seconds to wait for the end of a body after [DONE].
DRAIN_SECONDS = 5.0
# Seconds without a byte before the client asks the engine whether it still works on it.
QUIET_SECONDS = 30.0
# Retries of one request that the platform caused (a cut stream through a Service, an
# abort, a lost request) before one counts anyway: a request that itself breaks its
# stream every time must not loop forever.
PLATFORM_RETRY_LIMIT = 20
# Connections per pool (see EngineClient).
LANE_CONNECTIONS = 8
# A peer that vanished (its node gone) is found within about a minute.
KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    *(
        (socket.IPPROTO_TCP, getattr(socket, name), value)
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))
        if hasattr(socket, name)
    ),
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Chunk:
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StreamEnd:
    """The engine said [DONE]: the answer is whole. What the client reads after it is for
    the connection's sake only."""


class EngineError(Exception):
    """A failed engine call. ``retryable`` for connection errors and 5xx; ``platform``
    when the platform, not the request, ended it (a replica gone from under a Service, an
    engine shutting down, a request lost): asked again without charging an attempt."""

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool, platform: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.platform = platform


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float
    top_p: float | None
    stop_token_ids: list[int]
    # vLLM's structured outputs (engine.structured), None when the output is free.
    structured_outputs: dict[str, Any] | None = None
    # vLLM's request priority (lower runs first), None for an engine that does not
    # schedule by priority (vLLM 0.32 ignores one there; nothing is sent).
    priority: int | None = None


class EngineClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        max_connections: int = 100,
        quiet_seconds: float = QUIET_SECONDS,
        through_service: bool = False,
        api_key: str | None = None,
    ) -> None:
        """``through_service``: the URL is a Service over several replicas (the batch
        workers), so a stream cut while the Service stays healthy is a replica gone."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.quiet_seconds = quiet_seconds
        self.through_service = through_service
        # The connections are split over lanes of at most LANE_CONNECTIONS: a pool looks
        # at each of its connections whenever a request starts or ends, so one pool of
        # 64 streaming connections cost more CPU than the requests themselves.
        lanes = max(1, math.ceil(max_connections / LANE_CONNECTIONS))
        per_lane = math.ceil(max_connections / lanes)
        limits = httpx.Limits(max_connections=per_lane, max_keepalive_connections=per_lane)
        self._lanes = [
            httpx.AsyncClient(
                base_url=self.base_url,
                headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
                timeout=httpx.Timeout(connect=10.0, read=None, write=30.0, pool=None),
                transport=httpx.AsyncHTTPTransport(limits=limits, socket_options=KEEPALIVE),
            )
            for _ in range(lanes)
        ]
        self._streams = [0] * lanes  # streams open on each lane
        self._http = self._lanes[0]  # health checks and metrics

    async def close(self) -> None:
        for lane in self._lanes:
            await lane.aclose()

    @contextlib.contextmanager
    def _lane(self) -> Iterator[httpx.AsyncClient]:
        """The lane with the fewest streams open, for one stream."""
        index = min(range(len(self._lanes)), key=self._streams.__getitem__)
        self._streams[index] += 1
        try:
            yield self._lanes[index]
        finally:
            self._streams[index] -= 1

    async def healthy(self) -> bool:
        """The engine is up and accepts this sidecar's API key (``/health`` is open to
        all; a key the engine refuses makes it as unusable as an engine that is down)."""
        try:
            response = await self._http.get("/health", timeout=5.0)
            if response.status_code != 200:
                return False
            models = await self._http.get("/v1/models", timeout=10.0)
        except httpx.HTTPError:
            return False
        if models.status_code in (401, 403):
            log.error("the engine refuses this sidecar's API key (HTTP %s)", models.status_code)
            return False
        return True

    async def max_model_len(self) -> int | None:
        """The served model's context window, from ``/v1/models`` (None if unknown)."""
        try:
            response = await self._http.get("/v1/models", timeout=10.0)
            cards = response.json().get("data") or []
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        for card in cards:
            if isinstance(card, dict) and card.get("id") == self.model:
                value = card.get("max_model_len")
                return int(value) if isinstance(value, int) else None
        return None

    async def in_flight(self) -> int | None:
        """The requests the engine is running or holding (None: it did not say)."""
        try:
            response = await self._http.get("/metrics", timeout=5.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return requests_in_flight(response.text[:MAX_PAGE_BYTES])

    async def _still_working(self) -> None:
        """After ``quiet_seconds`` of silence: go on waiting, or raise why not."""
        if not await self.healthy():
            raise EngineError(
                "the engine went quiet and fails its health check", retryable=True, platform=True
            )
        holding = await self.in_flight()
        if holding == 0:
            raise EngineError(
                f"no answer in {self.quiet_seconds:g}s while the engine holds no request: "
                "the request was lost on the way",
                retryable=True,
                platform=True,
            )
        log.info(
            "no answer in %gs; the engine is healthy and holds %s requests: waiting on",
            self.quiet_seconds,
            "some" if holding is None else holding,
        )

    async def _watched(self, step: Awaitable[T]) -> T:
        """``step``'s result, asking the engine after each ``quiet_seconds`` of waiting;
        ``step`` is cancelled when the engine says it will not come."""
        task = asyncio.ensure_future(step)
        try:
            while not (await asyncio.wait({task}, timeout=self.quiet_seconds))[0]:
                await self._still_working()
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        return task.result()

    async def wait_until_healthy(self, interval: float = 2.0) -> None:
        while True:
            if await self.healthy():
                return
            await asyncio.sleep(interval)

    def request_body(self, prompt: list[int], params: SamplingParams) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stop_token_ids": params.stop_token_ids,
            "return_token_ids": True,
            "skip_special_tokens": False,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if params.top_p is not None:
            body["top_p"] = params.top_p
        if params.structured_outputs is not None:
            body["structured_outputs"] = params.structured_outputs
        if params.priority is not None:
            body["priority"] = params.priority
        return body

    async def stream(
        self, prompt: list[int], params: SamplingParams
    ) -> AsyncIterator[Chunk | Usage | StreamEnd]:
        """Yield generated chunks, then the usage, then StreamEnd. Raises EngineError."""
        body = self.request_body(prompt, params)
        try:
            async with contextlib.AsyncExitStack() as stack:
                lane = stack.enter_context(self._lane())
                opened = stack.enter_async_context(
                    lane.stream("POST", "/v1/completions", json=body)
                )
                response = await self._watched(opened)
                if response.status_code != 200:
                    await response.aread()
                    raise _http_error(response)
                events = _events(response)
                while True:
                    try:
                        event = await self._watched(anext(events))
                    except StopAsyncIteration:
                        break
                    if event.data == "[DONE]":
                        yield StreamEnd()
                        await _read_to_end(events)
                        return
                    for item in _parse_event(event.data, self.through_service):
                        yield item
        except httpx.TimeoutException as error:
            raise EngineError(
                f"the engine did not answer in time ({type(error).__name__})",
                retryable=True,
                platform=self.through_service,
            ) from error
        except httpx.TransportError as error:
            raise EngineError(
                f"engine connection failed: {type(error).__name__}: {error}",
                retryable=True,
                platform=self.through_service,
            ) from error
        raise EngineError(
            "the engine's stream ended before [DONE]",
            retryable=True,
            platform=self.through_service,
        )


async def _read_to_end(events: AsyncIterator[Event]) -> None:
    """Read what follows [DONE] (the end of the body), so the connection goes back to the
    pool: one left half read is closed, and the next request opens another. A server
    that keeps the body open gets a moment, not the answer."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in events:
                pass


async def _events(response: httpx.Response) -> AsyncIterator[Event]:
    """The server-sent events of a streamed response, the last one included."""
    reader = EventReader()
    async for raw in response.aiter_bytes():
        for event in reader.feed(raw):
            yield event
    for event in reader.close():
        yield event


def _parse_event(payload: str, through_service: bool = False) -> list[Chunk | Usage]:
    """One event's items. Through a Service, a server error sent mid-stream is a replica
    going away (a stopping vLLM's engine core says "EngineCore encountered an issue"):
    the platform's doing."""
    try:
        data = json.loads(payload)
    except ValueError as error:
        raise EngineError(f"unreadable stream chunk: {payload[:200]}", retryable=True) from error
    if "error" in data and not data.get("choices"):
        detail = data["error"]
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        code = detail.get("code") if isinstance(detail, dict) else None
        status = code if isinstance(code, int) else None
        retryable = status is None or status >= 500
        raise EngineError(
            f"engine error: {message}",
            status=status,
            retryable=retryable,
            platform=through_service and retryable,
        )
    items: list[Chunk | Usage] = []
    for choice in data.get("choices") or []:
        items.append(
            Chunk(
                token_ids=[int(t) for t in choice.get("token_ids") or []],
                finish_reason=choice.get("finish_reason"),
                stop_reason=choice.get("stop_reason"),
            )
        )
    usage = data.get("usage")
    if usage:
        items.append(
            Usage(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        )
    return items


def _http_error(response: httpx.Response) -> EngineError:
    message = response.text[:2000]
    try:
        data = response.json()
        error = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(error, dict):
            message = str(error.get("message") or message)
        elif isinstance(data, dict) and "message" in data:
            message = str(data["message"])
    except ValueError:
        pass
    status = response.status_code
    return EngineError(
        f"engine answered HTTP {status}: {message}",
        status=status,
        # 401/403: the engine refused the API key, a fault of the platform, never the job's.
        retryable=status >= 500 or status in (401, 403, 429),
    )
