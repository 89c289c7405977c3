"""An InferenceJob's life on one worker, transition by transition: what each event of an
attempt writes into the job's status (the worker only performs these writes)."""

from __future__ import annotations

import datetime
from typing import Any

from gptoss_operator.api.job_output import layout
from gptoss_operator.engine.attempts import Decision, Verdict, decide
from gptoss_operator.engine.client import EngineError
from gptoss_operator.engine.generation import Progress, RunResult
from gptoss_operator.engine.harmony import ChatMessage, ParsedOutput
from gptoss_operator.engine.request import ChatRequest
from gptoss_operator.workers.sidecar import lifecycle
from gptoss_operator.workers.sidecar.lifecycle import Held, Retry, Write

REQUEST = ChatRequest((ChatMessage("user", "2+2?"),), "high", max_tokens=100, temperature=1.0)

NOW = "2026-12-07T03:00:00Z"
WORKER = "pod-a"


def _claim(status: dict[str, Any], reasoning_level: str = "high") -> dict[str, Any] | None:
    return lifecycle.claim(
        status,
        worker=WORKER,
        generation=2,
        reasoning_level=reasoning_level,
        lease_seconds=30,
        now=NOW,
    )


def _claimed(status: dict[str, Any] | None = None) -> Held:
    claimed = _claim(status or {})
    assert claimed is not None
    return Held.claimed(
        {"metadata": {"name": "j", "namespace": "ns", "generation": 2}, "status": claimed}
    )


def _step(held: Held, error: EngineError, engine_healthy: bool = True) -> Write | Retry:
    decision = decide(
        error,
        engine_healthy=engine_healthy if error.retryable else None,
        platform_retries=held.platform_retries,
        charged=held.charged,
        max_attempts=3,
        prompt_tokens=10,
        max_model_len=4096,
    )
    return lifecycle.after_engine_error(
        held,
        decision,
        error.message,
        worker=WORKER,
        retry_base_seconds=1.0,
        retry_max_seconds=30.0,
        now=NOW,
    )


def _condition(changes: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in changes["conditions"] if c["type"] == type_)


def test_a_claim_takes_a_pending_job_as_its_next_attempt_and_nothing_else() -> None:
    claimed = _claim(
        {"phase": "Pending", "attempts": 1, "startTime": "2026-12-07T02:00:00Z"}, "low"
    )
    assert claimed is not None
    assert (claimed["phase"], claimed["worker"], claimed["attempts"]) == ("Running", WORKER, 2)
    assert claimed["startTime"] == "2026-12-07T02:00:00Z", "the first start is kept"
    assert claimed["lease"] == {
        "holder": WORKER,
        "acquireTime": NOW,
        "renewTime": NOW,
        "durationSeconds": 30,
    }
    assert claimed["reasoningLevel"] == "low"
    for phase in ("Running", "Succeeded", "Failed"):
        assert _claim({"phase": phase}) is None, phase


def test_a_charged_failure_is_the_next_attempt_after_a_doubling_backoff() -> None:
    held = _claimed()
    first = _step(held, EngineError("HTTP 500", status=500, retryable=True))
    assert isinstance(first, Retry)
    assert first.delay == 1.0
    assert first.write.changes["attempts"] == 2
    assert "voidedAttempts" not in first.write.changes
    assert first.write.changes["message"] == "attempt 1 failed: HTTP 500; retrying"
    assert first.write.changes["lease/renewTime"] == NOW
    second = _step(first.next, EngineError("HTTP 500", status=500, retryable=True))
    assert isinstance(second, Retry)
    assert second.delay == 2.0
    spent = _step(second.next, EngineError("HTTP 500", status=500, retryable=True))
    assert isinstance(spent, Write)
    assert spent.finishes
    assert spent.changes["phase"] == "Failed"
    assert spent.changes["finishReason"] == "error"
    assert spent.remove == ("lease",)
    assert _condition(spent.changes, "Failed")["reason"] == "BackoffLimitExceeded"
    assert spent.event is not None
    assert spent.event[:2] == ("Warning", "BackoffLimitExceeded")


def test_a_request_cut_by_the_platform_is_asked_again_uncharged() -> None:
    held = _claimed()
    cut = _step(held, EngineError("connection reset", retryable=True, platform=True))
    assert isinstance(cut, Retry)
    assert cut.write.changes["voidedAttempts"] == 1
    assert cut.write.changes["message"] == (
        "attempt 1 was cut (not counted): connection reset; retrying"
    )
    assert cut.delay == 1.0, "an uncharged ask again does not grow the backoff"
    assert (cut.next.attempt, cut.next.voided, cut.next.charged) == (2, 1, 1)
    assert cut.next.platform_retries == 1


def test_an_engine_gone_down_hands_the_job_back_uncharged() -> None:
    held = _claimed()
    down = _step(held, EngineError("connection refused", retryable=True), engine_healthy=False)
    assert isinstance(down, Write)
    assert not down.finishes
    assert down.changes["phase"] == "Pending"
    assert down.changes["voidedAttempts"] == 1
    assert down.remove == ("lease",)
    scheduled = _condition(down.changes, "Scheduled")
    assert scheduled["reason"] == "EngineUnavailable"
    assert "does not count against backoffLimit" in scheduled["message"]
    assert down.event is not None
    assert down.event[:2] == ("Warning", "EngineUnavailable")


