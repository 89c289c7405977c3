"""When a failed download runs again (pure)."""

from __future__ import annotations

import datetime
from typing import Any

from gptoss_operator.controllers.model.download_retry import (
    ATTEMPT_LABEL,
    GENERATION_ANNOTATION,
    RETRY_ANNOTATION,
    backoff_seconds,
    plan_retry,
    retry_hint,
)

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def _job(
    failed_seconds_ago: float | None, attempt: int = 0, generation: int = 1, token: str = ""
) -> dict[str, Any]:
    conditions = []
    if failed_seconds_ago is not None:
        when = NOW - datetime.timedelta(seconds=failed_seconds_ago)
        conditions.append(
            {
                "type": "Failed",
                "status": "True",
                "lastTransitionTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    annotations = {GENERATION_ANNOTATION: str(generation)}
    if token:
        annotations[RETRY_ANNOTATION] = token
    return {
        "metadata": {"labels": {ATTEMPT_LABEL: str(attempt)}, "annotations": annotations},
        "status": {"conditions": conditions},
    }


def test_a_running_or_finished_download_is_left_alone() -> None:
    assert plan_retry(_job(None), 1, None, NOW, 60, 1800) is None


def test_a_spec_change_or_a_new_retry_token_retries_at_once() -> None:
    assert plan_retry(_job(5, generation=1), 2, None, NOW, 60, 1800).reason == "SpecChanged"  # type: ignore[union-attr]
    requested = plan_retry(_job(5, token="a"), 1, "b", NOW, 60, 1800)
    assert requested is not None
    assert (requested.now, requested.reason) == (True, "RetryRequested")
    same = plan_retry(_job(5, token="a"), 1, "a", NOW, 60, 1800)
    assert same is not None
    assert not same.now, "the token the Job was made with asks for nothing new"


def test_failures_back_off_doubling_up_to_the_cap() -> None:
    assert [backoff_seconds(n, 60, 1800) for n in range(7)] == [60, 120, 240, 480, 960, 1800, 1800]
    waiting = plan_retry(_job(50, attempt=0), 1, None, NOW, 60, 1800)
    assert waiting is not None
    assert not waiting.now
    assert waiting.in_seconds == 10
    assert "retrying in ~1m" in retry_hint(waiting)
    due = plan_retry(_job(61, attempt=0), 1, None, NOW, 60, 1800)
    assert due is not None
    assert (due.now, due.reason) == (True, "Backoff")
    later = plan_retry(_job(61, attempt=2), 1, None, NOW, 60, 1800)
    assert later is not None
    assert not later.now
    assert retry_hint(later).startswith("; retrying in ~3m")
    assert retry_hint(None) == retry_hint(due) == ""
