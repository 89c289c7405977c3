"""The operator's part in InferenceJobs: queue state, lost workers, deadlines, TTL.

Sidecars claim and run jobs; the operator looks after everything around them:

- a job for a missing or not-serving model stays Pending with a condition that says why
  (ModelNotFound, WaitingForModel, ModelWaking), never silently. A model serves while any replica is
  ready, so one of N replicas restarting rewrites no job;
- a Running job whose lease lapsed (its pod died) goes back to Pending, with the attempt
  counted, until ``backoffLimit`` is spent. A lease's age is how long the operator has
  seen it unchanged, by the operator's own clock (:class:`LeaseClock`): the sidecar's
  renewTime is compared with nothing, so clocks that disagree cause no false requeue and
  hide no dead worker;
- ``activeDeadlineSeconds`` fails jobs still queued; ``ttlSecondsAfterFinished`` deletes
  finished ones;
- each model's ``status.queue`` counts its Pending and Running jobs.

Decisions are pure (:func:`decide`) over small facts the operator keeps in memory from
its watch (a kopf index), so a pass over thousands of jobs costs no API reads.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.types import PatchType

from gptoss_operator.api.conditions import parse_time, timestamp
from gptoss_operator.api.job import FINISHED_PHASES, Phase
from gptoss_operator.api.job_status import deadline_passed, queued, with_conditions
from gptoss_operator.api.model import Phase as ModelPhase
from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource
from gptoss_operator.controllers.facts import (
    WAKING,
    BatchFacts,
    JobFacts,
    ModelFacts,
    lease_token,
    queue_counts,
    tenant_counts,
)
from gptoss_operator.controllers.quota import RESERVED, QuotaPlan, plan_quota, tenant_of
from gptoss_operator.controllers.tenancy import TenantBindings
from gptoss_operator.controllers.usage import UsageMeter
from gptoss_operator.core import metrics
from gptoss_operator.core.kube import is_status
from gptoss_operator.core.retry import is_transient

log = logging.getLogger(__name__)


# Reasons a Running job went back to Pending; they say more than "Queued" does.
REQUEUE_REASONS = ("WorkerLost", "WorkerShutdown", "EngineUnavailable")
# A reservation written counts this long at most before the index shows it.
RESERVING_SECONDS = 30.0
# While a pass writes many jobs, the models' queues are counted again this often.
RECOUNT_SECONDS = 1.0


@dataclass(frozen=True)
class Action:
    kind: str  # "status" (set status fields), "delete"
    reason: str = ""
    status: dict[str, Any] | None = None
    remove: tuple[str, ...] = ()


def decide(
    facts: JobFacts,
    model_phase: str | None,
    now: datetime.datetime,
    lease_age: float | None = None,
    *,
    access_denied: bool = False,
    over_quota: str | None = None,
    reserve: bool = False,
) -> Action | None:
    """What, if anything, to do with a job now.

    ``lease_age``: seconds the operator has seen a Running job's lease unchanged (None:
    not observed yet, so not lapsed). ``access_denied``: the model's spec.access leaves
    the job's namespace out. ``over_quota``: why the job's tenant is at a limit;
    ``reserve``: a slot of its tenant's maxJobsInFlight is the job's now.
    """
    status = dict(facts.status)
    finished = facts.phase in FINISHED_PHASES
    if finished:
        done_at = parse_time(facts.completion_time)
        ttl = facts.ttl_seconds_after_finished
        if ttl is not None and done_at is not None and (now - done_at).total_seconds() >= ttl:
            return Action("delete", "TTLExpired")
        return None
    if facts.phase == Phase.RUNNING.value:
        duration = float((status.get("lease") or {}).get("durationSeconds", 30))
        if lease_age is None or lease_age <= duration:
            return None
        worker = facts.worker or "the worker"
        if deadline_passed(facts.created, facts.active_deadline_seconds, now):
            return _fail(
                facts,
                status,
                "DeadlineExceeded",
                f"activeDeadlineSeconds ({facts.active_deadline_seconds}) passed "
                f"after {worker} stopped renewing its lease",
            )
        if facts.charged_attempts >= facts.backoff_limit + 1:
            return _fail(
                facts,
                status,
                "BackoffLimitExceeded",
                f"{worker} stopped renewing its lease on attempt {facts.attempts}; "
                f"backoffLimit ({facts.backoff_limit}) reached",
            )
        requeued = queued(
            status,
            "WorkerLost",
            f"{worker} stopped renewing its lease during attempt {facts.attempts}; "
            "requeued for another worker",
            facts.generation,
        )
        requeued.pop("lease", None)
        return Action("status", "WorkerLost", requeued, remove=("lease",))
    # Pending.
    if facts.spec_problem is not None:
        return _fail(facts, status, "InvalidSpec", facts.spec_problem)
    if deadline_passed(facts.created, facts.active_deadline_seconds, now):
        return _fail(
            facts,
            status,
            "DeadlineExceeded",
            f"activeDeadlineSeconds ({facts.active_deadline_seconds}) passed while the "
            "job was queued",
        )
    model_namespace, _ = facts.model_key
    if model_phase is None:
        reason, message = (
            "ModelNotFound",
            (
                f"GptOssModel {facts.model!r} does not exist in namespace {model_namespace}; "
                "the job waits for it"
            ),
        )
    elif access_denied:
        reason, message = (
            "AccessDenied",
            (
                f"spec.modelRef: GptOssModel {model_namespace}/{facts.model} does not serve "
                f"namespace {facts.namespace} (its spec.access.namespaces); the job waits "
                "until it does"
            ),
        )
    elif model_phase == WAKING:
        reason, message = (
            "ModelWaking",
            (
                f"GptOssModel {facts.model!r} is waking from zero pods for its queue; the "
                "job runs once a pod has loaded the weights"
            ),
        )
    elif model_phase != ModelPhase.READY.value:
        reason, message = (
            "WaitingForModel",
            (f"GptOssModel {facts.model!r} is {model_phase}; the job runs once it is Ready"),
        )
    elif reserve:
        reason, message = (
            RESERVED,
            "a slot of its tenant's maxJobsInFlight is reserved for it; a worker of "
            f"GptOssModel {facts.model!r} takes it next",
        )
    elif facts.scheduled_reason == RESERVED:
        return None  # its slot stays its own until a worker takes it
    elif over_quota is not None:
        reason, message = "QuotaExceeded", f"{over_quota}; the job waits for its turn"
    else:
        # Waiting for a worker of a serving model says nothing new: no write (the model's
        # status.queue counts the job). Only a job that said something else (the model
        # was missing or not ready) is told it is queued now. One held back by its
        # tenant's limit keeps saying so until a worker claims it: a tenant at its limit
        # drops under it for a moment whenever one of its jobs ends.
        if facts.scheduled_reason in (None, "Queued", "QuotaExceeded", *REQUEUE_REASONS):
            return None
        reason, message = "Queued", f"waiting for a worker of GptOssModel {facts.model!r}"
    if facts.scheduled_reason == reason:
        return None
    return Action("status", reason, queued(status, reason, message, facts.generation))


def _fail(facts: JobFacts, status: dict[str, Any], reason: str, message: str) -> Action:
    failed = with_conditions(status, Phase.FAILED, reason, message, facts.generation)
    failed.pop("lease", None)
    failed["completionTime"] = timestamp()
    failed["finishReason"] = "error"
    return Action("status", reason, failed, remove=("lease",))


class LeaseClock:
    """How long each Running job's lease has stayed unchanged, by this process's clock.

    A lease changes when its holder renews it (renewTime), or when a claim or retry
    replaces it (worker, attempts, acquireTime). Observations start when the operator
    does: after a restart a dead worker's job is requeued one lease duration later.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[tuple[Any, ...], float]] = {}

    def age(self, job: JobFacts) -> float:
        token = job.lease_token
        key = (job.namespace, job.name)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is None or seen[0] != token:
            self._seen[key] = (token, now)
            return 0.0
        return now - seen[1]

    def restart_all(self) -> None:
        """Start every lease's age over: what was seen may be stale (the apiserver was
        out of reach, so renewals could not be seen either)."""
        now = self.clock()
        self._seen = {key: (token, now) for key, (token, _) in self._seen.items()}

    def keep_only(self, running: Iterable[JobFacts]) -> None:
        """Forget jobs that are no longer Running."""
        keys = {(job.namespace, job.name) for job in running}
        for key in set(self._seen) - keys:
            del self._seen[key]


