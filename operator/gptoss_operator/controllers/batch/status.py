"""An InferenceBatch's status, computed from what the reconciler observed: its Jobs,
its pods' troubles and its shards' reports. Pure functions."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

from gptoss_operator.api.batch import Phase
from gptoss_operator.api.conditions import (
    format_duration,
    get_condition,
    parse_time,
    set_condition,
    timestamp,
)

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


def _total(shards: dict[str, Any], count: int) -> int | None:
    """Lines in the input, once every shard has counted its own."""
    totals: list[int] = []
    for i in range(count):
        counted = (shards.get(str(i)) or {}).get("total")
        if counted is None:
            return None
        totals.append(int(counted))
    return sum(totals)


def _totals(shards: dict[str, Any], count: int) -> dict[str, int]:
    entries = [shards.get(str(i)) or {} for i in range(count)]
    return {
        "succeeded": sum(int(e.get("succeeded") or 0) for e in entries),
        "failed": sum(int(e.get("failed") or 0) for e in entries),
        "inFlight": sum(int(e.get("inFlight") or 0) for e in entries if not e.get("done")),
        "promptTokens": sum(int(e.get("promptTokens") or 0) for e in entries),
        "completionTokens": sum(int(e.get("completionTokens") or 0) for e in entries),
    }


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
    status: dict[str, Any],
    generation: int | None,
    observed: Observed,
    now: datetime.datetime,
) -> dict[str, Any]:
    """The status fields to write (merged into what is there)."""
    conditions = list(status.get("conditions") or [])
    shards_done = job_finished(observed.shards_job)
    merge_done = job_finished(observed.merge_job)
    total = _total(status.get("shards") or {}, spec_shards)
    figures = _totals(status.get("shards") or {}, spec_shards)
    merged = (observed.merged or {}).get("summary")
    if merged:
        figures.update(
            succeeded=merged["succeeded"],
            failed=merged["failed"],
            promptTokens=merged["promptTokens"],
            completionTokens=merged["completionTokens"],
            inFlight=0,
        )
    start = parse_time(status.get("startTime")) or parse_time(
        (observed.shards_job or {}).get("status", {}).get("startTime")
    )
    fields: dict[str, Any] = {"observedGeneration": generation}

    if observed.shards_job is None:
        reason, message = observed.waiting or ("Creating", "creating the shards' Job")
        phase = Phase.PENDING
        finished: str | None = None
    elif merge_done == "Complete" and shards_done == "Complete":
        phase, finished = Phase.SUCCEEDED, "Complete"
        reason = "Completed"
        message = f"{figures['succeeded']} lines answered, {figures['failed']} failed"
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

    fields["phase"] = phase.value
    fields["message"] = message
    if start is not None:
        fields["startTime"] = timestamp(start)
    done = figures["succeeded"] + figures["failed"]
    counts = {k: figures[k] for k in ("succeeded", "failed", "inFlight")}
    fields["counts"] = counts if total is None else {"total": total, **counts}
    fields["usage"] = {
        "promptTokens": figures["promptTokens"],
        "completionTokens": figures["completionTokens"],
        "totalTokens": figures["promptTokens"] + figures["completionTokens"],
    }
    if total:
        fields["percent"] = min(100, done * 100 // total)
    elif total == 0:
        fields["percent"] = 100
    end = now
    if finished is not None:
        completion = parse_time(status.get("completionTime")) or now
        fields["completionTime"] = timestamp(completion)
        end = completion
        if start is not None:
            fields["duration"] = format_duration((completion - start).total_seconds())
        fields["estimatedTimeLeft"] = None
    if start is not None:
        elapsed = max((end - start).total_seconds(), 1e-3)
        fields["linesPerSecond"] = round(done / elapsed, 3)
        fields["outputTokensPerSecond"] = round(figures["completionTokens"] / elapsed, 3)
        if finished is None and total and done:
            fields["estimatedTimeLeft"] = _eta((total - done) / (done / elapsed))
    if merged:
        fields["output"] = {"results": merged["output"], "errors": merged["errors"]}

    def put(type_: str, value: bool, why: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, value, why, message, generation)

    put("Complete", finished == "Complete", reason if finished == "Complete" else "NotFinished")
    put("Failed", finished == "Failed", reason if finished == "Failed" else "NotFailed")
    put("Ready", finished == "Complete", reason)
    put("Reconciling", finished is None, reason if finished is None else "Finished")
    put("Stalled", finished == "Failed", reason if finished == "Failed" else "NotStalled")
    fields["conditions"] = conditions
    return fields


# Fields that follow the clock alone: written with progress, not for their own sake.
CLOCK_FIELDS = ("linesPerSecond", "outputTokensPerSecond", "estimatedTimeLeft")


def status_changed(status: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Whether the fields batch_status computed say more than the stored status does,
    the clock aside (a batch making no progress is not written every pass)."""
    return any(status.get(key) != value for key, value in fields.items() if key not in CLOCK_FIELDS)


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
