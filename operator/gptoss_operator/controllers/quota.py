"""Tenants' limits, as the operator keeps them.

``maxJobsInFlight`` is kept strictly, across all the sidecars of a model, the way Kueue
admits workloads: a job of a tenant with that limit is claimable only once the operator
has reserved one of the tenant's slots for it (reason ``QuotaReserved`` on its Scheduled
condition), and the operator, one writer, reserves no more than the limit less the
tenant's jobs running or reserved already, the highest priority and oldest first.

A tenant at a limit (its slots all running or reserved, or its tokensPerMinute used) has
its other waiting jobs told why (``QuotaExceeded``), and they add no demand for replicas.
The sidecars hold tokensPerMinute back by the same rule (core.fair_share) from their own
watch.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection, Iterable

from gptoss_operator.api.conditions import parse_time
from gptoss_operator.api.job import FINISHED_PHASES, Phase
from gptoss_operator.controllers.facts import JobFacts, ModelFacts
from gptoss_operator.core.fair_share import (
    RATE_WINDOW_SECONDS,
    ShareLedger,
    TenantLimits,
    limits_of,
    over_limit,
)

ModelKey = tuple[str, str]
JobKey = tuple[str, str]
RESERVED = "QuotaReserved"


def tenant_of(model: ModelFacts | None, namespace: str) -> str:
    return namespace if model is None else model.policy.tenant_of(namespace).name


class QuotaPlan:
    """What a pass over all jobs decides about limits: the jobs to reserve a slot for
    now, and why each tenant at a limit waits."""

    def __init__(self, reserve: set[JobKey], held: dict[tuple[ModelKey, str], str]) -> None:
        self.reserve = reserve
        self.held = held

    def waits(self, job: JobFacts, model: ModelFacts | None) -> str | None:
        """Why ``job``'s tenant holds it back, None if it does not."""
        return self.held.get((job.model_key, tenant_of(model, job.namespace)))


def plan_quota(
    jobs: Iterable[JobFacts],
    model_of: Callable[[ModelKey], ModelFacts | None],
    now: datetime.datetime,
    reserving: Collection[JobKey] = (),
) -> QuotaPlan:
    """Reservations and holds for every tenant with limits. ``reserving``: jobs reserved
    by writes the index may not show yet."""
    ledgers: dict[ModelKey, ShareLedger] = {}
    limited: dict[ModelKey, dict[str, TenantLimits]] = {}
    waiting: dict[tuple[ModelKey, str], list[JobFacts]] = {}
    wall = now.timestamp()
    for job in jobs:
        model = model_of(job.model_key)
        if model is None or not model.policy.tenants:
            continue
        if job.model_key not in limited:
            limited[job.model_key] = {
                tenant.name: limits_of(model.policy, tenant.name)
                for tenant in model.policy.tenants
                if tenant.maxJobsInFlight is not None or tenant.tokensPerMinute is not None
            }
        tenant = tenant_of(model, job.namespace)
        if tenant not in limited[job.model_key]:
            continue
        ledger = ledgers.setdefault(job.model_key, ShareLedger())
        key = f"{job.namespace}/{job.name}"
        reserved = job.scheduled_reason == RESERVED or (job.namespace, job.name) in reserving
        if job.phase == Phase.RUNNING.value or (job.phase == Phase.PENDING.value and reserved):
            ledger.running(key, tenant, float(job.max_tokens))  # holds a slot
        elif job.phase == Phase.PENDING.value:
            waiting.setdefault((job.model_key, tenant), []).append(job)
        elif job.phase in FINISHED_PHASES:
            finished = parse_time(job.completion_time)
            if finished is not None and wall - finished.timestamp() < RATE_WINDOW_SECONDS:
                ledger.finished(key, tenant, job.total_tokens, finished.timestamp(), wall)
    reserve: set[JobKey] = set()
    held: dict[tuple[ModelKey, str], str] = {}
    for model_key, tenants in limited.items():
        ledger = ledgers.get(model_key, ShareLedger())
        for tenant, limits in tenants.items():
            queue = sorted(
                waiting.get((model_key, tenant), []),
                key=lambda job: (-job.priority, job.created or "", job.namespace, job.name),
            )
            if limits.max_jobs_in_flight is not None and not over_limit(
                ledger, tenant, limits, wall
            ):
                room = limits.max_jobs_in_flight - ledger.in_flight(tenant)
                for job in queue[:room]:
                    reserve.add((job.namespace, job.name))
                    ledger.running(f"{job.namespace}/{job.name}", tenant, 0.0)
            if why := over_limit(ledger, tenant, limits, wall):
                held[(model_key, tenant)] = why
    return QuotaPlan(reserve, held)
