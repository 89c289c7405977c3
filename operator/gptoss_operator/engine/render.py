"""Rendering prompts without stalling the sidecar.

Harmony renders with a BPE tokenizer that holds the GIL and is quadratic in a run of text
without pre-token breaks: one user message of 128K "=" takes seconds of CPU, and while it
renders no lease of any job on this sidecar is renewed. Small conversations (the common
case, microseconds) render in place; large ones render in a child process, so the event
loop, and every other job's lease, keep going whatever the input.
"""

from __future__ import annotations

import asyncio
import datetime
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from gptoss_operator.engine.harmony import Harmony
from gptoss_operator.engine.request import ChatRequest

# Characters of message content below which rendering costs at most milliseconds.
INLINE_LIMIT = 16_384

_child_harmony: Harmony | None = None


def _load() -> None:
    global _child_harmony
    _child_harmony = Harmony()


def _render(request: ChatRequest) -> list[int]:
    assert _child_harmony is not None, "initialised by the pool"
    return render_request(_child_harmony, request)


def render_request(
    harmony: Harmony, request: ChatRequest, start_date: datetime.date | None = None
) -> list[int]:
    """The request's prompt: its messages, tools and (described) response format."""
    return harmony.render(
        request.messages,
        request.reasoning_level,
        start_date,
        tools=request.tools,
        response_format=request.response_format,
    )


class PromptRenderer:
    def __init__(self, harmony: Harmony, inline_limit: int = INLINE_LIMIT) -> None:
        self.harmony = harmony
        self.inline_limit = inline_limit
        self._pool: ProcessPoolExecutor | None = None

    async def render(self, request: ChatRequest) -> list[int]:
        if _size(request) <= self.inline_limit:
            return render_request(self.harmony, request)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._child(), _render, request)
        except BrokenProcessPool:
            # The child died (an OOM kill, say): a new one, once. A prompt that kills the
            # new one too is refused; the next prompt gets a new child again.
            self.close()
            try:
                return await loop.run_in_executor(self._child(), _render, request)
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


def _size(request: ChatRequest) -> int:
    """Characters to render, roughly: the messages' texts, calls, and the tools' schemas."""
    size = sum(
        len(m.content) + len(m.analysis or "") + sum(len(c.arguments) for c in m.tool_calls)
        for m in request.messages
    )
    if request.tools or request.response_format is not None:
        size += len(repr(request.tools)) + len(repr(request.response_format))
    return size
