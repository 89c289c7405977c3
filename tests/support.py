"""Helpers shared by the tests: waiting, kubeconfig clients, object loading."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 60.0,
    interval: float = 0.2,
    message: str = "condition",
) -> T:
    """Poll ``check`` until it returns a truthy value, or fail with the last error."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError as error:
            last_error = error
        if time.monotonic() > deadline:
            detail = f": {last_error}" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}{detail}")
        time.sleep(interval)


async def settled_count(engine: Any, quiet: float = 1.0, within: float = 30.0) -> int:
    """A stand-in engine's request count once every request a cancelled worker sent has
    reached it: nothing running or waiting in the engine, and no new request for
    ``quiet`` seconds (a request still on its way arrives well within that)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    count: int = engine.requests_served
    since = loop.time()
    while loop.time() < deadline:
        await asyncio.sleep(0.05)
        busy = engine.running or engine.waiting
        if busy or engine.requests_served != count:
            count, since = engine.requests_served, loop.time()
        elif loop.time() - since >= quiet:
            return count
    raise AssertionError(f"the stand-in engine did not settle in {within:.0f}s")


def batch_status_patch(
    shards: int,
    stored: dict[str, Any],
    generation: int | None,
    observed: Any,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The merge patch the batch reconciler writes over ``stored``: the typed status
    computed, as the wire has it."""
    from gptoss_operator.api.batch import InferenceBatchStatus
    from gptoss_operator.controllers.batch.status import batch_status

    typed = InferenceBatchStatus.model_validate(stored)
    return batch_status(shards, typed, generation, observed, now).to_patch()
