"""vLLM's load as the autoscaler reads it. (The gauge names are checked against the real
vLLM's /metrics in the node tier: tests/node/test_node_engine.py.)"""

from __future__ import annotations

import asyncio

import httpx
from aiohttp import web

from gptoss_operator.engine_load import EngineLoads, ready_pod, requests_in_flight
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


def test_pods_are_summed_and_silent_ones_add_nothing() -> None:
    async def scenario() -> None:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=PAGE)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        for address in ("127.0.0.1", "127.0.0.2"):
            await web.TCPSite(runner, address, port).start()
        clock = _Clock()
        # Two pods answer; nothing listens at the third address.
        pods = {("ns", "m"): ["127.0.0.1", "127.0.0.2", "127.0.0.3"]}
        silent = {("ns", "quiet"): ["127.0.0.1"]}
        loads = EngineLoads(
            {**pods, **silent}, lambda: [("ns", "m")], interval=1.0, port=port, clock=clock
        )
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                await loads.refresh(client)
        finally:
            await runner.cleanup()
        assert loads("ns", "m") == 14
        assert loads("ns", "quiet") is None, "not wanted, not read"
        clock.now += 3.5
        assert loads("ns", "m") is None, "a figure older than three intervals is dropped"

    asyncio.run(scenario())
