"""An InferenceBatch's status, computed from what the reconciler observed: its Jobs,
its pods' troubles and its shards' reports. Pure functions."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gptoss_operator.api.batch import (
    Counts,
    InferenceBatchStatus,
    OutputFiles,
    Phase,
    ShardProgress,
    Usage,
)
from gptoss_operator.api.common import Condition
from gptoss_operator.api.conditions import format_duration, get_condition, parse_time, set_condition

# Waiting reasons of a worker container that need someone to act (a missing Secret or
# ConfigMap, an image that cannot be pulled); the pod keeps waiting, nothing is lost.
STUCK_WAITING_REASONS = (
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
)


@dataclass(frozen=True)
class Observed:
    shards_job: dict[str, Any] | None = None
    merge_job: dict[str, Any] | None = None
    # (reason, message): why the Jobs cannot be made yet (no model, model not serving)
    waiting: tuple[str, str] | None = None
    # (reason, message): why the worker pods do not run or cannot get anywhere (see
    # pod_trouble; a model deleted under the shards; a merge Job of another batch)
    trouble: tuple[str, str] | None = None
    # the last failed shard pod's termination message, when a shard failed
    shard_failure: dict[str, Any] | None = None
    # the merge pod's termination message, once it succeeded
    merged: dict[str, Any] | None = None
    # the last failed merge pod's termination message, when the merge failed
    merge_failure: dict[str, Any] | None = None


def batch_demand(spec: dict[str, Any], status: dict[str, Any]) -> int:
    """Requests a batch keeps at its model's engine while its shards run: every running
    shard's requestsPerShard, or what is left to answer when that is less."""
    if status.get("phase") not in (None, Phase.PENDING.value, Phase.RUNNING.value):
        return 0
    shards = int(spec.get("shards") or 4)
    capacity = int(spec.get("parallelism") or shards) * int(spec.get("requestsPerShard") or 32)
    counts = status.get("counts") or {}
    if counts.get("total") is None:
        return capacity
    left = int(counts["total"]) - int(counts.get("succeeded", 0)) - int(counts.get("failed", 0))
    return max(0, min(capacity, left))


