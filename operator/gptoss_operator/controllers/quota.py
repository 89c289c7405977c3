"""Which tenants of which models are at one of their limits now, and why: the reason the
operator gives their waiting jobs (QuotaExceeded). The sidecars hold the same jobs back by
the same rule (core.fair_share) from their own watch."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable

from gptoss_operator.api.conditions import parse_time
from gptoss_operator.api.job import FINISHED_PHASES, Phase
from gptoss_operator.controllers.facts import JobFacts, ModelFacts
from gptoss_operator.core.fair_share import (
    RATE_WINDOW_SECONDS,
    ShareLedger,
    TenantLimits,
    over_limit,
)

ModelKey = tuple[str, str]


def tenant_of(model: ModelFacts | None, namespace: str) -> str:
    return namespace if model is None else model.policy.tenant_of(namespace).name


def quota_exceeded(
    jobs: Iterable[JobFacts],
    model_of: Callable[[ModelKey], ModelFacts | None],
    now: datetime.datetime,
) -> dict[tuple[ModelKey, str], str]:
    """{(model, tenant): why} for each tenant at a limit of a model that sets any."""
    ledgers: dict[ModelKey, ShareLedger] = {}
    limited: dict[ModelKey, dict[str, TenantLimits]] = {}
    wall = now.timestamp()
    for job in jobs:
        model = model_of(job.model_key)
        if model is None or not model.policy.tenants:
            continue
        if job.model_key not in limited:
            limited[job.model_key] = {
                tenant.name: TenantLimits(
                    tenant.weight, tenant.maxJobsInFlight, tenant.tokensPerMinute
                )
                for tenant in model.policy.tenants
                if tenant.maxJobsInFlight is not None or tenant.tokensPerMinute is not None
            }
        tenant = tenant_of(model, job.namespace)
        if tenant not in limited[job.model_key]:
            continue
        ledger = ledgers.setdefault(job.model_key, ShareLedger())
        key = f"{job.namespace}/{job.name}"
        if job.phase == Phase.RUNNING.value:
            ledger.running(key, tenant, float(job.max_tokens))
        elif job.phase in FINISHED_PHASES:
            finished = parse_time(job.completion_time)
            if finished is not None and wall - finished.timestamp() < RATE_WINDOW_SECONDS:
                ledger.finished(key, tenant, job.total_tokens, finished.timestamp(), wall)
    reasons: dict[tuple[ModelKey, str], str] = {}
    for model_key, tenants in limited.items():
        ledger = ledgers.get(model_key, ShareLedger())
        for tenant, limits in tenants.items():
            if why := over_limit(ledger, tenant, limits, wall):
                reasons[(model_key, tenant)] = why
    return reasons
