"""The engine client's reading of vLLM's event stream, on a real HTTP server on loopback.

The server below writes raw bytes, so each test controls exactly how the stream is cut
into lines and network chunks; the events follow the server-sent events specification.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gptoss_operator.engine import client as engine
from gptoss_operator.engine.client import (
    Chunk,
    EngineClient,
    EngineError,
    SamplingParams,
    StreamEnd,
    Usage,
)
from gptoss_operator.engine.generation import generate
from gptoss_operator.engine.harmony import Harmony
from gptoss_operator.engine.sse import EventReader

PARAMS = SamplingParams(max_tokens=8, temperature=0.7, top_p=None, stop_token_ids=[200002])
Writer = Callable[[web.StreamResponse], Awaitable[None]]


def _event(data: dict[str, object]) -> bytes:
    # vLLM writes JSON with non-ASCII characters unescaped (UTF-8 on the wire).
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def _chunk(token_ids: list[int], text: str, finish: str | None = None) -> dict[str, object]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [
            {
                "index": 0,
                "text": text,
                "token_ids": token_ids,
                "finish_reason": finish,
                "stop_reason": None,
            }
        ],
    }


USAGE = {"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}


@pytest.fixture
def peers() -> list[object]:
    """The client address of every request the served engines received."""
    return []


@pytest.fixture
async def serve(peers: list[object]) -> AsyncIterator[Callable[[Writer], Awaitable[EngineClient]]]:
    runners: list[web.AppRunner] = []
    clients: list[EngineClient] = []

    async def start(writer: Writer) -> EngineClient:
        async def completions(request: web.Request) -> web.StreamResponse:
            await request.json()
            peers.append(
                request.transport.get_extra_info("peername") if request.transport else None
            )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await writer(response)
            await response.write_eof()
            return response

        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        client = EngineClient(f"http://127.0.0.1:{port}", "m")
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
    for runner in runners:
        await runner.cleanup()


async def _collect(client: EngineClient) -> list[Chunk | Usage]:
    """What the stream carried, up to [DONE] (which ends it: StreamEnd, always last)."""
    items = [item async for item in client.stream([1, 2, 3], PARAMS)]
    assert isinstance(items[-1], StreamEnd), items
    assert not any(isinstance(item, StreamEnd) for item in items[:-1])
    return [item for item in items if not isinstance(item, StreamEnd)]


async def test_unicode_line_separators_inside_json_are_content(
    serve: Callable[[Writer], Awaitable[EngineClient]],
) -> None:
    # U+2028, U+2029, U+0085, VT and FF end lines for str.splitlines, not for SSE.
    text = "a\u2028b\u2029c\u0085d\x0be\x0cf\x1cg"

    async def write(response: web.StreamResponse) -> None:
        await response.write(_event(_chunk([10, 11], text)))
        await response.write(_event(_chunk([12], "", "stop")))
        await response.write(_event(USAGE))
        await response.write(b"data: [DONE]\n\n")

    items = await _collect(await serve(write))
    assert items == [
        Chunk([10, 11], None, None),
        Chunk([12], "stop", None),
        Usage(5, 3),
    ]


async def test_cr_and_crlf_line_ends_and_events_split_across_network_chunks(
    serve: Callable[[Writer], Awaitable[EngineClient]],
) -> None:
    body = (
        json.dumps(_chunk([7], "x")).encode()
        + b"\r\n\r\n"
        + b"data: "
        + json.dumps(_chunk([8], "\u00e9\u4e2d", "stop"), ensure_ascii=False).encode()
        + b"\r\r"
        + b": a comment line\n"
        + b"data: "
        + json.dumps(USAGE).encode()
        + b"\r\n\n"
        + b"data: [DONE]\r\n\r\n"
    )
    body = b"data: " + body

    async def write(response: web.StreamResponse) -> None:
        # One byte at a time: a CR and its LF, and a multi-byte character, are split.
        for index in range(len(body)):
            await response.write(body[index : index + 1])

    items = await _collect(await serve(write))
    assert items == [Chunk([7], None, None), Chunk([8], "stop", None), Usage(5, 3)]


async def test_an_error_event_after_http_200_raises_with_the_engines_message(
    serve: Callable[[Writer], Awaitable[EngineClient]],
) -> None:
    error = {"message": "boom", "type": "InternalServerError", "param": None, "code": 500}

    async def write(response: web.StreamResponse) -> None:
        await response.write(_event(_chunk([10], "a")))
        await response.write(_event({"error": error}))
        await response.write(b"data: [DONE]\n\n")

    with pytest.raises(EngineError) as raised:
        await _collect(await serve(write))
    assert raised.value.status == 500
    assert raised.value.retryable
    assert "boom" in raised.value.message


async def test_a_stream_that_ends_without_done_is_an_error(
    serve: Callable[[Writer], Awaitable[EngineClient]],
) -> None:
    async def write(response: web.StreamResponse) -> None:
        await response.write(_event(_chunk([10], "a")))

    with pytest.raises(EngineError) as raised:
        await _collect(await serve(write))
    assert "ended before" in raised.value.message
    assert raised.value.retryable


def _events(chunks: list[bytes]) -> list[tuple[str, str]]:
    reader = EventReader()
    out = []
    for chunk in chunks:
        out += [(e.event, e.data) for e in reader.feed(chunk)]
    out += [(e.event, e.data) for e in reader.close()]
    return out


def test_reader_follows_the_specification_field_rules() -> None:
    stream = (
        b"\xef\xbb\xbf"  # a byte order mark at the start is dropped
        b"data\n\n"  # a field with no colon: empty data, dispatched as an empty event
        b"data:no space\n\n"
        b"data:  two spaces\n\n"  # only one leading space is removed
        b"event: custom\ndata: a\ndata: b\n\n"  # data lines join with LF
        b"id: 7\nretry: 10\n\n"  # no data: nothing dispatched
        b"data: unfinished"  # the end of the stream discards a pending event
    )
    assert _events([stream]) == [
        ("message", ""),
        ("message", "no space"),
        ("message", " two spaces"),
        ("custom", "a\nb"),
    ]


def test_reader_treats_a_split_crlf_as_one_line_end() -> None:
    assert _events([b"data: a\r", b"\n", b"\r", b"\ndata: b\r", b"\r"]) == [
        ("message", "a"),
        ("message", "b"),
    ]


def test_reader_replaces_invalid_utf8_instead_of_failing() -> None:
    assert _events([b"data: \xff\xfe ok\n\n"]) == [("message", "\ufffd\ufffd ok")]


async def test_requests_reuse_one_connection(
    serve: Callable[[Writer], Awaitable[EngineClient]], peers: list[object]
) -> None:
    """A stream is read to its end, past [DONE]: a connection left half read cannot go
    back to the pool, and each request would open a new one (a TCP handshake, and a TLS
    one where the engine is behind TLS, per request)."""

    async def write(response: web.StreamResponse) -> None:
        await response.write(_event(_chunk([12], "", "stop")))
        await response.write(_event(USAGE))
        await response.write(b"data: [DONE]\n\n")
        await asyncio.sleep(0.05)  # the body's end comes a moment after [DONE]

    client = await serve(write)
    for _ in range(5):
        assert await _collect(client) == [Chunk([12], "stop", None), Usage(5, 3)]
    assert len(peers) == 5
    assert len(set(peers)) == 1, f"5 requests came over {len(set(peers))} connections"


async def test_an_answer_is_kept_when_the_body_does_not_end_after_done(
    serve: Callable[[Writer], Awaitable[EngineClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading past [DONE] is for the connection's sake: a server that never ends the
    body costs the connection, never the finished answer."""
    monkeypatch.setattr(engine, "DRAIN_SECONDS", 0.2)
    answered = asyncio.Event()

    async def write(response: web.StreamResponse) -> None:
        await response.write(_event(_chunk([12], "", "stop")))
        await response.write(_event(USAGE))
        await response.write(b"data: [DONE]\n\n")
        await answered.wait()  # the body does not end while the client reads

    items = await _collect(await serve(write))
    answered.set()
    assert items == [Chunk([12], "stop", None), Usage(5, 3)]


