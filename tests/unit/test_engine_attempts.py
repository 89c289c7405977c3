"""One decision for a failed engine call, shared by the sidecar and the batch workers."""

from __future__ import annotations

from typing import Any

from gptoss_operator.engine.attempts import Verdict, decide
from gptoss_operator.engine.client import PLATFORM_RETRY_LIMIT, EngineError


def judge(error: EngineError, **given: Any) -> Verdict:
    facts: dict[str, Any] = {
        "engine_healthy": True if error.retryable else None,
        "platform_retries": 0,
        "charged": 1,
        "max_attempts": 3,
        "prompt_tokens": 10,
        "max_model_len": 100,
    }
    return decide(error, **{**facts, **given}).verdict


def test_a_refusal_is_final_and_names_the_prompt_when_it_is_too_long() -> None:
    refused = EngineError("400 bad request", status=400, retryable=False)
    assert judge(refused) is Verdict.REJECTED
    long = decide(
        refused,
        engine_healthy=None,
        platform_retries=0,
        charged=1,
        max_attempts=3,
        prompt_tokens=120,
        max_model_len=100,
    )
    assert long.reason == "PromptTooLong"
    assert "the prompt is 120 tokens" in long.message


def test_the_platforms_failures_are_never_charged_until_they_look_like_the_requests() -> None:
    cut = EngineError("stream cut", retryable=True, platform=True)
    assert judge(cut, engine_healthy=False) is Verdict.ENGINE_DOWN
    assert judge(cut, charged=99) is Verdict.ASK_AGAIN, "not charged, whatever the count"
    # A request that breaks its stream every time is charged in the end.
    assert judge(cut, platform_retries=PLATFORM_RETRY_LIMIT, charged=1) is Verdict.RETRY
    assert judge(cut, platform_retries=PLATFORM_RETRY_LIMIT, charged=3) is Verdict.EXHAUSTED


def test_charged_failures_retry_within_the_budget() -> None:
    failed = EngineError("500 internal", status=500, retryable=True)
    assert judge(failed, charged=1) is Verdict.RETRY
    assert judge(failed, charged=2) is Verdict.RETRY
    spent = decide(
        failed,
        engine_healthy=True,
        platform_retries=0,
        charged=3,
        max_attempts=3,
        prompt_tokens=10,
        max_model_len=None,
    )
    assert spent.verdict is Verdict.EXHAUSTED
    assert spent.message == "3 attempts failed; last error: 500 internal"
    assert judge(failed, engine_healthy=False, charged=3) is Verdict.ENGINE_DOWN
