"""What a failed engine call means for the request, decided once for the sidecar's
InferenceJobs and the batch workers' lines: refused for good, the platform's doing (asked
again, never charged), or a charged failure (tried again until the request's budget is
spent). The callers do the I/O (whether the engine is healthy, the waits, the writes)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from gptoss_operator.engine.client import PLATFORM_RETRY_LIMIT, EngineError
from gptoss_operator.engine.outcome import rejection_reason


class Verdict(Enum):
    REJECTED = "rejected"  # the engine refused the request itself: fail it, no retry
    ENGINE_DOWN = "engine-down"  # the engine is not serving: wait for it, not charged
    ASK_AGAIN = "ask-again"  # cut or lost on the way: ask again, not charged
    RETRY = "retry"  # a failure the request is charged for, within its budget
    EXHAUSTED = "exhausted"  # charged failures reached the budget: fail it


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str = ""  # for REJECTED: PromptTooLong or EngineRejected
    message: str = ""


def decide(
    error: EngineError,
    *,
    engine_healthy: bool | None,
    platform_retries: int,
    charged: int,
    max_attempts: int,
    prompt_tokens: int,
    max_model_len: int | None,
) -> Decision:
    """``engine_healthy`` is asked only for a retryable error (None otherwise);
    ``platform_retries`` counts the uncharged asks so far; ``charged`` the charged
    failures, this one included if it is charged."""
    if not error.retryable:
        reason, message = rejection_reason(error.message, prompt_tokens, max_model_len)
        return Decision(Verdict.REJECTED, reason, message)
    if engine_healthy is False:
        return Decision(Verdict.ENGINE_DOWN, message=error.message)
    if error.platform and platform_retries < PLATFORM_RETRY_LIMIT:
        return Decision(Verdict.ASK_AGAIN, message=error.message)
    if charged >= max_attempts:
        return Decision(
            Verdict.EXHAUSTED,
            message=f"{charged} attempts failed; last error: {error.message}",
        )
    return Decision(Verdict.RETRY, message=error.message)
