"""One run at a time per key, with the triggers that arrive meanwhile folded into one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class KeyedSerializer:
    """Run at most one reconcile per key at a time; triggers that arrive while one
    runs collapse into a single follow-up run."""

    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    waiting: set[tuple[str, str]] = field(default_factory=set)

    async def run(self, key: tuple[str, str], work: Callable[[], Awaitable[None]]) -> None:
        if key in self.waiting:
            return
        lock = self.locks.setdefault(key, asyncio.Lock())
        self.waiting.add(key)
        async with lock:
            self.waiting.discard(key)
            await work()
