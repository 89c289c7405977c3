"""An InferenceJob's life on one worker, as pure transitions.

    Pending --claim--> Running (attempt n)
    Running n --a charged or uncharged failure, budget left--> Running n+1   (Retry)
    Running n --engine down, worker shutting down--> Pending, n voided       (Write)
    Running n --refused, budget spent, deadline, bad input--> Failed         (Write)
    Running n --an answer--> Succeeded or Failed, by what the answer says    (Write)

Each function takes the job as this worker holds it (:class:`Held`) and what happened,
and returns what to write into the job's status and which Event to post. The worker
(``worker.py``) does the I/O: it reads the engine and the clock, asks these functions,
and writes what they return through the ``JobStore``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gptoss_operator.api.conditions import format_duration, parse_time, timestamp
from gptoss_operator.api.job import Phase
from gptoss_operator.api.job_output import OutputLayout
from gptoss_operator.api.job_status import phase_fields, queued, with_conditions
from gptoss_operator.engine.attempts import Decision, Verdict
from gptoss_operator.engine.generation import Progress, RunResult
from gptoss_operator.engine.outcome import Outcome
from gptoss_operator.workers.sidecar.keys import job_key

Event = tuple[str, str, str]  # (Normal|Warning, reason, message)


@dataclass(frozen=True)
class Held:
    """A job this worker claimed: its status as claimed and where its attempts stand."""

    key: str  # namespace/name
    generation: int | None
    status: Mapping[str, Any]
    attempt: int  # the attempt running now (status.attempts)
    voided: int  # attempts that do not count against backoffLimit
    platform_retries: int = 0  # uncharged asks again during this claim

    @classmethod
    def claimed(cls, job: Mapping[str, Any]) -> Held:
        status = job["status"]
        return cls(
            key=job_key(job),
            generation=job["metadata"].get("generation"),
            status=dict(status),
            attempt=int(status["attempts"]),
            voided=int(status.get("voidedAttempts") or 0),
        )

    @property
    def charged(self) -> int:
        """Attempts counted against backoffLimit, this one included."""
        return self.attempt - self.voided


@dataclass(frozen=True)
class Write:
    """A guarded write of the attempt's status: fields set, fields removed, an Event."""

    changes: dict[str, Any]
    remove: tuple[str, ...] = ()
    event: Event | None = None
    finishes: bool = False  # the job ends here (Failed, Succeeded)


@dataclass(frozen=True)
class Retry:
    """Try again as the next attempt after ``delay`` seconds; ``write`` records it."""

    write: Write
    delay: float
    next: Held


def claim(
    status: Mapping[str, Any],
    *,
    worker: str,
    generation: int | None,
    reasoning_level: str,
    lease_seconds: int,
    now: str,
) -> dict[str, Any] | None:
    """The status a claim writes: Running on ``worker``, the next attempt, a fresh lease.
    None when the job is not Pending (there is nothing to claim)."""
    if (status.get("phase") or Phase.PENDING.value) != Phase.PENDING.value:
        return None
    attempt = int(status.get("attempts") or 0) + 1
    claimed = with_conditions(
        dict(status),
        Phase.RUNNING,
        "Running",
        f"running on {worker} (attempt {attempt})",
        generation,
    )
    claimed.update(
        worker=worker,
        attempts=attempt,
        startTime=status.get("startTime") or now,
        reasoningLevel=reasoning_level,
        lease={
            "holder": worker,
            "acquireTime": now,
            "renewTime": now,
            "durationSeconds": lease_seconds,
        },
    )
    return claimed


def failed(held: Held, reason: str, message: str, now: str) -> Write:
    """The job fails for good: its own input, the engine's refusal, its budget or its
    deadline."""
    final = with_conditions(dict(held.status), Phase.FAILED, reason, message, held.generation)
    changes = phase_fields(final)
    changes["completionTime"] = now
    changes["finishReason"] = "error"
    return Write(changes, ("lease",), ("Warning", reason, message), finishes=True)


def deadline_passed(held: Held, active_deadline_seconds: int | None, now: str) -> Write:
    return failed(
        held,
        "DeadlineExceeded",
        f"activeDeadlineSeconds ({active_deadline_seconds}) passed before the answer was complete",
        now,
    )


def unrenderable(held: Held, error: str, now: str) -> Write:
    """Text the harmony format cannot encode (a lone surrogate, say)."""
    message = f"spec.messages cannot be rendered in the harmony format: {error}"
    return failed(held, "InvalidInput", message, now)


def handed_back(held: Held, reason: str, message: str, event: bool) -> Write:
    """Back to the queue, lease released, this attempt voided: the platform's doing
    (the engine went down, the worker shut down), never the job's."""
    requeued = queued(dict(held.status), reason, message, held.generation)
    changes = {**phase_fields(requeued), "voidedAttempts": held.voided + 1}
    return Write(changes, ("lease",), ("Warning", reason, message) if event else None)


