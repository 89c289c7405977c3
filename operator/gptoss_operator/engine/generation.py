"""One generation: stream a rendered prompt through the engine and parse what comes back.

Shared by the InferenceJob sidecar and the InferenceBatch worker; what the result means
for a job or a batch line is decided elsewhere (``engine.outcome``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from gptoss_operator.engine.client import (
    Chunk,
    EngineClient,
    EngineError,
    SamplingParams,
    StreamEnd,
    Usage,
)
from gptoss_operator.engine.harmony import CALL_TOKEN, RETURN_TOKEN, Harmony, ParsedOutput
from gptoss_operator.engine.outcome import Generation, Outcome, generation_outcome
from gptoss_operator.engine.request import ChatRequest

log = logging.getLogger(__name__)

# Finish reasons that mean the engine gave up on the request rather than finished it.
ENGINE_GAVE_UP = ("abort", "error")


@dataclass
class RunResult:
    parsed: ParsedOutput
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    started: float
    first_token: float | None
    finished: float

    def outcome(
        self, request: ChatRequest, max_model_len: int | None, call_id_prefix: str = "call"
    ) -> Outcome:
        """What this result means for the request (see ``engine.outcome``); tool calls
        get the ids ``call_id_prefix``_N."""
        return generation_outcome(
            Generation(
                parsed=self.parsed,
                finish_reason=self.finish_reason,
                max_tokens=request.max_tokens,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                max_model_len=max_model_len,
                answer_schema=request.answer_schema,
                keep_analysis=request.keep_analysis,
                call_id_prefix=call_id_prefix,
            )
        )


class EngineGate:
    """Open while the engine answers its health check; no new request goes out while it is
    closed. Closed by ``went_down``, reopened by a watcher once the engine is healthy
    again. Also holds the engine's context window, read at each opening."""

    def __init__(self, engine: EngineClient) -> None:
        self.engine = engine
        self.ready = asyncio.Event()
        self.max_model_len: int | None = None
        self._recovery: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Wait until the engine is healthy, read its context window, open the gate."""
        await self.engine.wait_until_healthy()
        self.max_model_len = await self.engine.max_model_len() or self.max_model_len
        log.info("engine healthy (context window %s tokens)", self.max_model_len)
        self.ready.set()

    def went_down(self, error: str) -> None:
        if not self.ready.is_set():
            return
        self.ready.clear()
        log.warning("the engine is unavailable (%s); no new requests until it is healthy", error)
        self._recovery = asyncio.create_task(self.open(), name="engine-recovery")

    def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()


@dataclass
class Progress:
    """What a generation has produced so far (read by heartbeats)."""

    prompt_tokens: int = 0
    tokens: int = 0
    channel: str | None = None


def stop_token(finish_reason: str, stop_reason: int | None, tokens: list[int]) -> int | None:
    """The token that ended generation, or None when the token limit cut it.

    vLLM returns the stop token as the last generated id; ``stop_reason`` is null when it
    was the end-of-sequence token (``<|return|>`` for gpt-oss) and the id otherwise.
    """
    if finish_reason != "stop":
        return None
    if tokens and tokens[-1] in (RETURN_TOKEN, CALL_TOKEN):
        return tokens[-1]
    return stop_reason if stop_reason is not None else RETURN_TOKEN


async def generate(
    engine: EngineClient,
    harmony: Harmony,
    prompt: list[int],
    params: SamplingParams,
    *,
    clock: Callable[[], float],
    deadline: float | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run one completion. Raises EngineError (also for a stream the engine ended with
    ``abort`` or ``error``), and TimeoutError past ``deadline`` (a ``clock()`` value)."""
    parser = harmony.parser()
    progress = progress or Progress()
    progress.tokens, progress.channel = 0, None
    started = clock()
    first_token: float | None = None
    finish_reason = "length"
    stop_id: int | None = None
    usage: Usage | None = None
    whole = False  # the engine said [DONE]

    async def consume() -> None:
        nonlocal first_token, finish_reason, stop_id, usage, whole
        async for item in engine.stream(prompt, params):
            if isinstance(item, Usage):
                usage = item
                continue
            if isinstance(item, StreamEnd):
                whole = True
                continue
            chunk: Chunk = item
            if chunk.token_ids and first_token is None:
                first_token = clock()
            parser.feed(chunk.token_ids)
            progress.tokens += len(chunk.token_ids)
            progress.channel = parser.current_channel
            if chunk.finish_reason:
                finish_reason = chunk.finish_reason
                if isinstance(chunk.stop_reason, int):
                    stop_id = chunk.stop_reason
            # Reading a stream whose bytes are already buffered never suspends: a fast
            # engine would starve every other task (the leases' heartbeats among them).
            await asyncio.sleep(0)

    if deadline is None:
        await consume()
    else:
        remaining = deadline - clock()
        if remaining <= 0:
            raise TimeoutError
        try:
            await asyncio.wait_for(consume(), timeout=remaining)
        except TimeoutError:
            if not whole:
                raise  # the deadline cut the answer; past [DONE] it only cut the drain
    if finish_reason in ENGINE_GAVE_UP:
        # Not an answer: vLLM aborts its requests when it shuts down, and "error" is its
        # retryable internal failure. The caller asks again (or hands the job back).
        raise EngineError(
            f"the engine ended the request with finish_reason {finish_reason!r} "
            f"after {progress.tokens} tokens",
            retryable=True,
            platform=finish_reason == "abort",  # vLLM stopping: never the request's doing
        )
    finished = clock()
    parsed = parser.finish(stop_token(finish_reason, stop_id, parser.tokens))
    prompt_tokens = usage.prompt_tokens if usage else len(prompt)
    completion_tokens = usage.completion_tokens if usage else len(parser.tokens)
    return RunResult(
        parsed, finish_reason, prompt_tokens, completion_tokens, started, first_token, finished
    )
