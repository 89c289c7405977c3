"""InferenceJob status: phases, batch-style and kstatus conditions, result fields.

Pure functions shared by the sidecar (which runs jobs) and the operator (which queues,
requeues and expires them).
"""

from __future__ import annotations

import datetime
from typing import Any

from gptoss_operator.api.conditions import parse_time, set_condition
from gptoss_operator.api.job import Phase

# The fields with_conditions and queued set: what a phase change writes.
PHASE_FIELDS = ("phase", "conditions", "message", "observedGeneration")


def phase_fields(status: dict[str, Any]) -> dict[str, Any]:
    return {key: status[key] for key in PHASE_FIELDS}


def with_conditions(
    status: dict[str, Any],
    phase: Phase,
    reason: str,
    message: str,
    generation: int | None,
) -> dict[str, Any]:
    """Set phase and the conditions that go with it (kstatus + batch/v1 Job style)."""
    conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
    done = phase in (Phase.SUCCEEDED, Phase.FAILED)
    conditions = set_condition(
        conditions, "Ready", phase == Phase.SUCCEEDED, reason, message, generation
    )
    conditions = set_condition(
        conditions,
        "Reconciling",
        not done,
        reason if not done else "Finished",
        message if not done else "",
        generation,
    )
    conditions = set_condition(
        conditions,
        "Stalled",
        phase == Phase.FAILED,
        reason if phase == Phase.FAILED else "Progressing",
        message if phase == Phase.FAILED else "",
        generation,
    )
    if phase == Phase.SUCCEEDED:
        conditions = set_condition(conditions, "Complete", True, reason, message, generation)
    if phase == Phase.FAILED:
        conditions = set_condition(conditions, "Failed", True, reason, message, generation)
    return {
        **status,
        "phase": phase.value,
        "observedGeneration": generation,
        "conditions": conditions,
        "message": message,
    }


def queued(
    status: dict[str, Any], reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    """A job waiting for a worker: Pending, with why in the Scheduled condition."""
    updated = with_conditions(status, Phase.PENDING, reason, message, generation)
    ready = reason in ("Queued", "QuotaReserved")  # nothing holds it back
    updated["conditions"] = set_condition(
        updated["conditions"], "Scheduled", ready, reason, message, generation
    )
    return updated


def charged_attempts(status: dict[str, Any]) -> int:
    """Attempts that count against backoffLimit: those started, minus those voided
    because the engine went away under them."""
    return int(status.get("attempts") or 0) - int(status.get("voidedAttempts") or 0)


def deadline_passed(
    created: Any, active_deadline_seconds: int | None, now: datetime.datetime
) -> bool:
    start = parse_time(created)
    if active_deadline_seconds is None or start is None:
        return False
    return (now - start).total_seconds() >= active_deadline_seconds
