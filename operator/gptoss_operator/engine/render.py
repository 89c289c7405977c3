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
from concurrent.futures.process import BrokenProcessPool

from gptoss_operator.engine.harmony import ChatMessage, Harmony, ReasoningLevel

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
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._child(), _render, list(messages), level)
        except BrokenProcessPool:
            # The child died (an OOM kill, say): a new one, once. A prompt that kills the
            # new one too is refused; the next prompt gets a new child again.
            self.close()
            try:
                return await loop.run_in_executor(self._child(), _render, list(messages), level)
            except BrokenProcessPool as error:
                self.close()
                raise ValueError("rendering this prompt killed the render process") from error

    def _child(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_load,
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