async def test_a_deadline_during_the_drain_after_done_keeps_the_finished_answer(
    serve: Callable[[Writer], Awaitable[EngineClient]],
) -> None:
    """#23, defect 7: the job's deadline covers the generation, not the read past [DONE]
    (up to DRAIN_SECONDS): an answer complete before the deadline is the job's answer."""
    answered = asyncio.Event()
    harmony = Harmony()
    final = harmony.encoding.encode(
        "<|channel|>final<|message|>Hello<|return|>", allowed_special="all"
    )

    async def write(response: web.StreamResponse) -> None:
        await response.write(_event(_chunk(final, "", "stop")))
        await response.write(_event(USAGE))
        await response.write(b"data: [DONE]\n\n")
        await answered.wait()  # the body stays open while the client drains it

    client = await serve(write)
    loop = asyncio.get_running_loop()
    try:
        result = await generate(
            client, harmony, [1, 2, 3], PARAMS, clock=loop.time, deadline=loop.time() + 1.0
        )
    finally:
        answered.set()
    assert result.finish_reason == "stop"
    assert result.parsed.response == "Hello"


def test_streams_spread_over_small_connection_pools() -> None:
    """64 connections make 8 pools of 8, and each stream takes the pool with the fewest
    streams open (a pool's cost per request grows with its connections)."""

    async def scenario() -> None:
        client = EngineClient("http://127.0.0.1:1", "m", max_connections=64)
        try:
            assert len(client._lanes) == 8
            limits = [lane._transport._pool._max_connections for lane in client._lanes]
            assert limits == [8] * 8
            with client._lane() as first, client._lane() as second:
                assert first is not second
                assert client._streams == [1, 1, 0, 0, 0, 0, 0, 0]
            assert client._streams == [0] * 8, "a closed stream frees its place"
        finally:
            await client.close()
        small = EngineClient("http://127.0.0.1:1", "m", max_connections=5)
        assert len(small._lanes) == 1
        await small.close()

    asyncio.run(scenario())
