"""When a failed download runs again.

A failed download Job is terminal, and most of its causes are fixed outside the model's
spec (a token Secret updated, access to a gated repo granted, a full volume grown). So
a failed download runs again, as a new Job (attempt N+1):

- at once when the model's spec changed since the Job was made (``metadata.generation``),
  e.g. ``spec.storage.size`` raised or ``spec.source.tokenSecretRef`` fixed;
- at once when ``gptoss.ai/retry-download`` on the model is set to a new value
  (``kubectl annotate gptossmodel NAME gptoss.ai/retry-download="$(date +%s)" --overwrite``);
- otherwise by itself after a backoff that doubles per attempt (``base`` .. ``cap``).

Pure: the reconciler reads the Job and the model and does what this says.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from gptoss_operator.api.conditions import parse_time
from gptoss_operator.core.naming import ATTEMPT_LABEL, GENERATION_ANNOTATION, RETRY_ANNOTATION


@dataclass(frozen=True)
class RetryPlan:
    now: bool
    reason: str  # SpecChanged | RetryRequested | Backoff
    in_seconds: float = 0.0


def attempt_of(job: dict[str, Any]) -> int:
    labels = job.get("metadata", {}).get("labels") or {}
    try:
        return int(labels.get(ATTEMPT_LABEL, "0"))
    except ValueError:
        return 0


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    return float(min(cap, base * 2**attempt))


def failed_at(job: dict[str, Any]) -> datetime.datetime | None:
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return parse_time(condition.get("lastTransitionTime"))
    return None


def plan_retry(
    job: dict[str, Any],
    model_generation: int,
    retry_token: str | None,
    now: datetime.datetime,
    base: float,
    cap: float,
) -> RetryPlan | None:
    """None while the Job has not failed; else when to run the next attempt."""
    failed = failed_at(job)
    if failed is None:
        return None
    annotations = job.get("metadata", {}).get("annotations") or {}
    made_for = int(annotations.get(GENERATION_ANNOTATION, "0") or 0)
    if model_generation > made_for:
        return RetryPlan(True, "SpecChanged")
    if retry_token and retry_token != annotations.get(RETRY_ANNOTATION):
        return RetryPlan(True, "RetryRequested")
    wait = backoff_seconds(attempt_of(job), base, cap)
    remaining = wait - (now - failed).total_seconds()
    if remaining <= 0:
        return RetryPlan(True, "Backoff")
    return RetryPlan(False, "Backoff", remaining)


def retry_hint(plan: RetryPlan | None) -> str:
    """What the model's message adds to a download failure."""
    if plan is None or plan.now:
        return ""
    minutes = max(1, round(plan.in_seconds / 60))
    return (
        f"; retrying in ~{minutes}m, or at once after the cause is fixed and the model's spec "
        f"edited or annotated {RETRY_ANNOTATION}=<new value>"
    )
