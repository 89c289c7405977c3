"""The gateway's slots for batch lines, shared by the tenants by weight in tokens, with
their limits: lines are simulated coroutines that hold a slot for a while, on the real
event loop and a wall clock the test moves."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from gptoss_operator.core.fair_share import ShareLedger, TenantLimits
from gptoss_operator.workers.sidecar import line_slots
from gptoss_operator.workers.sidecar.line_slots import LineSlots


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def slots_for(
    slots: int,
    weights: dict[str, int] | None = None,
    limits: dict[str, TenantLimits] | None = None,
    wall: Wall | None = None,
) -> LineSlots:
    """Namespaces are their own tenants here."""
    return LineSlots(
        slots,
        ShareLedger(),
        tenant_of=lambda namespace: namespace,
        weights=lambda: weights or {},
        limits=lambda tenant: (limits or {}).get(tenant, TenantLimits()),
        wall=wall or Wall(),
    )


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("not reached in 10 s")


async def run_line(
    slots: LineSlots, namespace: str, tokens: int, order: list[str], seconds: float = 0.001
) -> None:
    async with slots.slot(namespace, tokens) as done:
        order.append(namespace)
        await asyncio.sleep(seconds)
        done(tokens)


async def test_weighted_tenants_share_the_slots_in_tokens() -> None:
    """Tenants of weight 1 and 3 flood two slots, the light one with lines four times the
    size: the heavy one gets three quarters of the tokens, so twelve times the lines."""
    slots = slots_for(2, weights={"heavy": 3, "light": 1})
    order: list[str] = []
    lines = [run_line(slots, "light", 400, order) for _ in range(200)]
    lines += [run_line(slots, "heavy", 100, order) for _ in range(2000)]
    tasks = [asyncio.ensure_future(line) for line in lines]
    await until(lambda: len(order) >= 900)
    counted = Counter(order[100:900])  # after the start, while both still wait
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    light = counted["light"] * 400
    heavy = counted["heavy"] * 100
    assert 0.225 <= light / (light + heavy) <= 0.275, counted
    assert (slots.free, slots.held()) == (2, 0), "cancelled lines leave no trace"


async def test_a_newcomers_line_goes_next_past_a_flood() -> None:
    slots = slots_for(1)
    order: list[str] = []
    flood = [asyncio.ensure_future(run_line(slots, "flood", 100, order, 0.01)) for _ in range(50)]
    await asyncio.sleep(0.05)
    late = asyncio.ensure_future(run_line(slots, "late", 100, order, 0.01))
    await until(lambda: "late" in order)
    position = order.index("late")
    assert order[position - 1] == "flood"
    assert position <= 7, order
    await asyncio.gather(*flood, late)


async def test_a_tenant_at_max_jobs_in_flight_holds_no_more_lines_and_loses_none() -> None:
    limits = {"capped": TenantLimits(max_jobs_in_flight=2)}
    slots = slots_for(8, limits=limits)
    most = 0
    running: Counter[str] = Counter()

    async def line(namespace: str) -> None:
        nonlocal most
        async with slots.slot(namespace, 50) as done:
            running[namespace] += 1
            most = max(most, running["capped"])
            await asyncio.sleep(0.005)
            running[namespace] -= 1
            done(50)

    await asyncio.gather(*[line("capped") for _ in range(30)], *[line("free") for _ in range(30)])
    assert most == 2
    assert slots.held() == 0


async def test_a_tenant_over_tokens_per_minute_waits_for_its_minute_to_free() -> None:
    wall = Wall()
    slots = slots_for(4, limits={"metered": TenantLimits(tokens_per_minute=1000)}, wall=wall)
    order: list[str] = []
    await run_line(slots, "metered", 1000, order)
    held = asyncio.ensure_future(run_line(slots, "metered", 10, order))
    await asyncio.sleep(0.05)
    assert not held.done()
    assert "tokensPerMinute 1000" in slots.held_back["metered"]
    await run_line(slots, "other", 10, order)  # others go on meanwhile
    wall.now += 61
    line_slots.RECHECK_SECONDS = 0.01
    try:
        await asyncio.wait_for(held, 5)
    finally:
        line_slots.RECHECK_SECONDS = 1.0
    assert order == ["metered", "other", "metered"]


async def test_a_line_cancelled_while_waiting_or_running_frees_its_place() -> None:
    slots = slots_for(1)
    order: list[str] = []
    first = asyncio.ensure_future(run_line(slots, "a", 10, order, 10.0))
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(run_line(slots, "b", 10, order))
    await asyncio.sleep(0.01)
    assert slots.held() == 1
    waiting.cancel()
    first.cancel()
    await asyncio.gather(first, waiting, return_exceptions=True)
    assert (slots.free, slots.held(), slots.ledger.in_flight("a")) == (1, 0, 0)
    await run_line(slots, "c", 10, order)
    assert order == ["a", "c"]
