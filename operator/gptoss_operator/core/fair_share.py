"""Fair share among a model's tenants, in tokens, and their limits: what the sidecars'
claim order asks before it takes a job.

Every sidecar of a model watches all of the model's jobs, so each keeps the same ledger
from the same events: the tokens each tenant's finished jobs used (decayed, so the share
follows recent use), the jobs each has running on any replica, and the tokens each used
in the last minute. A free slot goes to the tenant whose use, divided by its weight, is
the least; a tenant at one of its limits gets none until it is under it again. The
operator keeps a ledger of its own from its index of jobs, to tell the jobs of a tenant at
a limit why they wait (QuotaExceeded).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gptoss_operator.api.model import Access

log = logging.getLogger(__name__)

# Seconds after which a finished job counts half as much toward its tenant's use.
HALF_LIFE_SECONDS = 60.0
# The window of a tenant's tokensPerMinute.
RATE_WINDOW_SECONDS = 60.0
# Jobs finished longer ago than this are forgotten (they count for nothing by then).
FORGET_SECONDS = 20 * HALF_LIFE_SECONDS


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's weight and limits, as the model's spec.access gives them."""

    weight: int = 1
    max_jobs_in_flight: int | None = None
    tokens_per_minute: int | None = None


def read_access(value: Any) -> Access:
    """A live model's spec.access (its unknown fields ignored); all namespaces alike, of
    weight 1 and without limits, when it cannot be read."""
    try:
        return Access.model_validate(value or {})
    except ValidationError as error:
        log.warning("cannot read a model's spec.access (%s); its tenants share alike", error)
        return Access()


def limits_of(access: Access, tenant: str) -> TenantLimits:
    """``tenant``'s weight and limits; a namespace in no tenant has the defaults."""
    group = next((t for t in access.tenants or [] if t.name == tenant), None)
    if group is None:
        return TenantLimits()
    return TenantLimits(group.weight, group.maxJobsInFlight, group.tokensPerMinute)


@dataclass
class _Use:
    decayed: float = 0.0  # tokens of finished jobs, decayed to ``at``
    at: float = 0.0
    jobs: float = 0.0  # finished jobs, decayed alike (for the average job's size)
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (finished at, tokens)


class ShareLedger:
    """What each tenant of one model used and runs, from the model's job events.

    Times are wall-clock seconds (a finished job's completionTime is the writer's clock,
    and every sidecar reads the same one)."""

    def __init__(self) -> None:
        self._use: dict[str, _Use] = {}
        # Running jobs, anywhere: key -> (tenant, estimated tokens).
        self._running: dict[str, tuple[str, float]] = {}
        # Finished jobs counted, and when they finished (so none counts twice).
        self._counted: dict[str, float] = {}

    # ----------------------------------------------------------------- events
    def running(self, key: str, tenant: str, estimate: float) -> None:
        """A job of ``tenant`` runs (on any replica); until it ends, its use is guessed
        (once: a renewal changes nothing)."""
        self._running.setdefault(key, (tenant, estimate))

    def stopped(self, key: str) -> bool:
        """A job runs no more without having finished (requeued, deleted, its claim
        lost); whether it was running."""
        return self._running.pop(key, None) is not None

    def finished(self, key: str, tenant: str, tokens: int, at: float, now: float) -> None:
        """A job of ``tenant`` finished at ``at``, having used ``tokens``."""
        self._running.pop(key, None)
        if key in self._counted or now - at > FORGET_SECONDS:
            return
        self._counted[key] = at
        use = self._use.setdefault(tenant, _Use(at=now))
        self._decay(use, now)
        factor = 0.5 ** (max(0.0, now - at) / HALF_LIFE_SECONDS)
        use.decayed += tokens * factor
        use.jobs += factor
        if now - at < RATE_WINDOW_SECONDS:
            use.recent.append((at, tokens))
        self._forget(now)

    # ----------------------------------------------------------------- questions
    def in_flight(self, tenant: str) -> int:
        return sum(1 for owner, _ in self._running.values() if owner == tenant)

    def usage(self, tenant: str, now: float) -> float:
        """Tokens ``tenant`` used lately (decayed) plus those its running jobs will use."""
        use = self._use.get(tenant)
        finished = 0.0
        if use is not None:
            self._decay(use, now)
            finished = use.decayed
        return finished + sum(guess for owner, guess in self._running.values() if owner == tenant)

    def average_job(self, tenant: str) -> float | None:
        """Tokens of ``tenant``'s average recent job; None before any finished."""
        use = self._use.get(tenant)
        if use is None or use.jobs < 1e-6:
            return None
        return use.decayed / use.jobs

    def tokens_last_minute(self, tenant: str, now: float) -> int:
        use = self._use.get(tenant)
        if use is None:
            return 0
        while use.recent and now - use.recent[0][0] >= RATE_WINDOW_SECONDS:
            use.recent.popleft()
        return sum(tokens for _, tokens in use.recent)

    def rate_frees_at(self, tenant: str, limit: int, now: float) -> float | None:
        """When ``tenant``'s last minute falls under ``limit`` tokens; None if it is."""
        used = self.tokens_last_minute(tenant, now)
        use = self._use.get(tenant)
        if used < limit or use is None:
            return None
        for at, tokens in sorted(use.recent):
            used -= tokens
            if used < limit:
                return at + RATE_WINDOW_SECONDS
        return now

    # ----------------------------------------------------------------- internals
    @staticmethod
    def _decay(use: _Use, now: float) -> None:
        if now > use.at:
            factor = 0.5 ** ((now - use.at) / HALF_LIFE_SECONDS)
            use.decayed *= factor
            use.jobs *= factor
            use.at = now

    def _forget(self, now: float) -> None:
        if len(self._counted) < 4096:
            return
        for key in [k for k, at in self._counted.items() if now - at > FORGET_SECONDS]:
            del self._counted[key]


def over_limit(ledger: ShareLedger, tenant: str, limits: TenantLimits, now: float) -> str | None:
    """Why ``tenant`` may start no job now (a sentence), or None."""
    if limits.max_jobs_in_flight is not None:
        running = ledger.in_flight(tenant)
        if running >= limits.max_jobs_in_flight:
            return (
                f"tenant {tenant} has {running} jobs in flight, its limit "
                f"(maxJobsInFlight {limits.max_jobs_in_flight})"
            )
    if limits.tokens_per_minute is not None:
        used = ledger.tokens_last_minute(tenant, now)
        if used >= limits.tokens_per_minute:
            return (
                f"tenant {tenant} used {used} tokens in the last minute, its limit "
                f"(tokensPerMinute {limits.tokens_per_minute})"
            )
    return None


def fair_order(
    ledger: ShareLedger, tenants: Iterable[str], weight_of: dict[str, int], now: float
) -> list[str]:
    """``tenants`` in the order they are owed a slot: the least use per weight first (by
    name among equals, so every sidecar agrees)."""
    return sorted(
        tenants, key=lambda tenant: (ledger.usage(tenant, now) / weight_of.get(tenant, 1), tenant)
    )


def estimate(ledger: ShareLedger, tenant: str, max_tokens: int) -> float:
    """The tokens a job of ``tenant`` that has just started will use: the tenant's average
    job (prompts included); before any of its jobs finished, the most it may generate."""
    average = ledger.average_job(tenant)
    return float(max_tokens) if average is None else average
