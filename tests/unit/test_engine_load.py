"""vLLM's load as the autoscaler reads it. (The gauge names are checked against the real
vLLM's /metrics in the node tier: tests/node/test_node_engine.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from aiohttp import web

from gptoss_operator.controllers.autoscale.engine_load import (
    EngineLoads,
    ready_pod,
    requests_in_flight,
)
from gptoss_sandbox.cluster import free_port

PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 9.0
vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 12.0
"""


def test_running_and_waiting_are_added() -> None:
    assert requests_in_flight(PAGE) == 7


def test_a_page_without_the_gauges_is_no_figure() -> None:
    assert requests_in_flight("# nothing here\nprocess_cpu_seconds_total 1.0\n") is None
    assert requests_in_flight(PAGE.replace("3.0", "x")) == 4


def test_only_ready_pods_that_stay_are_read() -> None:
    ready = {"status": {"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}]}}
    assert ready_pod(ready) == "10.0.0.5"
    assert ready_pod({**ready, "metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}) is None
    loading = {
        "status": {"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "False"}]}
    }
    assert ready_pod(loading) is None
    assert ready_pod({"status": {}}) is None


class _Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def metrics_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    addresses: tuple[str, ...] = ("127.0.0.1",),
) -> AsyncIterator[int]:
    """A /metrics server on ``addresses``; yields its port."""
    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    for address in addresses:
        await web.TCPSite(runner, address, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


def test_pods_are_summed_and_silent_ones_add_nothing() -> None:
    async def scenario() -> None:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=PAGE)

        clock = _Clock()
        async with metrics_server(metrics, ("127.0.0.1", "127.0.0.2")) as port:
            # Two pods answer; nothing listens at the third address.
            pods = {("ns", "m"): ["127.0.0.1", "127.0.0.2", "127.0.0.3"]}
            silent = {("ns", "quiet"): ["127.0.0.1"]}
            loads = EngineLoads(
                {**pods, **silent}, lambda: [("ns", "m")], interval=1.0, port=port, clock=clock
            )
            async with httpx.AsyncClient(timeout=1.0) as client:
                await loads.refresh(client)
        assert loads("ns", "m") == 14
        assert loads("ns", "quiet") is None, "not wanted, not read"
        clock.now += 3.5
        assert loads("ns", "m") is None, "a figure older than three intervals is dropped"

    asyncio.run(scenario())


def test_models_are_read_at_once_so_slow_pods_expire_no_figure() -> None:
    """#23, defect 9: 30 models whose pods take 0.3 s each to answer. Read one after
    another, a pass takes 9 s and the first figures are past three intervals (3 s) by its
    end; read at once, every figure is fresh."""

    async def scenario() -> None:
        async def metrics(_: web.Request) -> web.Response:
            await asyncio.sleep(0.3)
            return web.Response(text=PAGE)

        models = [("ns", f"m{i}") for i in range(30)]
        async with metrics_server(metrics) as port:
            loads = EngineLoads(
                {key: ["127.0.0.1"] for key in models}, lambda: models, interval=1.0, port=port
            )
            async with httpx.AsyncClient(timeout=1.0) as client:
                await loads.refresh(client)
        assert [loads(*key) for key in models] == [7] * 30

    asyncio.run(scenario())


def test_a_page_too_large_or_not_finite_is_no_figure() -> None:
    """A pod's /metrics is read up to a cap, and NaN or Inf gauges count as no figure."""
    assert requests_in_flight(PAGE.replace("3.0", "NaN")) == 4
    assert requests_in_flight(PAGE.replace("4.0", "+Inf")) == 3

    async def scenario() -> None:
        async def huge(_: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(_)
            await response.write(PAGE.encode())
            for _i in range(64):  # 64 MiB of comments after the gauges
                await response.write((b"#" * 1023 + b"\n") * 1024)
            return response

        async with metrics_server(huge) as port:
            loads = EngineLoads({("ns", "m"): ["127.0.0.1"]}, lambda: [("ns", "m")], 1.0, port=port)
            async with httpx.AsyncClient(timeout=5.0) as client:
                await loads.refresh(client)
        assert loads("ns", "m") is None, "a page over the cap is dropped, not parsed"

    asyncio.run(scenario())
