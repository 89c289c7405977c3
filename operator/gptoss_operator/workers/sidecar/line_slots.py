"""The engine's room for batch lines at one sidecar's gateway, handed out by fair share.

The gateway sends at most ``slots`` lines to its engine at once (vLLM's max-num-seqs less
what the sidecar's own jobs take). When more wait, the next free slot goes to the tenant
owed it (``fair_share.fair_order``, the ledger the sidecar's jobs use, so a team's lines
and jobs count in one share), skipping a tenant at a limit (``fair_share.over_limit``:
its jobs and lines in flight against maxJobsInFlight, its tokens of the last minute
against tokensPerMinute). Within a tenant, lines go in arrival order. A line waits; it
is never refused for a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from gptoss_operator.core.fair_share import (
    ShareLedger,
    TenantLimits,
    estimate,
    fair_order,
    over_limit,
)

# How often lines held back by a limit are looked at again while nothing else frees a
# slot (a tenant's jobs finishing at other replicas free its maxJobsInFlight there).
RECHECK_SECONDS = 1.0

Done = Callable[[int], None]  # called with a line's tokens once the engine answered it


@dataclass
class _Waiter:
    future: asyncio.Future[str]  # resolves to the line's key in the ledger
    namespace: str
    max_tokens: int


class LineSlots:
    def __init__(
        self,
        slots: int,
        ledger: ShareLedger,
        tenant_of: Callable[[str], str],
        weights: Callable[[], dict[str, int]],
        limits: Callable[[str], TenantLimits],
        wall: Callable[[], float],
    ) -> None:
        self.free = max(1, slots)
        self.ledger = ledger
        self.tenant_of = tenant_of
        self.weights = weights
        self.limits = limits
        self.wall = wall
        self.waiting: dict[str, deque[_Waiter]] = {}
        self.held_back: dict[str, str] = {}  # tenant -> why it waits (a limit)
        self._lines = 0
        self._timer: asyncio.TimerHandle | None = None

    def held(self) -> int:
        """Lines waiting here for a slot."""
        return sum(len(queue) for queue in self.waiting.values())

    @contextlib.asynccontextmanager
    async def slot(self, namespace: str, max_tokens: int) -> AsyncIterator[Done]:
        """Wait for a slot for a line of ``namespace``; hold it inside the block. The
        block calls the yielded function with the line's tokens once answered."""
        tenant = self.tenant_of(namespace)
        waiter = _Waiter(asyncio.get_running_loop().create_future(), namespace, max_tokens)
        self.waiting.setdefault(tenant, deque()).append(waiter)
        self._hand_out()
        try:
            key = await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                # Handed a slot just as its request went away.
                self.ledger.stopped(waiter.future.result())
                self._release()
            else:
                waiter.future.cancel()
                self._hand_out()  # drops it from its queue
            raise

        def done(tokens: int) -> None:
            now = self.wall()
            self.ledger.finished(key, tenant, tokens, now, now)

        try:
            yield done
        finally:
            self.ledger.stopped(key)
            self._release()

    def _release(self) -> None:
        self.free += 1
        self._hand_out()

    def _hand_out(self) -> None:
        """Give the free slots to the waiting lines owed them. A line handed a slot runs
        in the ledger from then on, so the next choice sees it."""
        for tenant, queue in list(self.waiting.items()):
            while queue and queue[0].future.done():
                queue.popleft()
            if not queue:
                del self.waiting[tenant]
        self.held_back = {}
        while self.free > 0 and self.waiting:
            now = self.wall()
            chosen = None
            for tenant in fair_order(self.ledger, list(self.waiting), self.weights(), now):
                why = over_limit(self.ledger, tenant, self.limits(tenant), now)
                if why is None:
                    chosen = tenant
                    break
                self.held_back[tenant] = why
            if chosen is None:
                break
            queue = self.waiting[chosen]
            waiter = queue.popleft()
            if not queue:
                del self.waiting[chosen]
            if waiter.future.done():
                continue
            self.free -= 1
            self._lines += 1
            key = f"{waiter.namespace}/line-{self._lines}"
            self.ledger.running(key, chosen, estimate(self.ledger, chosen, waiter.max_tokens))
            waiter.future.set_result(key)
        self._recheck_later()

    def _recheck_later(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.waiting and self.free > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(RECHECK_SECONDS, self._hand_out)
