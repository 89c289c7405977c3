"""Retrying Kubernetes API calls that failed for the apiserver's sake.

A busy apiserver answers 429 (with Retry-After), a restarting one refuses connections or
answers 5xx, a slow one times out. None of these says anything about the request, so the
call is repeated with capped exponential backoff. Errors that are answers (404, 409,
422, 403) are raised at once for the caller to interpret.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx2
from lightkube import ApiError

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


def is_transient(error: BaseException) -> bool:
    """True when the apiserver (or the way to it) failed, not the request."""
    if isinstance(error, ApiError):
        return error.status.code in TRANSIENT_STATUS
    if isinstance(error, httpx2.HTTPStatusError):
        # An answer that is not a Kubernetes Status (a proxy or load balancer in front).
        return error.response.status_code in TRANSIENT_STATUS
    return isinstance(error, httpx2.TransportError)


def retry_after(error: BaseException) -> float | None:
    """The delay a 429/503 asked for, in seconds."""
    response = getattr(error, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def backoff(tries: int, base: float, cap: float) -> float:
    """Exponential delay with jitter (half to full), so retries of many callers spread."""
    delay = min(cap, base * 2 ** max(0, tries - 1))
    return float(delay * random.uniform(0.5, 1.0))


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    base: float = 0.5,
    cap: float = 10.0,
    max_tries: int | None = None,
) -> T:
    """Await ``call()`` until it succeeds or fails with a non-transient error.

    ``max_tries`` None retries for as long as the caller waits (cancel to stop).
    """
    tries = 0
    while True:
        tries += 1
        try:
            return await call()
        except Exception as error:
            if not is_transient(error) or (max_tries is not None and tries >= max_tries):
                raise
            delay = max(retry_after(error) or 0.0, backoff(tries, base, cap))
            log.warning("%s failed (%s); retry %d in %.1fs", what, _describe(error), tries, delay)
            await asyncio.sleep(delay)


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiError):
        return f"{error.status.code} {error.status.message}"
    if isinstance(error, httpx2.HTTPStatusError):
        return f"{error.response.status_code} {error.response.reason_phrase}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
