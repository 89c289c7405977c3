"""Rendering prompts without stalling the sidecar.

Harmony renders with a BPE tokenizer that holds the GIL and is quadratic in a run of text
without pre-token breaks: one user message of 128K "=" takes seconds of CPU, and while it
renders no lease of any job on this sidecar is renewed. Small conversations (the common
case, microseconds) render in place; large ones render in a child process, so the event
loop, and every other job's lease, keep going whatever the input.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from gptoss_operator.harmony import ChatMessage, Harmony, ReasoningLevel

# Characters of message content below which rendering costs at most milliseconds.
INLINE_LIMIT = 16_384

_child_harmony: Harmony | None = None


def _load() -> None:
    global _child_harmony
    _child_harmony = Harmony()


def _render(messages: Sequence[ChatMessage], level: ReasoningLevel) -> list[int]:
    assert _child_harmony is not None, "initialised by the pool"
    return _child_harmony.render(messages, level)


class PromptRenderer:
    def __init__(self, harmony: Harmony, inline_limit: int = INLINE_LIMIT) -> None:
        self.harmony = harmony
        self.inline_limit = inline_limit
        self._pool: ProcessPoolExecutor | None = None

    async def render(self, messages: Sequence[ChatMessage], level: ReasoningLevel) -> list[int]:
        if sum(len(message.content) for message in messages) <= self.inline_limit:
            return self.harmony.render(messages, level)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_load,
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _render, list(messages), level)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
