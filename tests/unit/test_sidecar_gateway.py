"""The sidecar's gateway for batch shards, between the shards' own engine client and the
stand-in engine (which checks the engine's API key as vLLM's --api-key does), all over
real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from aiohttp import web

from gptoss_operator.api.batch import gateway_key_sha256
from gptoss_operator.core.fair_share import ShareLedger, TenantLimits
from gptoss_operator.engine.client import Chunk, EngineClient, EngineError, SamplingParams, Usage
from gptoss_operator.engine.request import engine_priority
from gptoss_operator.workers.sidecar.gateway import (
    BatchGrant,
    Gateway,
    read_grants,
    start_gateway,
)
from gptoss_operator.workers.sidecar.line_slots import LineSlots
from gptoss_sandbox.cluster import free_port
from gptoss_sandbox.standin_engine import StandinEngine

ENGINE_KEY = "the-engine-key"
BATCH_KEY = "the-batch-key"
PARAMS = SamplingParams(max_tokens=16, temperature=0.7, top_p=None, stop_token_ids=[200002])


@dataclass
class Bed:
    engine: StandinEngine
    gateway: Gateway
    url: str
    lines: LineSlots


@pytest.fixture
async def bed() -> AsyncIterator[Bed]:
    engine = StandinEngine(model="m")
    engine.api_key = ENGINE_KEY
    await engine.start()
    lines = LineSlots(
        1,
        ShareLedger(),
        tenant_of=lambda namespace: namespace,
        weights=dict,
        limits=lambda tenant: TenantLimits(),
        wall=time.time,
    )
    gateway = Gateway(
        engine.url, ENGINE_KEY, priority_scheduling=True, lines=lines, load_wait_seconds=0.5
    )
    port = free_port()
    runner: web.AppRunner = await start_gateway(gateway, port)
    try:
        yield Bed(engine, gateway, f"http://127.0.0.1:{port}", lines)
    finally:
        await runner.cleanup()
        await gateway.close()
        await engine.stop()


def model_listing(*entries: dict[str, object]) -> dict[str, object]:
    return {"metadata": {"name": "m"}, "status": {"batches": list(entries)}}


async def ask(client: EngineClient) -> tuple[list[int], Usage | None]:
    prompt = [200006, 1428, 200008, 13225, 200007, 200006, 173781]
    tokens: list[int] = []
    usage = None
    async for item in client.stream(prompt, PARAMS):
        if isinstance(item, Chunk):
            tokens += item.token_ids
        elif isinstance(item, Usage):
            usage = item
    return tokens, usage


async def test_a_listed_batch_key_reaches_the_engine_at_the_batchs_priority(bed: Bed) -> None:
    bed.gateway.take_grants(
        read_grants(
            model_listing(
                {
                    "namespace": "team-a",
                    "name": "eval",
                    "keySHA256": gateway_key_sha256(BATCH_KEY),
                    "priority": -10,
                    "aFieldOfALaterVersion": True,
                }
            )
        )
    )
    client = EngineClient(bed.url, "m", api_key=BATCH_KEY)
    try:
        assert await client.healthy(), "the shard's health check passes through the gateway"
        tokens, usage = await ask(client)
        assert tokens, "the answer streams back"
        assert usage is not None
        # The engine saw the engine's key (it refuses any other) and the batch's priority
        # as vLLM reads it (lower first): behind an interactive job's, whatever the shard
        # sent.
        assert bed.engine.requests[-1]["priority"] == engine_priority(-10) == 10
        assert bed.engine.requests[-1]["priority"] > engine_priority(0)
        # The line's tokens count in its namespace's use (as a job's would).
        total = usage.prompt_tokens + usage.completion_tokens
        assert bed.lines.ledger.tokens_last_minute("team-a", time.time()) == total
        assert (await client.in_flight()) == 0, "the engine's load is readable for the shard"
    finally:
        await client.close()


async def test_a_gateway_that_has_not_read_its_model_yet_answers_503_not_401(bed: Bed) -> None:
    """A shard whose request lands on a sidecar just started is told to come back (the
    engine is not ready for it), never that its key is wrong."""
    async with httpx.AsyncClient(base_url=bed.url) as http:
        headers = {"Authorization": f"Bearer {BATCH_KEY}"}
        assert (await http.get("/v1/models", headers=headers)).status_code == 503
        bed.gateway.take_grants({gateway_key_sha256(BATCH_KEY): BatchGrant("t", "b", 0)})
        assert (await http.get("/v1/models", headers=headers)).status_code == 200


async def test_a_key_no_unfinished_batch_has_opens_nothing(bed: Bed) -> None:
    bed.gateway.take_grants({})
    async with httpx.AsyncClient(base_url=bed.url) as http:
        assert (await http.get("/health")).status_code == 200, "open, as vLLM's /health"
        for headers in ({}, {"Authorization": f"Bearer {BATCH_KEY}"}):
            assert (await http.get("/v1/models", headers=headers)).status_code == 401
            assert (await http.get("/metrics", headers=headers)).status_code == 401
            refused = await http.post("/v1/completions", json={"prompt": [1]}, headers=headers)
            assert refused.status_code == 401
            assert "no unfinished InferenceBatch" in refused.text
        # Not even the engine's own key: the gateway is for batches only.
        engine_key = {"Authorization": f"Bearer {ENGINE_KEY}"}
        assert (await http.get("/v1/models", headers=engine_key)).status_code == 401
    assert bed.engine.requests_served == 0
    # A shard whose batch is not listed yet waits at its health check, as for an engine
    # still starting; once listed it goes on, and once its batch finished it is refused.
    client = EngineClient(bed.url, "m", api_key=BATCH_KEY)
    try:
        assert not await client.healthy()
        grants = read_grants(
            model_listing(
                {"namespace": "t", "name": "b", "keySHA256": gateway_key_sha256(BATCH_KEY)}
            )
        )
        bed.gateway.take_grants(grants)
        assert await client.healthy()
        bed.gateway.take_grants({})
        with pytest.raises(EngineError):
            await ask(client)
    finally:
        await client.close()


async def test_without_priority_scheduling_the_priority_is_not_sent(bed: Bed) -> None:
    bed.gateway.priority_scheduling = False
    bed.gateway.take_grants({gateway_key_sha256(BATCH_KEY): BatchGrant("t", "b", 5)})
    client = EngineClient(bed.url, "m", api_key=BATCH_KEY)
    try:
        await ask(client)
    finally:
        await client.close()
    assert "priority" not in bed.engine.requests[-1]


async def test_a_line_waiting_for_a_slot_counts_as_waiting_for_the_engine(bed: Bed) -> None:
    """One slot, one slow line at the engine and one held here: the shard's quiet check
    (the engine's running and waiting requests, through the gateway's /metrics) sees
    both, so the held one is waited for, not asked again as lost."""
    bed.gateway.take_grants({gateway_key_sha256(BATCH_KEY): BatchGrant("t", "b", 0)})
    bed.engine.token_delay = 0.2
    client = EngineClient(bed.url, "m", api_key=BATCH_KEY)
    try:
        first = asyncio.ensure_future(ask(client))
        second = asyncio.ensure_future(ask(client))
        for _ in range(500):
            if bed.lines.held() >= 1:
                break
            await asyncio.sleep(0.01)
        assert bed.engine.running + bed.engine.waiting == 1
        assert await client.in_flight() == 2
        await asyncio.gather(first, second)
    finally:
        await client.close()
    assert bed.engine.requests_served == 2


async def test_a_stream_the_engine_cuts_is_cut_for_the_shard_too(bed: Bed) -> None:
    """The engine resets a stream mid-way, then goes away: the shard's client (through a
    Service) reads both as the platform's doing, as it would from the engine itself, so
    its line is asked again without being charged."""
    bed.gateway.take_grants({gateway_key_sha256(BATCH_KEY): BatchGrant("t", "b", 0)})
    client = EngineClient(bed.url, "m", api_key=BATCH_KEY, through_service=True)
    try:
        bed.engine.fail_next = ["reset"]
        with pytest.raises(EngineError) as cut:
            await ask(client)
        assert cut.value.platform
        await bed.engine.stop()
        with pytest.raises(EngineError) as gone:
            await ask(client)
        assert gone.value.platform
    finally:
        await client.close()
    assert (bed.lines.free, bed.lines.held()) == (1, 0), "the slots are free again"


def test_status_entries_this_version_cannot_read_are_skipped() -> None:
    grants = read_grants(
        model_listing(
            {"namespace": "t", "name": "ok", "keySHA256": "a" * 64},
            {"namespace": "t", "name": "no-key"},
            {"namespace": "t", "name": "odd", "keySHA256": "b" * 64, "priority": "high"},
        )
    )
    assert grants == {"a" * 64: BatchGrant("t", "ok", 0)}