def job_finished(job: dict[str, Any] | None) -> str | None:
    """ "Complete" or "Failed" once a batch/v1 Job has finished, else None."""
    for condition in (job or {}).get("status", {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return None


def _job_condition(job: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return get_condition((job or {}).get("status", {}).get("conditions"), type_) or {}


def pod_trouble(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Why the batch's pods cannot run, from what the kubelet and scheduler report."""
    for pod in pods:
        status = pod.get("status") or {}
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_WAITING_REASONS:
                name = pod["metadata"]["name"]
                detail = f"pod {name} cannot start: {waiting.get('message') or ''}"
                return waiting["reason"], detail.strip()
        scheduled = get_condition(status.get("conditions"), "PodScheduled") or {}
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            name = pod["metadata"]["name"]
            detail = f"pod {name} cannot start: {scheduled.get('message') or ''}"
            return "Unschedulable", detail.strip()
    return None


def termination_message(pod: dict[str, Any]) -> dict[str, Any] | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        raw = terminated.get("message")
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                return {"message": raw.strip()[-2000:]}
            return parsed if isinstance(parsed, dict) else None
    return None


def _total(shards: Mapping[str, ShardProgress], count: int) -> int | None:
    """Lines in the input, once every shard has counted its own."""
    totals: list[int] = []
    for i in range(count):
        shard = shards.get(str(i))
        if shard is None or shard.total is None:
            return None
        totals.append(shard.total)
    return sum(totals)


@dataclass(frozen=True)
class _Figures:
    succeeded: int
    failed: int
    in_flight: int
    prompt_tokens: int
    completion_tokens: int


def _totals(shards: Mapping[str, ShardProgress], count: int) -> _Figures:
    entries = [shards.get(str(i)) or ShardProgress() for i in range(count)]
    return _Figures(
        succeeded=sum(e.succeeded for e in entries),
        failed=sum(e.failed for e in entries),
        in_flight=sum(e.inFlight for e in entries if not e.done),
        prompt_tokens=sum(e.promptTokens for e in entries),
        completion_tokens=sum(e.completionTokens for e in entries),
    )


def _merged(summary: Mapping[str, Any]) -> _Figures:
    return _Figures(
        succeeded=int(summary["succeeded"]),
        failed=int(summary["failed"]),
        in_flight=0,
        prompt_tokens=int(summary["promptTokens"]),
        completion_tokens=int(summary["completionTokens"]),
    )


def _eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def batch_status(
    spec_shards: int,
    status: InferenceBatchStatus,
    generation: int | None,
    observed: Observed,
    now: datetime.datetime,
) -> InferenceBatchStatus:
    """The status fields to write: those set on the result (see ``ApiModel.to_patch``),
    merged into what is there."""
    shards_done = job_finished(observed.shards_job)
    merge_done = job_finished(observed.merge_job)
    shards = status.shards or {}
    total = _total(shards, spec_shards)
    merged = (observed.merged or {}).get("summary")
    figures = _merged(merged) if merged else _totals(shards, spec_shards)
    start = status.startTime or parse_time(
        (observed.shards_job or {}).get("status", {}).get("startTime")
    )
    result = InferenceBatchStatus(observedGeneration=generation)

    if observed.shards_job is None:
        reason, message = observed.waiting or ("Creating", "creating the shards' Job")
        phase = Phase.PENDING
        finished: str | None = None
    elif merge_done == "Complete" and shards_done == "Complete":
        phase, finished = Phase.SUCCEEDED, "Complete"
        reason = "Completed"
        message = f"{figures.succeeded} lines answered, {figures.failed} failed"
    elif merge_done is not None:
        phase, finished = Phase.FAILED, "Failed"
        reason, message = _failure(observed, merge_done)
    elif shards_done is not None:
        phase, finished = Phase.MERGING, None
        reason = "Merging"
        message = "writing output.jsonl and errors.jsonl from the shards' parts"
        if shards_done == "Failed":
            _, failed_message = _failure(observed, None)
            message = f"{failed_message}; keeping what was answered: {message}"
        if observed.trouble is not None:
            reason, message = observed.trouble
    else:
        phase, finished = Phase.RUNNING, None
        reason, message = "Running", "answering"
        if observed.trouble is not None:
            reason, message = observed.trouble

    result.phase = phase
    result.message = message
    if start is not None:
        result.startTime = start
    done = figures.succeeded + figures.failed
    result.counts = Counts(
        succeeded=figures.succeeded, failed=figures.failed, inFlight=figures.in_flight
    )
    if total is not None:
        result.counts.total = total
    result.usage = Usage(
        promptTokens=figures.prompt_tokens,
        completionTokens=figures.completion_tokens,
        totalTokens=figures.prompt_tokens + figures.completion_tokens,
    )
    if total:
        result.percent = min(100, done * 100 // total)
    elif total == 0:
        result.percent = 100
    end = now
    if finished is not None:
        completion = status.completionTime or now.replace(microsecond=0)
        result.completionTime = completion
        end = completion
        if start is not None:
            result.duration = format_duration((completion - start).total_seconds())
        result.estimatedTimeLeft = None
    if start is not None:
        elapsed = max((end - start).total_seconds(), 1e-3)
        result.linesPerSecond = round(done / elapsed, 3)
        result.outputTokensPerSecond = round(figures.completion_tokens / elapsed, 3)
        if finished is None and total and done:
            result.estimatedTimeLeft = _eta((total - done) / (done / elapsed))
    if merged:
        result.output = OutputFiles(results=merged["output"], errors=merged["errors"])

    conditions = [c.to_wire() for c in status.conditions]

    def put(type_: str, value: bool, why: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, value, why, message, generation)

    put("Complete", finished == "Complete", reason if finished == "Complete" else "NotFinished")
    put("Failed", finished == "Failed", reason if finished == "Failed" else "NotFailed")
    put("Ready", finished == "Complete", reason)
    put("Reconciling", finished is None, reason if finished is None else "Finished")
    put("Stalled", finished == "Failed", reason if finished == "Failed" else "NotStalled")
    result.conditions = [Condition.model_validate(c) for c in conditions]
    return result


# Fields that follow the clock alone: written with progress, not for their own sake.
CLOCK_FIELDS = ("linesPerSecond", "outputTokensPerSecond", "estimatedTimeLeft")


def status_changed(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether the merge patch of the fields batch_status computed says more than the
    stored status does, the clock aside (a batch making no progress is not written every
    pass)."""
    return any(status.get(key) != value for key, value in patch.items() if key not in CLOCK_FIELDS)


def _failure(observed: Observed, merge_done: str | None) -> tuple[str, str]:
    """Why the batch failed: the merge's own word when it failed with one, else the
    shards' (a merge that cannot run usually fails for the shards' reason)."""
    if merge_done == "Failed" and observed.merge_failure:
        detail = observed.merge_failure
        return str(detail.get("reason") or "MergeFailed"), str(detail.get("message") or "")
    if merge_done == "Failed" and not observed.shard_failure:
        condition = _job_condition(observed.merge_job, "Failed")
        return "MergeFailed", f"the merge failed: {condition.get('message') or 'see its pod'}"
    condition = _job_condition(observed.shards_job, "Failed")
    job_reason = str(condition.get("reason") or "Failed")
    detail = observed.shard_failure or {}
    reason = str(detail.get("reason") or job_reason)
    if job_reason == "DeadlineExceeded":
        reason = "DeadlineExceeded"
    message = str(detail.get("message") or condition.get("message") or "a shard failed")
    return reason, message
