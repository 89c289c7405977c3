"""The autoscaler's loop: samples each autoscaled model's load and applies
:func:`gptoss_operator.controllers.autoscale.decision.decide`.

The load comes from the operator's own indexes (no API reads): the model's Pending and
Running InferenceJobs, and vLLM's running and waiting requests when its pods' metrics
can be read. A decision is an Event on the model, a metric, and a reconcile that sets
the Deployment's replicas; the model reconciler asks :meth:`Autoscaler.replicas_for`
what count to apply, so the Deployment has one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gptoss_operator.api.common import API_VERSION
from gptoss_operator.api.conditions import now as wall_clock
from gptoss_operator.api.job import Phase
from gptoss_operator.api.model import KIND, Autoscaling, AutoscalingStatus
from gptoss_operator.controllers.autoscale.decision import (
    WOKEN,
    Decision,
    Load,
    Sample,
    decide,
    initial_replicas,
    record,
)
from gptoss_operator.controllers.facts import BatchFacts, JobFacts, ModelFacts, queue_counts
from gptoss_operator.controllers.quota import RESERVED, plan_quota
from gptoss_operator.core import metrics
from gptoss_operator.core.events import EventSink

log = logging.getLogger(__name__)

Apply = Callable[[str, str], Awaitable[None]]
# (namespace, model) -> vLLM's running + waiting requests over the model's pods.
EngineLoads = Callable[[str, str], int | None]


@dataclass
class ScalingState:
    """What the autoscaler knows of one model."""

    since: float  # when its history began
    history: list[Sample] = field(default_factory=list)
    desired: int | None = None  # None until the model's Deployment is first applied
    last: Decision | None = None
    last_time: datetime.datetime | None = None


class Autoscaler:
    def __init__(
        self,
        jobs: Mapping[Any, Iterable[JobFacts]],
        models: Mapping[Any, Iterable[ModelFacts]],
        interval: float,
        emit: EventSink,
        apply: Apply | None = None,
        engine_loads: EngineLoads | None = None,
        clock: Callable[[], float] = time.monotonic,
        batches: Mapping[Any, Iterable[BatchFacts]] | None = None,
    ) -> None:
        self.jobs = jobs
        # The index itself, even while it is empty (an empty one is falsy).
        self.batches = batches if batches is not None else {}
        self.models = models
        self.interval = interval
        self.emit = emit
        self.apply = apply
        self.engine_loads = engine_loads
        self.clock = clock
        self.states: dict[tuple[str, str], ScalingState] = {}
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Look again now (a job arrived: a model at zero wakes without waiting a tick)."""
        self._poked.set()

    def load(self, namespace: str, model: str) -> Load:
        """The model's work in flight, summed across its tenants; the queued jobs of a
        tenant at one of its limits are left out (more replicas would not run them)."""
        key = (namespace, model)
        jobs = list(self.jobs.get(key, []))
        facts = next(iter(list(self.models.get(key, []))), None)
        if facts is not None and facts.policy.tenants:
            plan = plan_quota(jobs, lambda _: facts, wall_clock())
            jobs = [
                job
                for job in jobs
                if job.phase != Phase.PENDING.value
                or job.scheduled_reason == RESERVED
                or (job.namespace, job.name) in plan.reserve
                or plan.waits(job, facts) is None
            ]
        queue = queue_counts(jobs).get(key, {})
        engine = self.engine_loads(namespace, model) if self.engine_loads else None
        batch = sum(batch.demand for batch in list(self.batches.get(key, [])))
        return Load(queue.get("pending", 0), queue.get("running", 0), engine, batch)

    def replicas_for(
        self,
        namespace: str,
        model: str,
        policy: Autoscaling,
        target: int,
        deployed: int | None,
    ) -> int:
        """The count the model's Deployment should have. The first time: what it has
        (the operator restarted), or the policy's start for a new Deployment."""
        state = self.states.setdefault((namespace, model), ScalingState(self.clock()))
        if state.desired is None:
            if deployed is not None:
                state.desired = deployed
            else:
                state.desired = initial_replicas(policy, target, self.load(namespace, model))
        return state.desired

    def status_of(self, namespace: str, model: str) -> AutoscalingStatus | None:
        """The model's status.autoscaling."""
        state = self.states.get((namespace, model))
        if state is None or state.desired is None:
            return None
        status = AutoscalingStatus(desiredReplicas=state.desired)
        if state.last is not None:
            status.lastScaleTime = state.last_time
            status.lastScaleReason = state.last.reason
            status.lastScaleMessage = state.last.message
        return status

    def waking(self, namespace: str, model: str) -> bool:
        state = self.states.get((namespace, model))
        return state is not None and state.last is not None and state.last.reason == WOKEN

    def forget(self, namespace: str, model: str) -> None:
        self.states.pop((namespace, model), None)
        metrics.set_gauge("model_desired_replicas", None, namespace=namespace, model=model)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaling pass failed")
            self._poked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), timeout=self.interval)

    async def tick(self) -> None:
        present: set[tuple[str, str]] = set()
        for key, values in list(self.models.items()):
            facts = next(iter(values), None)
            if facts is None or facts.autoscaling is None:
                continue
            present.add(key)
            await self._scale(key, facts, facts.autoscaling)
        for namespace, model in set(self.states) - present:
            self.forget(namespace, model)

    async def _scale(self, key: tuple[str, str], facts: ModelFacts, policy: Autoscaling) -> None:
        namespace, model = key
        state = self.states.setdefault(key, ScalingState(self.clock()))
        now = self.clock()
        keep = max(
            policy.scaleUpStabilizationSeconds,
            policy.scaleDownStabilizationSeconds,
            policy.scaleToZeroAfterSeconds,
        )
        record(state.history, Sample(now, self.load(namespace, model)), keep)
        if state.desired is None:
            return  # no Deployment yet: the reconciler sets the first count
        target = policy.target(facts.concurrency)
        decision = decide(policy, target, state.history, state.desired, now, state.since)
        if decision is not None:
            state.desired = decision.replicas
            state.last = decision
            state.last_time = wall_clock().replace(microsecond=0)
        metrics.set_gauge("model_desired_replicas", state.desired, namespace=namespace, model=model)
        if decision is None:
            return
        metrics.count("scaling_decisions", namespace=namespace, model=model, reason=decision.reason)
        log.info("%s/%s: %s: %s", namespace, model, decision.reason, decision.message)
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": model, "namespace": namespace, "uid": facts.uid},
        }
        await self.emit(body, "Normal", decision.reason, decision.message)
        if self.apply is not None:
            await self.apply(namespace, model)