def test_a_refused_request_fails_at_once_with_the_engines_reason() -> None:
    refused = _step(_claimed(), EngineError("HTTP 400: bad request", status=400, retryable=False))
    assert isinstance(refused, Write)
    assert refused.changes["phase"] == "Failed"
    assert _condition(refused.changes, "Failed")["reason"] == "EngineRejected"
    rejected = Decision(Verdict.REJECTED, "PromptTooLong", "the prompt is too long")
    too_long = lifecycle.after_engine_error(
        _claimed(),
        rejected,
        "HTTP 400",
        worker=WORKER,
        retry_base_seconds=1,
        retry_max_seconds=30,
        now=NOW,
    )
    assert isinstance(too_long, Write)
    assert _condition(too_long.changes, "Failed")["message"] == "the prompt is too long"


def test_a_shutdown_voids_the_attempt_counting_the_voids_of_this_claim() -> None:
    """A pod going away hands its jobs back; an attempt voided by an ask again during
    this claim stays voided (the hand-back does not count from the claim's figure)."""
    held = _claimed({"phase": "Pending", "attempts": 2, "voidedAttempts": 1})
    cut = _step(held, EngineError("reset", retryable=True, platform=True))
    assert isinstance(cut, Retry)
    assert cut.write.changes["voidedAttempts"] == 2
    shutdown = lifecycle.worker_shutdown(cut.next, WORKER)
    assert shutdown.changes["voidedAttempts"] == 3
    assert shutdown.changes["phase"] == "Pending"
    assert shutdown.event is None, "a shutdown is routine: no Event per job"
    assert "shut down during attempt 4" in _condition(shutdown.changes, "Scheduled")["message"]


def test_deadlines_and_unrenderable_input_fail_the_job() -> None:
    late = lifecycle.deadline_passed(_claimed(), 60, NOW)
    assert _condition(late.changes, "Failed")["reason"] == "DeadlineExceeded"
    assert late.changes["completionTime"] == NOW
    bad = lifecycle.unrenderable(_claimed(), "lone surrogate", NOW)
    assert _condition(bad.changes, "Failed")["message"] == (
        "spec.messages cannot be rendered in the harmony format: lone surrogate"
    )


def _result(parsed: ParsedOutput, finish_reason: str = "stop") -> RunResult:
    return RunResult(
        parsed=parsed,
        finish_reason=finish_reason,
        prompt_tokens=10,
        completion_tokens=20,
        started=100.0,
        first_token=100.5,
        finished=102.5,
    )


def test_an_answer_is_written_with_its_usage_and_timings() -> None:
    held = _claimed()
    result = _result(ParsedOutput(response="4", analysis="2+2", reached_final=True, complete=True))
    outcome = result.outcome(REQUEST, max_model_len=4096)
    done = lifecycle.answered(
        held,
        reasoning_level="high",
        result=result,
        outcome=outcome,
        output=layout(outcome.texts),
        saved=[],
        now=datetime.datetime(2026, 12, 7, 3, 0, 5, tzinfo=datetime.UTC),
    )
    assert done.finishes
    assert done.event is None, "a success is in the status; no Event"
    changes = done.changes
    assert (changes["phase"], changes["response"], changes["analysis"]) == ("Succeeded", "4", "2+2")
    assert changes["usage"] == {"promptTokens": 10, "completionTokens": 20, "totalTokens": 30}
    assert changes["timeToFirstTokenSeconds"] == 0.5
    assert changes["tokensPerSecond"] == 10.0
    assert changes["completionTime"] == "2026-12-07T03:00:05Z"
    assert changes["duration"] == "5.0s"
    assert changes["reasoningLevel"] == "high"
    assert done.remove == ("lease",)

    cut = _result(ParsedOutput(recovered=True, error="unexpected token", raw_text="<|x|>"))
    cut_outcome = cut.outcome(REQUEST, max_model_len=4096)
    failed = lifecycle.answered(
        held,
        reasoning_level="high",
        result=cut,
        outcome=cut_outcome,
        output=layout(cut_outcome.texts),
        saved=["j-output-a1"],
        now=datetime.datetime(2026, 12, 7, 3, 0, 5, tzinfo=datetime.UTC),
    )
    assert failed.changes["phase"] == "Failed"
    assert failed.event is not None
    assert failed.event[:2] == ("Warning", "MalformedOutput")
    assert failed.changes["outputRef"]["configMapName"] == "j-output-a1"
    assert failed.changes["message"].endswith("; the full text is in ConfigMap j-output-a1")


def test_a_heartbeat_reports_the_tokens_so_far() -> None:
    assert lifecycle.heartbeat(Progress(prompt_tokens=5, tokens=7, channel="analysis")) == {
        "usage": {"promptTokens": 5, "completionTokens": 7, "totalTokens": 12},
        "message": "generating: 7 tokens so far (analysis channel)",
    }
