"""vLLM's own load, read from each ready pod's ``/metrics``.

InferenceJobs are not the only work a model does: clients may call its OpenAI-compatible
endpoint directly. vLLM reports the requests it is running and holding as the gauges
``vllm:num_requests_running`` and ``vllm:num_requests_waiting``; their sum over a model's
pods is the ``engine`` part of the autoscaler's
:class:`~gptoss_operator.controllers.autoscale.decision.Load`.
Reading them is best effort: a pod that does not answer within the timeout (a
NetworkPolicy that does not admit the operator, a pod still loading) adds nothing, and
the autoscaler goes by the InferenceJobs alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from gptoss_operator.core import naming
from gptoss_operator.engine.metrics import MAX_PAGE_BYTES, requests_in_flight

log = logging.getLogger(__name__)


def ready_pod(body: Mapping[str, Any]) -> str | None:
    """The IP of a ready, not terminating pod."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    if metadata.get("deletionTimestamp") or not status.get("podIP"):
        return None
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return str(status["podIP"]) if ready else None


class EngineLoads:
    """Reads every ``interval`` seconds the pods of the models ``wanted()`` names; a
    model's figure is dropped when no pod answered for three intervals."""

    def __init__(
        self,
        pods: Mapping[Any, Iterable[str]],
        wanted: Callable[[], Iterable[tuple[str, str]]],
        interval: float,
        port: int = naming.ENGINE_PORT,
        timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pods = pods
        self.wanted = wanted
        self.interval = interval
        self.port = port
        self.timeout = timeout
        self.clock = clock
        self.loads: dict[tuple[str, str], tuple[int, float]] = {}

    def __call__(self, namespace: str, model: str) -> int | None:
        entry = self.loads.get((namespace, model))
        if entry is None or self.clock() - entry[1] > 3 * self.interval:
            return None
        return entry[0]

    async def run_forever(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            while True:
                try:
                    await self.refresh(client)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("reading vLLM's metrics failed")
                await asyncio.sleep(self.interval)

    async def refresh(self, client: httpx.AsyncClient) -> None:
        """One pass: every pod of every wanted model at once, each read bounded by the
        timeout, so one slow pod costs the pass at most that, whatever the count."""
        keys = list(self.wanted())
        reads = [(key, ip) for key in keys for ip in self.pods.get(key, [])]
        figures = await asyncio.gather(*(self._read(client, ip) for _, ip in reads))
        read_at = self.clock()
        answered: dict[tuple[str, str], int] = {}
        for (key, _), figure in zip(reads, figures, strict=True):
            if figure is not None:
                answered[key] = answered.get(key, 0) + figure
        for key, total in answered.items():
            self.loads[key] = (total, read_at)

    async def _read(self, client: httpx.AsyncClient, address: str) -> int | None:
        host = f"[{address}]" if ":" in address else address
        try:
            async with asyncio.timeout(self.timeout):
                async with client.stream("GET", f"http://{host}:{self.port}/metrics") as reply:
                    if reply.status_code != 200:
                        return None
                    page = bytearray()
                    async for chunk in reply.aiter_bytes():
                        page += chunk
                        if len(page) > MAX_PAGE_BYTES:
                            return None
        except (httpx.HTTPError, TimeoutError):
            return None
        return requests_in_flight(page.decode(errors="replace"))