class JobJanitor:
    """Applies :func:`decide` to every known job when something may have changed.

    A pass over every job runs when the indexes changed (:meth:`touch`, called for every
    watch event), when the earliest moment a decision can change falls due (a lease
    lapsing, a deadline, a TTL), and at least every ``full_pass_seconds``. A queue of
    thousands of waiting jobs thus costs nothing while it waits.
    """

    def __init__(
        self,
        client: AsyncClient,
        jobs: Mapping[Any, Iterable[JobFacts]],
        models: Mapping[Any, Iterable[ModelFacts]],
        interval: float = 1.0,
        indexed: asyncio.Event | None = None,
        full_pass_seconds: float = 30.0,
        tenants: TenantBindings | None = None,
        batches: Mapping[Any, Iterable[BatchFacts]] | None = None,
        batch_identities: TenantBindings | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.client = client
        self.jobs = jobs
        self.models = models
        self.interval = interval
        # Set once the indexes hold what the apiserver has: acting on half-filled indexes
        # would write ModelNotFound to jobs whose model is not indexed yet.
        self.indexed = indexed
        self.full_pass_seconds = full_pass_seconds
        self.clock = clock  # paces passes and ages leases
        self.wall_clock = wall_clock  # compared with the apiserver's timestamps
        self.leases = LeaseClock(clock)
        self._unreachable = False  # the last live read failed for the apiserver's sake
        # What each model's status was last given: {"queue": ..., "tenants": [...]}.
        self._queues: dict[tuple[str, str], dict[str, Any]] = {}
        self.tenants = tenants
        # The unfinished InferenceBatches by model, and the identities of their shards in
        # namespaces other than the model's.
        # The index itself, even while it is empty (an empty one is falsy).
        self.batches = batches if batches is not None else {}
        self.batch_identities = batch_identities
        self.usage = UsageMeter(wall_clock())
        # Jobs this operator reserved a quota slot for, by when (self.clock).
        self._reserving: dict[tuple[str, str], float] = {}
        self._changed = True
        self._next_due = 0.0  # on self.clock
        self._last_pass = -math.inf

    def touch(self) -> None:
        """Something in the indexes changed: look at every job on the next step."""
        self._changed = True

    async def run_forever(self) -> None:
        if self.indexed is not None:
            await self.indexed.wait()
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("InferenceJob housekeeping pass failed")
            await asyncio.sleep(self.interval)

    async def step(self) -> None:
        """One pass over every job, if anything may have changed since the last one."""
        now = self.clock()
        if (
            self._changed
            or now >= self._next_due
            or now - self._last_pass >= self.full_pass_seconds
        ):
            self._changed = False
            self._last_pass = now
            try:
                await self.tick()
            except BaseException:
                self._changed = True  # not done: the next step tries again
                raise

    def _model(self, key: tuple[str, str]) -> ModelFacts | None:
        facts = list(self.models.get(key, []))
        return facts[0] if facts else None

    def _model_phase(self, key: tuple[str, str]) -> str | None:
        model = self._model(key)
        return model.queue_phase if model is not None else None

    def _serves(self, job: JobFacts) -> bool:
        """Whether the job's model (when known) serves the job's namespace."""
        model = self._model(job.model_key)
        return model is None or model.serves(job.namespace, job.model_key[0])

    async def tick(self) -> None:
        """Count the queues first (one write per model), then act on each job, counting
        again now and then: a pass over thousands of newly due jobs takes a while."""
        now = self.wall_clock()
        everything = self._all_jobs()
        self.usage.observe(
            everything, lambda job: tenant_of(self._model(job.model_key), job.namespace)
        )
        await self._publish_queues(everything)
        counted = self.clock()
        running = [job for job in everything if job.phase == Phase.RUNNING.value]
        self.leases.keep_only(running)
        next_due = math.inf
        quota = self._plan_quota(everything, now)
        for job in everything:
            age = self.leases.age(job) if job.phase == Phase.RUNNING.value else None
            next_due = min(next_due, self._due_in(job, now, age))
            phase = self._model_phase(job.model_key)
            action = decide(
                job,
                phase,
                now,
                age,
                access_denied=not self._serves(job),
                over_quota=quota.waits(job, self._model(job.model_key)),
                reserve=(job.namespace, job.name) in quota.reserve,
            )
            if action is None:
                continue
            if job.phase == Phase.RUNNING.value and not await self._lease_still_lapsed(job):
                continue
            applied = await self._apply(job, action)
            if applied and action.reason == RESERVED:
                self._reserving[(job.namespace, job.name)] = self.clock()
            if self.clock() - counted >= RECOUNT_SECONDS:
                await self._publish_queues(self._all_jobs())
                counted = self.clock()
        self._next_due = self.clock() + next_due
        await self._publish_queues(self._all_jobs())

    def _all_jobs(self) -> list[JobFacts]:
        return [job for store in list(self.jobs.values()) for job in store]

    @staticmethod
    def _due_in(job: JobFacts, now: datetime.datetime, lease_age: float | None) -> float:
        """Seconds until a decision about the job may change with time alone."""
        if job.phase == Phase.RUNNING.value:
            duration = float((job.status.get("lease") or {}).get("durationSeconds", 30))
            return max(0.0, duration - (lease_age or 0.0)) + 0.001
        seconds: float | None
        if job.phase in FINISHED_PHASES:
            start, seconds = parse_time(job.completion_time), job.ttl_seconds_after_finished
        else:
            start, seconds = parse_time(job.created), job.active_deadline_seconds
        if start is None or seconds is None:
            return math.inf
        return max(0.0, seconds - (now - start).total_seconds())

    async def _lease_still_lapsed(self, job: JobFacts) -> bool:
        """Before taking a job from its worker, read it live: the index may lag behind
        renewals. When the apiserver cannot be read, renewals could not be made or seen
        either, so every lease gets its full duration again once it can."""
        try:
            live = await self.client.get(InferenceJobResource, job.name, namespace=job.namespace)
        except Exception as error:
            if is_transient(error):
                log.warning("the apiserver is out of reach (%s): leases start over", error)
                self.leases.restart_all()
                self._unreachable = True
            elif not is_status(error, 404):
                log.warning("could not read %s/%s: %s", job.namespace, job.name, error)
            return False
        if self._unreachable:
            # Back after an outage: workers get a whole lease duration from now to renew.
            self._unreachable = False
            self.leases.restart_all()
            return False
        return lease_token(dict(live.to_dict().get("status") or {})) == job.lease_token

    def _plan_quota(self, jobs: list[JobFacts], now: datetime.datetime) -> QuotaPlan:
        """The tenants' reservations and holds; a reservation this operator wrote counts
        until its index shows it (or RESERVING_SECONDS pass)."""
        shown = {
            (job.namespace, job.name)
            for job in jobs
            if job.phase != Phase.PENDING.value or job.scheduled_reason == RESERVED
        }
        present = {(job.namespace, job.name) for job in jobs}
        horizon = self.clock() - RESERVING_SECONDS
        self._reserving = {
            key: at
            for key, at in self._reserving.items()
            if key in present and key not in shown and at > horizon
        }
        return plan_quota(jobs, self._model, now, set(self._reserving))

    async def _apply(self, job: JobFacts, action: Action) -> bool:
        """Carry out ``action``; whether it was (a job that changed meanwhile is looked
        at again on the next pass)."""
        try:
            if action.kind == "delete":
                await self.client.delete(InferenceJobResource, job.name, namespace=job.namespace)
                log.info("deleted %s/%s: ttlSecondsAfterFinished passed", job.namespace, job.name)
                metrics.count("job_actions", reason=action.reason)
                return True
            ops = status_patch(job, action)
            await self.client.patch(
                InferenceJobResource.Status,
                job.name,
                ops,
                namespace=job.namespace,
                patch_type=PatchType.JSON,
            )
            log.info("%s/%s: %s", job.namespace, job.name, action.reason)
            metrics.count("job_actions", reason=action.reason)
            return True
        except ApiError as error:
            if error.status.code not in (404, 409, 422):
                raise
            # The job changed since we saw it (a sidecar claimed it): look again next pass.
            return False

    async def _publish_queues(self, jobs: list[JobFacts]) -> None:
        """Each model's queue, tenants and batches, in its status: the tenants'
        RoleBindings are made before a tenant is listed (the sidecars then watch its
        namespace), and go once it is not; so do the identities of batches' shards in
        other namespaces."""
        usage = self._usage(jobs)
        batches = {key: list(found) for key, found in list(self.batches.items())}
        for key in (set(self._queues) | set(batches)) - set(usage):
            usage[key] = {"queue": {"pending": 0, "running": 0}, "tenants": []}
        for key, entry in usage.items():
            entry["batches"] = sorted(
                (b.gateway_entry() for b in batches.get(key, []) if b.key_sha256),
                key=lambda e: (e["namespace"], e["name"]),
            )
        wanted = {
            key: {tenant["namespace"] for tenant in entry["tenants"]}
            for key, entry in usage.items()
            if self._model(key) is not None
        }
        shards = {
            key: {b.namespace for b in batches.get(key, []) if b.namespace != key[0]}
            for key in usage
            if self._model(key) is not None
        }
        if self.tenants is not None:
            # A namespace the sidecars could not act in is not listed to them.
            for key, namespace in await self.tenants.bind(wanted):
                tenants = usage[key]["tenants"]
                usage[key]["tenants"] = [t for t in tenants if t["namespace"] != namespace]
        if self.batch_identities is not None:
            await self.batch_identities.bind(shards)
        for (namespace, model), entry in usage.items():
            if self._queues.get((namespace, model)) == entry:
                continue
            if self._model((namespace, model)) is None:
                self._queues[(namespace, model)] = entry
                continue
            try:
                await self.client.patch(
                    GptOssModelResource.Status,
                    model,
                    {"status": entry},
                    namespace=namespace,
                    patch_type=PatchType.MERGE,
                )
                self._queues[(namespace, model)] = entry
            except ApiError as error:
                if error.status.code != 404:
                    raise
        if self.tenants is not None:
            await self.tenants.unbind(wanted)
        if self.batch_identities is not None:
            await self.batch_identities.unbind(shards)

    def _usage(self, jobs: list[JobFacts]) -> dict[tuple[str, str], dict[str, Any]]:
        """{model: {"queue": counts, "tenants": [{namespace, tenant, pending, running}]}}:
        the namespaces with unfinished jobs the model serves, and their tenants."""
        queues = queue_counts(jobs)
        tenants = tenant_counts([job for job in jobs if self._serves(job)])
        return {
            key: {
                "queue": queue,
                "tenants": [
                    {
                        "namespace": namespace,
                        "tenant": tenant_of(self._model(key), namespace),
                        **counts,
                    }
                    for namespace, counts in sorted(tenants.get(key, {}).items())
                ],
            }
            for key, queue in queues.items()
        }


def status_patch(job: JobFacts, action: Action) -> list[dict[str, Any]]:
    """A JSON Patch that applies the action only to the version of the job it saw."""
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": job.resource_version}
    ]
    if not job.has_status:
        ops.append({"op": "add", "path": "/status", "value": {}})
    for key, value in (action.status or {}).items():
        if value is not None:
            ops.append({"op": "add", "path": f"/status/{key}", "value": value})
    ops += [
        {"op": "remove", "path": f"/status/{key}"} for key in action.remove if key in job.status
    ]
    return ops
