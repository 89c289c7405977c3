"""One shard of a batch: the input lines ``n`` with ``(n - 1) % shards == index``, answered
by the model's engine with many requests in flight, written to storage in parts.

The worker first reads what earlier attempts of its shard wrote and skips those lines, so
a pod killed at any moment loses at most the answers since its last part (they are asked
again) and never writes a line twice to the merged output. Lines the engine could not
answer because it went away are asked again without counting against
``maxLineAttempts``; a line the engine refuses, or whose output is not harmony, goes to
the error file with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gptoss_operator.api.batch import ShardProgress
from gptoss_operator.api.batch_plan import BatchPlan
from gptoss_operator.api.job import Phase
from gptoss_operator.engine.attempts import Verdict, decide
from gptoss_operator.engine.client import EngineClient, EngineError
from gptoss_operator.engine.generation import EngineGate, generate
from gptoss_operator.engine.harmony import Harmony
from gptoss_operator.engine.render import PromptRenderer
from gptoss_operator.workers.batch.lines import (
    Answer,
    LineError,
    LineRequest,
    OversizedLine,
    answer_record,
    failure_record,
    invalid_line_record,
    parse_line,
    request_id,
)
from gptoss_operator.workers.batch.parts import (
    LineSet,
    Tally,
    decode_rows,
    encode_row,
    lines_read_name,
    lines_read_record,
    part_name,
    shard_prefix,
)
from gptoss_operator.workers.batch.storage import InputFile, OutputFolder, StorageError

log = logging.getLogger(__name__)

READ_BATCH = 1024  # lines taken from the input per hop to the reading thread
STORAGE_RETRY_SECONDS = (1, 2, 5, 10, 30)


@dataclass
class _Pending:
    """Finished rows not yet written, with what they add to the tally."""

    rows: list[bytes] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)


class ShardRunner:
    def __init__(
        self,
        plan: BatchPlan,
        index: int,
        worker: str,
        source: InputFile,
        output: OutputFolder,
        engine: EngineClient,
        harmony: Harmony,
        *,
        report: Callable[[ShardProgress], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.index = index
        self.worker = worker
        self.source = source
        self.output = output
        self.engine = engine
        self.harmony = harmony
        self.renderer = PromptRenderer(harmony)
        self.report = report
        self.clock = clock
        self.run_id = uuid.uuid4().hex[:6]
        self.done = LineSet()
        self.tally = Tally()  # lines written to storage
        self.total: int | None = None
        self.in_flight = 0
        self.gate = EngineGate(engine)
        self._pending = _Pending()
        self._parts = 0
        self._flush_lock = asyncio.Lock()
        self._flushes: set[asyncio.Task[None]] = set()  # held so they are not collected
        self.model_names = frozenset(plan.modelNames)
        self._finished = False

    # ------------------------------------------------------------ the run
    async def run(self) -> Tally:
        """Answer every line of the shard not yet on storage. Raises StorageError."""
        await self._resume()
        self.total = total = await self._count()
        log.info("shard %d: %s lines, %d already written", self.index, total, self.tally.done)
        reporter = asyncio.create_task(self._report_forever())
        flusher = asyncio.create_task(self._flush_forever())
        try:
            await self.gate.open()
            await self._answer_all()
            await self._flush()
            await _retrying(
                lambda: self.output.write(lines_read_name(self.index), lines_read_record(total))
            )
            self._finished = True
        finally:
            flusher.cancel()
            reporter.cancel()
            self.gate.close()
            # What was answered is kept, whatever stopped the run.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flush())
            self.renderer.close()
        await self._send_report()
        return self.tally

    def mine(self, line: int) -> bool:
        return (line - 1) % self.plan.shards == self.index

    async def _resume(self) -> None:
        names = await _retrying(lambda: self.output.list(shard_prefix(self.index)))
        for name in names:
            if not name.endswith(".jsonl"):
                continue
            data = await _retrying(lambda name=name: self.output.read(name))  # type: ignore[misc]
            for row in decode_rows(data):
                if self.done.add(row.line):
                    self.tally.count(row)

    async def _count(self) -> int:
        total = 0
        async for number, raw in self._lines():
            if self.mine(number) and (isinstance(raw, OversizedLine) or raw.strip()):
                total += 1
        return total

    async def _lines(self) -> AsyncIterator[tuple[int, bytes | OversizedLine]]:
        """Numbered input lines, read in a thread a batch at a time."""
        lines = self.source.lines()
        number = 0
        while True:
            taken = await asyncio.to_thread(_take, lines, READ_BATCH)
            if not taken:
                return
            for raw in taken:
                number += 1
                yield number, raw

    async def _answer_all(self) -> None:
        slots = asyncio.Semaphore(self.plan.requestsPerShard)
        running: set[asyncio.Task[None]] = set()
        try:
            async for number, raw in self._lines():
                if not self.mine(number) or number in self.done:
                    continue
                parsed = parse_line(number, raw, self.plan.defaults, self.model_names)
                if parsed is None:
                    continue
                if isinstance(parsed, LineError):
                    self._add(number, encode_row(number, False, self._invalid(parsed)), False)
                    continue
                await slots.acquire()
                task = asyncio.create_task(self._answer(parsed))
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(lambda _: slots.release())
            if running:
                await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _invalid(self, error: LineError) -> dict[str, Any]:
        return invalid_line_record(error, batch_uid=self.plan.uid)

    # ------------------------------------------------------------ one line
    async def _answer(self, request: LineRequest) -> None:
        """Answer one line into one of the two files, whatever happens (but a cancel)."""
        try:
            await self._answer_line(request)
        except Exception as error:
            log.exception("line %d failed unexpectedly", request.line)
            self._fail(request, 500, "internal_error", f"{type(error).__name__}: {error}")

    async def _answer_line(self, request: LineRequest) -> None:
        try:
            prompt = await self.renderer.render(request.chat)
        except ValueError as error:
            self._fail(request, 400, "invalid_input", f"messages cannot be rendered: {error}")
            return
        priority = self.plan.priority if self.plan.priorityScheduling else None
        params = request.chat.sampling(self.harmony.stop_token_ids, priority)
        failures = platform_retries = 0
        while True:
            await self.gate.ready.wait()
            self.in_flight += 1
            try:
                result = await generate(self.engine, self.harmony, prompt, params, clock=self.clock)
                break
            except EngineError as error:
                decision = decide(
                    error,
                    engine_healthy=await self.engine.healthy() if error.retryable else None,
                    platform_retries=platform_retries,
                    charged=failures + 1,
                    max_attempts=self.plan.maxLineAttempts,
                    prompt_tokens=len(prompt),
                    max_model_len=self.gate.max_model_len,
                )
                if decision.verdict is Verdict.REJECTED:
                    self._fail(request, error.status or 400, decision.reason, decision.message)
                    return
                if decision.verdict is Verdict.ENGINE_DOWN:
                    self.gate.went_down(error.message)
                    continue  # the platform's fault: not counted
                if decision.verdict is Verdict.ASK_AGAIN:
                    # A replica gone from under the Service, a lost request: not counted.
                    platform_retries += 1
                    log.info("line %d asked again: %s", request.line, error.message)
                    await asyncio.sleep(min(5.0, 0.2 * platform_retries))
                    continue
                failures += 1
                if decision.verdict is Verdict.EXHAUSTED:
                    self._fail(request, error.status or 502, "engine_error", decision.message)
                    return
                await asyncio.sleep(min(30.0, 2.0 ** (failures - 1)))
            finally:
                self.in_flight -= 1
        call_ids = f"call_{request_id(self.plan.uid, request.line).removeprefix('batch_req_')}"
        outcome = result.outcome(request.chat, self.gate.max_model_len, call_ids)
        if outcome.phase == Phase.FAILED:
            self._fail(
                request,
                500,
                outcome.reason,
                outcome.message,
                result.prompt_tokens,
                result.completion_tokens,
            )
            return
        answer = Answer(
            content=outcome.texts.get("response", ""),
            reasoning=outcome.texts.get("analysis", ""),
            commentary=outcome.texts.get("commentary", ""),
            finish_reason=outcome.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            tool_calls=outcome.tool_calls,
        )
        record = answer_record(
            request,
            answer,
            batch_uid=self.plan.uid,
            model=self.plan.servedModelName,
            created=int(time.time()),
        )
        row = encode_row(request.line, True, record, result.prompt_tokens, result.completion_tokens)
        self._add(request.line, row, True, result.prompt_tokens, result.completion_tokens)

    def _fail(
        self,
        request: LineRequest,
        status: int,
        code: str,
        message: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        record = failure_record(request, status, code, message, batch_uid=self.plan.uid)
        row = encode_row(request.line, False, record, prompt_tokens, completion_tokens)
        self._add(request.line, row, False, prompt_tokens, completion_tokens)

    def _add(
        self, line: int, row: bytes, ok: bool, prompt_tokens: int = 0, completion_tokens: int = 0
    ) -> None:
        pending = self._pending
        pending.rows.append(row)
        if ok:
            pending.tally.succeeded += 1
        else:
            pending.tally.failed += 1
        pending.tally.prompt_tokens += prompt_tokens
        pending.tally.completion_tokens += completion_tokens
        if len(pending.rows) >= self.plan.flushLines and not self._flush_lock.locked():
            flush = asyncio.get_running_loop().create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    # ------------------------------------------------------------ storage
    async def _flush(self) -> None:
        async with self._flush_lock:
            pending, self._pending = self._pending, _Pending()
            if not pending.rows:
                return
            name = part_name(self.index, f"{self.worker}-{self.run_id}", self._parts)
            data = b"".join(pending.rows)
            try:
                await _retrying(lambda: self.output.write(name, data))
            except BaseException:
                # Not written: keep the rows for the next try (or the final flush).
                pending.rows += self._pending.rows
                _merge(pending.tally, self._pending.tally)
                self._pending = pending
                raise
            self._parts += 1
            _merge(self.tally, pending.tally)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.plan.flushSeconds)
            await self._flush()

    # ------------------------------------------------------------ progress
    def progress(self) -> ShardProgress:
        return ShardProgress(
            total=self.total,
            succeeded=self.tally.succeeded,
            failed=self.tally.failed,
            inFlight=self.in_flight,
            promptTokens=self.tally.prompt_tokens,
            completionTokens=self.tally.completion_tokens,
            done=self._finished,
            worker=self.worker,
        )

    async def _send_report(self) -> None:
        if self.report is None:
            return
        try:
            await self.report(self.progress())
        except Exception as error:  # a busy apiserver never stops the work
            log.warning("reporting progress failed (%s)", error)

    async def _report_forever(self) -> None:
        while True:
            await self._send_report()
            await asyncio.sleep(self.plan.progressSeconds)


def _take(lines: Iterator[bytes | OversizedLine], count: int) -> list[bytes | OversizedLine]:
    taken: list[bytes | OversizedLine] = []
    for raw in lines:
        taken.append(raw)
        if len(taken) >= count:
            break
    return taken


def _merge(into: Tally, other: Tally) -> None:
    into.succeeded += other.succeeded
    into.failed += other.failed
    into.prompt_tokens += other.prompt_tokens
    into.completion_tokens += other.completion_tokens


async def _retrying(call: Callable[[], Any]) -> Any:
    """A storage call in a thread, tried again while the failure may pass."""
    for delay in (*STORAGE_RETRY_SECONDS, None):
        try:
            return await asyncio.to_thread(call)
        except StorageError as error:
            if error.permanent or delay is None:
                raise
            log.warning("%s; trying again in %ss", error.message, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
