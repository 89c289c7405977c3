"""Helpers shared by the tests: waiting, kubeconfig clients, object loading."""

from __future__ import annotations

import asyncio
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


async def settled_count(engine: Any) -> int:
    """A stand-in engine's request count once requests a cancelled worker had already
    sent have reached it (they may arrive just after the cancel)."""
    count: int = engine.requests_served
    for _ in range(50):
        await asyncio.sleep(0.1)
        if engine.requests_served == count:
            return count
        count = engine.requests_served
    return count