def engine_unavailable(held: Held, worker: str, error: str) -> Write:
    message = (
        f"the engine of {worker} became unavailable during attempt {held.attempt} "
        f"({error}); requeued, the attempt does not count against backoffLimit"
    )
    return handed_back(held, "EngineUnavailable", message, event=True)


def worker_shutdown(held: Held, worker: str) -> Write:
    message = (
        f"{worker} shut down during attempt {held.attempt}; requeued, the attempt does not "
        "count against backoffLimit"
    )
    return handed_back(held, "WorkerShutdown", message, event=False)


def after_engine_error(
    held: Held,
    decision: Decision,
    error: str,
    *,
    worker: str,
    retry_base_seconds: float,
    retry_max_seconds: float,
    now: str,
) -> Write | Retry:
    """What a failed engine call means for the job (``decision`` from
    ``engine.attempts.decide``): fail it, hand it back, or try again after a backoff
    that doubles with each charged failure."""
    if decision.verdict is Verdict.REJECTED:
        return failed(held, decision.reason, decision.message, now)
    if decision.verdict is Verdict.ENGINE_DOWN:
        return engine_unavailable(held, worker, error)
    if decision.verdict is Verdict.EXHAUSTED:
        return failed(held, "BackoffLimitExceeded", decision.message, now)
    platform = decision.verdict is Verdict.ASK_AGAIN
    voided = held.voided + 1 if platform else held.voided
    delay = min(
        retry_max_seconds, retry_base_seconds * 2 ** (held.attempt - voided - (not platform))
    )
    outcome = "was cut (not counted)" if platform else "failed"
    changes: dict[str, Any] = {"attempts": held.attempt + 1}
    if platform:
        changes["voidedAttempts"] = voided
    changes["message"] = f"attempt {held.attempt} {outcome}: {error}; retrying"
    changes["lease/renewTime"] = now
    following = replace(
        held,
        attempt=held.attempt + 1,
        voided=voided,
        platform_retries=held.platform_retries + platform,
    )
    return Retry(Write(changes), delay, following)


def heartbeat(progress: Progress) -> dict[str, Any]:
    """What a lease renewal reports besides the renewal: the tokens so far."""
    where = f" ({progress.channel} channel)" if progress.channel else ""
    return {
        "usage": {
            "promptTokens": progress.prompt_tokens,
            "completionTokens": progress.tokens,
            "totalTokens": progress.prompt_tokens + progress.tokens,
        },
        "message": f"generating: {progress.tokens} tokens so far{where}",
    }


def answered(
    held: Held,
    *,
    reasoning_level: str,
    result: RunResult,
    outcome: Outcome,
    output: OutputLayout,
    saved: list[str],
    now: datetime.datetime,
) -> Write:
    """The answer, written into the status: the texts ``output`` keeps there (the rest
    in the ConfigMaps ``saved``), usage and timings. The phase is what the answer says
    (an answer cut short, or with no final channel, fails the job: see
    ``engine.outcome``); only a job that went wrong gets an Event."""
    message = outcome.message
    changes: dict[str, Any] = dict(output.status_fields)
    if saved:
        changes["outputRef"] = {
            "configMapName": saved[0],
            "configMapNames": saved,
            "keys": output.keys,
        }
        where = f"ConfigMap {saved[0]}" if len(saved) == 1 else f"ConfigMaps {', '.join(saved)}"
        message += f"; the full text is in {where}"
    if outcome.tool_calls:
        changes["toolCalls"] = [
            {"id": call.id, "name": call.name, "arguments": call.arguments}
            for call in outcome.tool_calls
        ]
    if outcome.answer_json and "response" not in output.keys:
        changes["responseJSON"] = outcome.answer_json[0]
    elif outcome.answer_json:
        message += "; status.responseJSON is left out, as the answer does not fit in status"
    total = result.prompt_tokens + result.completion_tokens
    generation_seconds = result.finished - (result.first_token or result.started)
    start = parse_time(held.status.get("startTime")) or now
    changes.update(
        reasoningLevel=reasoning_level,
        finishReason=outcome.finish_reason,
        usage={
            "promptTokens": result.prompt_tokens,
            "completionTokens": result.completion_tokens,
            "totalTokens": total,
        },
        completionTime=timestamp(now),
        duration=format_duration((now - start).total_seconds()),
        timeToFirstTokenSeconds=round((result.first_token or result.finished) - result.started, 4),
        tokensPerSecond=round(result.completion_tokens / generation_seconds, 2)
        if generation_seconds > 0
        else 0.0,
    )
    final = with_conditions(
        dict(held.status) | changes, outcome.phase, outcome.reason, message, held.generation
    )
    event = None if outcome.phase == Phase.SUCCEEDED else ("Warning", outcome.reason, message)
    return Write({**changes, **phase_fields(final)}, ("lease",), event, finishes=True)
