"""The sidecar's main loop: find Pending jobs for this model, claim them, run them.

Up to ``concurrency`` jobs run at once so vLLM can batch them. Each running job renews
its lease (and reports progress) every few seconds; a job whose lease lapses (the pod
died) is requeued by the operator and claimed by another worker.

Jobs are found by a watch, and every ``resync_seconds`` by a list of the model's
unfinished jobs: a watch whose connection went half-open delivers nothing and reports no
error, so when the list finds Pending jobs the watch never delivered, the watch is
restarted.

This module does the I/O; what each event of an attempt means for the job's status is
decided by ``lifecycle`` (and an engine error by ``engine.attempts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import heapq
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from lightkube import AsyncClient
from lightkube.operators import not_in
from lightkube.types import OnErrorAction, OnErrorResult

from gptoss_operator.api.conditions import parse_time, timestamp
from gptoss_operator.api.job import FINISHED_PHASES, InferenceJobSpec, Phase, model_key_of
from gptoss_operator.api.job_output import layout
from gptoss_operator.api.json_schema import spec_problem
from gptoss_operator.api.model import Access, tenant_namespaces
from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource
from gptoss_operator.core.fair_share import (
    ShareLedger,
    TenantLimits,
    estimate,
    fair_order,
    limits_of,
    over_limit,
    read_access,
)
from gptoss_operator.engine.attempts import Verdict, decide
from gptoss_operator.engine.client import (
    QUIET_SECONDS,
    EngineClient,
    EngineError,
    SamplingParams,
)
from gptoss_operator.engine.generation import EngineGate, Progress, RunResult, generate
from gptoss_operator.engine.harmony import Harmony
from gptoss_operator.engine.render import PromptRenderer
from gptoss_operator.engine.request import ChatRequest, from_job_spec
from gptoss_operator.workers.sidecar import lifecycle
from gptoss_operator.workers.sidecar.keys import job_key, split_key
from gptoss_operator.workers.sidecar.lifecycle import Held
from gptoss_operator.workers.sidecar.line_slots import LineSlots
from gptoss_operator.workers.sidecar.store import JobStore, LostJob, claim_facts

# How many of the oldest pending jobs a worker chooses from, and how far it looks for
# its own share of the queue (see Sidecar._next_pending).
CLAIM_CHOICES = 16
CLAIM_REACH = 256
# More of one worker's jobs than this waiting in reach: that worker is busy, and the
# others help with them (fewer are claims it may have in flight, unseen yet).
HELP_BACKLOG = 32
# Seconds after which a job of another worker's share is everyone's, when that worker has
# claimed nothing meanwhile: its slots are full, or it is gone. A worker with room claims
# its own within a watch event's delay.
HELP_AFTER_SECONDS = 1.0
# A claim this recent (its acquireTime, to the second) is dated by when it was seen.
_FRESH_CLAIM_SECONDS = 2.0
# How many claims a worker makes at once.
CLAIMS_IN_FLIGHT = 8


def claim_rank(worker: str, job: str) -> int:
    """A worker's preference for a job: the same everywhere, independent per worker (a
    cryptographic hash: a CRC's ranks for worker names of one length are alike)."""
    digest = hashlib.blake2b(f"{worker}/{job}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(workers: Iterable[str], job: str) -> str:
    """The worker a job hashes to among ``workers`` (rendezvous hashing): every worker
    that knows the same workers agrees, and a worker that joins or leaves moves only
    its own share."""
    return max(workers, key=lambda worker: claim_rank(worker, job))


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SidecarConfig:
    model: str
    namespace: str
    worker: str
    engine_url: str = "http://127.0.0.1:8000"
    # The API key the engine requires on /v1; kept out of repr (and so out of logs).
    engine_api_key: str | None = field(default=None, repr=False)
    concurrency: int = 64
    # Whether the engine runs requests by priority (else no priority is sent: it would
    # mean nothing there).
    priority_scheduling: bool = False
    lease_seconds: int = 30
    heartbeat_seconds: float = 5.0
    engine_quiet_seconds: float = QUIET_SECONDS
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    # How long a pod that is shutting down waits for answers being written.
    finish_grace_seconds: float = 10.0
    resync_seconds: float = 60.0
    watch_timeout_seconds: int = 240
    gateway_slots: int = 256  # batch lines the gateway sends to the engine at once


def reserved(job: dict[str, Any]) -> bool:
    """Whether the operator reserved a slot of the job's tenant for it."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") == "Scheduled" and c.get("reason") == "QuotaReserved" for c in conditions
    )


def _retry_watch(error: Exception, count: int) -> OnErrorResult:
    log.warning("watch failed (%s); retrying", error)
    return OnErrorResult(OnErrorAction.RETRY, sleep=min(10.0, 0.5 * count))


class Sidecar:
    def __init__(
        self,
        config: SidecarConfig,
        client: AsyncClient,
        harmony: Harmony | None = None,
        engine: EngineClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client
        self.harmony = harmony or Harmony()
        self.renderer = PromptRenderer(self.harmony)
        self.engine = engine or EngineClient(
            config.engine_url,
            config.model,
            max_connections=config.concurrency + 4,
            quiet_seconds=config.engine_quiet_seconds,
            api_key=config.engine_api_key,
        )
        self.store = JobStore(
            client, config.model, config.namespace, config.worker, config.lease_seconds
        )
        self.clock = clock
        self.wall = wall
        self.pending: dict[str, dict[str, Any]] = {}
        # The model's tenants (its spec.access), what each used and runs (see
        # core.fair_share), and why each tenant at a limit waits.
        self.access = Access()
        self.ledger = ShareLedger()
        self.over_limit: dict[str, str] = {}
        # Per tenant, (-spec.priority, creationTimestamp, key) of its pending jobs: the
        # highest priority first, the oldest first within one; entries of jobs no longer
        # pending are skipped when they come up.
        self._order: dict[str, list[tuple[int, str, str]]] = {}
        # When a tenant held back by its tokensPerMinute may start a job again.
        self._rate_at: float | None = None
        # When each pending job was first seen pending, when each other worker was last
        # seen claiming a job (self.clock), and when a job waiting here will be due for
        # help (see _helpable).
        self._since: dict[str, float] = {}
        self._claimed_at: dict[str, float] = {}
        self._help_at: float | None = None
        # Whose share each job in reach is, among which workers (see _owner).
        self._owners_among: tuple[str, ...] = ()
        self._owner_of: dict[str, str] = {}
        # The latest Pending version of a job seen while it still ran here (it was
        # requeued meanwhile): claimable again once its task has ended.
        self._requeued: dict[str, dict[str, Any]] = {}
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(config.concurrency)
        self.completed = 0
        self.stopping = False
        # The jobs running here as claimed (bodies, for their Events) and where their
        # attempts stand.
        self.jobs: dict[str, dict[str, Any]] = {}
        self.held: dict[str, Held] = {}
        # Jobs whose answer is complete and being written: never cancelled.
        self.finishing: set[str] = set()
        # Open while the engine answers its health check: no job is claimed otherwise.
        self.gate = EngineGate(self.engine)
        # One watch of InferenceJobs per namespace served (see serve_namespaces).
        self._watchers: dict[str, asyncio.Task[None]] = {}
        # Claims in flight (several at once: a burst of jobs starts within one round
        # trip, not one round trip per job), and jobs claimed as the pod began to stop.
        self._claims: set[asyncio.Task[None]] = set()
        self._claim_slots = asyncio.Semaphore(CLAIMS_IN_FLIGHT)
        self._claimed_unstarted: list[dict[str, Any]] = []
        # Jobs whose attempt was cut short here (cancelled), to hand back on shutdown.
        self.interrupted: set[str] = set()
        # The other workers of the model, by when this one last saw them claim or hold a
        # job (self.clock): the queue is split among them (see _next_pending).
        self.peers: dict[str, float] = {}
        self.last_sync: float | None = None  # the last successful list, by self.clock
        self.watch_restarts = 0
        # Told of each version of the model the watch sees (the gateway's batch keys).
        self.model_listeners: list[Callable[[dict[str, Any]], None]] = []
        # The engine's room for batch lines, shared by the tenants as jobs are.
        self.lines = LineSlots(
            config.gateway_slots, self.ledger, self.tenant_of, self.weights, self.limits, wall
        )

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        log.info("waiting for the engine at %s", self.config.engine_url)
        await self.gate.open()
        log.info(
            "taking InferenceJobs for model %s/%s as %s",
            self.config.namespace,
            self.config.model,
            self.config.worker,
        )
        self.serve_namespaces([self.config.namespace])
        tenants = asyncio.create_task(self._follow_tenants(), name="tenants")
        resync = asyncio.create_task(self._resync_forever(), name="resync")
        try:
            await self._dispatch()
        finally:
            resync.cancel()
            tenants.cancel()
            for watcher in self._watchers.values():
                watcher.cancel()
            self.gate.close()
            for task in list(self.running.values()):
                task.cancel()
            self.renderer.close()
            await self.engine.close()

    def serve_namespaces(self, namespaces: Iterable[str]) -> None:
        """Watch the jobs of these namespaces (the model's own always among them); forget
        the waiting jobs of a namespace no longer served (its running jobs finish)."""
        wanted = {self.config.namespace, *namespaces}
        for namespace in sorted(wanted - set(self._watchers)):
            log.info("serving the InferenceJobs of namespace %s", namespace)
            self._start_watch(namespace)
        for namespace in sorted(set(self._watchers) - wanted):
            log.info("no longer serving namespace %s", namespace)
            self._watchers.pop(namespace).cancel()
            for key in [key for key in self.pending if split_key(key)[0] == namespace]:
                self._drop_pending(key)

    def _start_watch(self, namespace: str) -> None:
        self._watchers[namespace] = asyncio.create_task(
            self._watch(namespace), name=f"watch-{namespace}"
        )

    def _fields(self, namespace: str) -> dict[str, Any]:
        """The field selector of this model's jobs in ``namespace``. In the model's own,
        a job may leave modelRef.namespace out (``serves`` checks it)."""
        fields: dict[str, Any] = {"spec.modelRef.name": self.config.model}
        if namespace != self.config.namespace:
            fields["spec.modelRef.namespace"] = self.config.namespace
        return fields

    def serves(self, job: dict[str, Any]) -> bool:
        """Whether ``job`` names this sidecar's model."""
        return model_key_of(job) == (self.config.namespace, self.config.model)

    async def _watch(self, namespace: str) -> None:
        while True:
            try:
                async for event_type, obj in self.client.watch(
                    InferenceJobResource,
                    namespace=namespace,
                    fields=self._fields(namespace),
                    server_timeout=self.config.watch_timeout_seconds,
                    on_error=_retry_watch,
                ):
                    self._observe(event_type, obj.to_dict())
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("watch of InferenceJobs in %s ended: %s", namespace, error)
                await asyncio.sleep(1.0)

    async def _follow_tenants(self) -> None:
        """Serve the namespaces the model's status lists as its tenants (the operator
        binds this sidecar's role there before it lists them)."""
        fields: dict[str, Any] = {"metadata.name": self.config.model}
        while True:
            try:
                async for event_type, obj in self.client.watch(
                    GptOssModelResource,
                    namespace=self.config.namespace,
                    fields=fields,
                    server_timeout=self.config.watch_timeout_seconds,
                    on_error=_retry_watch,
                ):
                    if event_type != "DELETED":
                        model = obj.to_dict()
                        self.serve_namespaces(tenant_namespaces(model))
                        self.set_access(read_access((model.get("spec") or {}).get("access")))
                        for listener in self.model_listeners:
                            listener(model)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("watch of GptOssModel %s ended: %s", self.config.model, error)
                await asyncio.sleep(1.0)

    def set_access(self, access: Access) -> None:
        """Take the model's tenants, weights and limits (its spec.access); the waiting
        jobs are sorted into their tenants again."""
        if access == self.access:
            return
        self.access = access
        self._order = {}
        for key, job in self.pending.items():
            self._push(key, job)
        self._wake.set()

    def tenant_of(self, namespace: str) -> str:
        return self.access.tenant_of(namespace).name

    def weights(self) -> dict[str, int]:
        return {tenant.name: tenant.weight for tenant in self.access.tenants or []}

    def limits(self, tenant: str) -> TenantLimits:
        return limits_of(self.access, tenant)

    def _guess(self, tenant: str, job: dict[str, Any]) -> float:
        """The tokens a job of ``tenant`` that starts now is counted for until it ends."""
        max_tokens = int((job.get("spec") or {}).get("maxTokens") or 256)
        return estimate(self.ledger, tenant, max_tokens)

    def _account(self, key: str, job: dict[str, Any], phase: str, deleted: bool) -> None:
        """Tell the ledger what a job event means for its tenant's use."""
        tenant = self.tenant_of(split_key(key)[0])
        status = job.get("status") or {}
        if phase in FINISHED_PHASES:
            finished = parse_time(status.get("completionTime"))
            tokens = int((status.get("usage") or {}).get("totalTokens") or 0)
            now = self.wall()
            at = finished.timestamp() if finished is not None else now
            self.ledger.finished(key, tenant, tokens, at, now)
            self._wake.set()  # a slot of its tenant's may be free
        elif phase == Phase.RUNNING.value and not deleted:
            self.ledger.running(key, tenant, self._guess(tenant, job))
        elif self.ledger.stopped(key):
            self._wake.set()

    async def _resync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("listing InferenceJobs failed (%s); the watch carries on", error)

    async def resync(self) -> int:
        """List the model's unfinished jobs in each namespace served; restart a watch that
        missed Pending ones. Returns how many were missed."""
        missed = 0
        for namespace in sorted(self._watchers):
            missed += await self._resync(namespace)
        self.last_sync = self.clock()
        return missed

    async def _resync(self, namespace: str) -> int:
        fields = {
            **self._fields(namespace),
            "status.phase": not_in([Phase.RUNNING.value, *FINISHED_PHASES]),
        }
        missed = []
        async for obj in self.client.list(InferenceJobResource, namespace=namespace, fields=fields):
            job = obj.to_dict()
            key = job_key(job)
            if self.serves(job) and key not in self.pending and key not in self.running:
                missed.append(key)
            self._observe("MODIFIED", job)
        if missed and namespace in self._watchers:
            log.warning(
                "the watch of %s missed %d Pending job(s) (%s); restarting it",
                namespace,
                len(missed),
                ", ".join(sorted(missed)[:5]),
            )
            self.watch_restarts += 1
            self._watchers[namespace].cancel()
            self._start_watch(namespace)
        return len(missed)

    def _observe(self, event_type: str, job: dict[str, Any]) -> None:
        if not self.serves(job):
            return  # another namespace's model of the same name
        key = job_key(job)
        status = job.get("status") or {}
        phase = status.get("phase") or Phase.PENDING.value
        deleted = event_type == "DELETED" or bool(job["metadata"].get("deletionTimestamp"))
        self._account(key, job, phase, deleted)
        if deleted:
            self._drop_pending(key)
            task = self.running.get(key)
            if task is not None:
                task.cancel()
            return
        holder = status.get("worker")
        if phase == Phase.RUNNING.value and holder and holder != self.config.worker:
            self.peers[holder] = self.clock()
            self._saw_claim(holder, status)
        if phase == Phase.PENDING.value and key in self.running:
            self._requeued[key] = claim_facts(job)
        elif phase == Phase.PENDING.value:
            self._add_pending(job)
        else:
            self._drop_pending(key)
            self._requeued.pop(key, None)
            task = self.running.get(key)
            if task is None or key in self.finishing:
                return
            taken = phase == Phase.RUNNING.value and status.get("worker") != self.config.worker
            if taken or phase in FINISHED_PHASES:
                task.cancel()  # claimed elsewhere, or ended without this attempt

    async def drain(self) -> None:
        """Stop taking jobs and hand the running ones back at once (the pod is going
        away), instead of leaving them to wait for their leases to lapse. A shutdown is
        not the job's failure: the attempts it cuts short are voided."""
        self.stopping = True
        self._wake.set()
        self.gate.ready.set()  # let the dispatch loop see that it is stopping
        unstarted = await self._claims_in_flight()
        running = dict(self.running)
        for key, task in running.items():
            if key not in self.finishing:
                task.cancel()
        # Answers already complete are written, not thrown away, within the grace period.
        finishing = [running[key] for key in self.finishing if key in running]
        if finishing:
            await asyncio.wait(finishing, timeout=self.config.finish_grace_seconds)
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        cut_short = [
            (self.jobs[key], self.held[key])
            for key in running
            if key in self.interrupted and key in self.jobs and key in self.held
        ]
        cut_short += [(job, Held.claimed(job)) for job in unstarted]
        for job, held in cut_short:
            try:
                await self._write(job, held, lifecycle.worker_shutdown(held, self.config.worker))
                log.info("requeued %s", held.key)
            except Exception as error:
                log.warning("could not requeue %s: %s", held.key, error)

    async def _claims_in_flight(self) -> list[dict[str, Any]]:
        """Let the claims the dispatch loop is making finish: jobs claimed as the pod goes
        away are handed back now rather than when their leases lapse."""
        if self._claims:
            await asyncio.wait(set(self._claims), timeout=self.config.finish_grace_seconds)
        unstarted, self._claimed_unstarted = self._claimed_unstarted, []
        return unstarted

    async def _dispatch(self) -> None:
        while not self.stopping:
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self.gate.ready.wait()
            await self._slots.acquire()
            await self._claim_slots.acquire()
            job = None if self.stopping else self._next_pending()
            if job is None:
                self._claim_slots.release()
                self._slots.release()
                if self.pending and not self.stopping:
                    # Every job waiting is another worker's, not yet due for help, or its
                    # tenant's at a limit: wait for a change, or until either is due.
                    due = [at for at in (self._help_at, self._rate_at) if at is not None]
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._wake.wait(),
                            # A change the watch missed shows once it is resynced.
                            max(0.01, min(due) - self.clock()) if due else 5.0,
                        )
                continue
            task = asyncio.create_task(self._claim_and_start(job))
            self._claims.add(task)
            task.add_done_callback(self._claims.discard)

    async def _claim_and_start(self, job: dict[str, Any]) -> None:
        key = job_key(job)
        # Counted as its tenant's at once: the next pick must not see the slot free.
        tenant = self.tenant_of(split_key(key)[0])
        self.ledger.running(key, tenant, self._guess(tenant, job))
        try:
            claimed = await self._claim(job)
        finally:
            self._claim_slots.release()
        if claimed is None:
            self.ledger.stopped(key)  # the watch says who runs it, if anyone
        if claimed is None or self.stopping:
            if claimed is not None:
                self._claimed_unstarted.append(claimed)  # the drain hands it back
            self._slots.release()
            return
        task = asyncio.create_task(self._run_and_release(claimed), name=f"job-{key}")
        self.running[key] = task

    def _add_pending(self, job: dict[str, Any]) -> None:
        key = job_key(job)
        if key not in self.pending:
            self._push(key, job)
            self._since[key] = self.clock()
        self.pending[key] = claim_facts(job)
        self._wake.set()

    def _push(self, key: str, job: dict[str, Any]) -> None:
        created = str(job["metadata"].get("creationTimestamp", ""))
        priority = int((job.get("spec") or {}).get("priority") or 0)
        tenant = self.tenant_of(split_key(key)[0])
        heapq.heappush(self._order.setdefault(tenant, []), (-priority, created, key))

    def _drop_pending(self, key: str) -> dict[str, Any] | None:
        self._since.pop(key, None)
        return self.pending.pop(key, None)

    def _saw_claim(self, worker: str, status: dict[str, Any]) -> None:
        """Remember when ``worker`` last claimed a job (a renewal is not a claim)."""
        acquired = parse_time((status.get("lease") or {}).get("acquireTime"))
        if acquired is None:
            return
        age = (datetime.datetime.now(datetime.UTC) - acquired).total_seconds()
        at = self.clock() - (age if age > _FRESH_CLAIM_SECONDS else 0.0)
        self._claimed_at[worker] = max(self._claimed_at.get(worker, at), at)

    def _next_pending(self) -> dict[str, Any] | None:
        """The job this worker claims next, or None. The tenants with jobs waiting are
        served in the order they are owed (fair_share.fair_order), except those at a limit
        (fair_share.over_limit); within a tenant, see _pick."""
        self._help_at = None
        self._rate_at = None
        now = self.wall()
        weights = self.weights()
        waiting = [tenant for tenant, order in self._order.items() if order]
        self.over_limit = {}
        for tenant in fair_order(self.ledger, waiting, weights, now):
            limits = self.limits(tenant)
            if why := over_limit(self.ledger, tenant, limits, now):
                self.over_limit[tenant] = why
                if limits.tokens_per_minute is not None:
                    frees = self.ledger.rate_frees_at(tenant, limits.tokens_per_minute, now)
                    if frees is not None:
                        due = self.clock() + max(0.0, frees - now)
                        self._rate_at = due if self._rate_at is None else min(self._rate_at, due)
                continue
            key = self._pick(self._order[tenant], limits.max_jobs_in_flight is not None)
            if key is not None:
                return self._drop_pending(key)
        for tenant in [tenant for tenant, order in self._order.items() if not order]:
            del self._order[tenant]
        return None

    def _pick(self, order: list[tuple[int, str, str]], reserved_only: bool) -> str | None:
        """One of the oldest pending jobs of the highest priority in one tenant's
        ``order`` (the engine runs requests by priority too, but a job must be claimed
        to reach it). Once this worker has seen other workers of the model claim jobs,
        it takes the oldest job that hashes to it among them (looking as far as
        CLAIM_REACH). When none is in reach, it helps a worker that is busy or quiet (see
        _helpable), with one of its youngest jobs in reach, which the owner comes to
        last; None when no worker needs help. Before it has seen other workers, the one
        it ranks first among the oldest CLAIM_CHOICES. Workers that have seen each other
        split the queue, so they seldom race for one job (a lost race costs a write
        refused by the apiserver). ``reserved_only``: the tenant has a maxJobsInFlight,
        and only the jobs the operator reserved a slot for may be claimed."""
        me = self.config.worker
        peers = self._live_peers()
        reach = CLAIM_REACH if peers else CLAIM_CHOICES
        candidates: dict[str, tuple[int, str, str]] = {}
        unreserved: list[tuple[int, str, str]] = []
        chosen: str | None = None
        while order and len(candidates) < reach and len(unreserved) < CLAIM_REACH:
            entry = heapq.heappop(order)
            key = entry[2]
            if key not in self.pending or key in candidates:
                continue
            if reserved_only and not reserved(self.pending[key]):
                unreserved.append(entry)
                continue
            candidates[key] = entry
            if peers and self._owner(key, peers) == me:
                chosen = key  # the oldest of this worker's share
                break
        for entry in unreserved:
            heapq.heappush(order, entry)
        if not candidates:
            if not unreserved:
                order.clear()
            return None
        if chosen is None:
            top = next(iter(candidates.values()))[0]
            # Popped in order; without peers, only the highest priority's.
            names = [key for key, entry in candidates.items() if peers or entry[0] == top]
            choices = self._helpable(names, peers)[-CLAIM_CHOICES:] if peers else names
            if choices:
                chosen = min(
                    choices[:CLAIM_CHOICES],
                    key=lambda candidate: claim_rank(me, split_key(candidate)[1]),
                )
        for key, entry in candidates.items():
            if key != chosen:
                heapq.heappush(order, entry)
        return chosen

    def _helpable(self, names: list[str], peers: list[str]) -> list[str]:
        """The jobs among ``names`` (none of them this worker's) that their owner leaves
        waiting: it has more than HELP_BACKLOG of them in reach, or the job has waited
        HELP_AFTER_SECONDS and the owner claimed nothing meanwhile (its slots are full,
        or it is gone). An owner with room takes its own at once: helping it then only
        races it for them."""
        owners = {key: self._owner(key, peers) for key in names}
        backlog = Counter(owners.values())
        now = self.clock()
        due = {
            key: max(self._since.get(key, now), self._claimed_at.get(owners[key], -math.inf))
            + HELP_AFTER_SECONDS
            for key in names
        }
        helpable = [key for key in names if backlog[owners[key]] > HELP_BACKLOG or due[key] <= now]
        if not helpable:
            soonest = min(due.values())
            self._help_at = soonest if self._help_at is None else min(self._help_at, soonest)
        return helpable

    def _owner(self, key: str, peers: list[str]) -> str:
        """``owner`` among this worker and ``peers``, remembered while they stay the
        same (the jobs in reach are looked at again on every pick)."""
        workers = (self.config.worker, *sorted(peers))
        if workers != self._owners_among or len(self._owner_of) > 2 * len(self.pending) + 1024:
            self._owners_among, self._owner_of = workers, {}
        found = self._owner_of.get(key)
        if found is None:
            # By name: jobs of one name in two namespaces fall to one worker, which is harmless.
            found = self._owner_of[key] = owner(workers, split_key(key)[1])
        return found

    def _live_peers(self) -> list[str]:
        """Workers seen holding a job within two leases (a dead one's share goes back to
        everyone then; until then, its jobs are taken once no job of this worker's is
        among the oldest)."""
        horizon = self.clock() - 2 * self.config.lease_seconds
        for worker in [w for w, seen in self.peers.items() if seen < horizon]:
            del self.peers[worker]
        return list(self.peers)

    async def _claim(self, job: dict[str, Any]) -> dict[str, Any] | None:
        key = job_key(job)
        # A claim refused because the job changed (None) needs no second look: the watch
        # brings the newer version, Pending again or taken by another worker.
        try:
            return await self.store.claim(job)
        except Exception as error:
            log.warning("claiming %s failed: %s", key, error)
            await asyncio.sleep(self.config.retry_base_seconds)
            # Nothing changed the job, so no watch event will bring it back: look.
            await self._recheck(key)
            return None

    async def _run_and_release(self, job: dict[str, Any]) -> None:
        key = job_key(job)
        self.jobs[key] = job
        self.held[key] = Held.claimed(job)
        try:
            await self.run_job(job)
        except asyncio.CancelledError:
            self.interrupted.add(key)
            log.info("job %s cancelled (deleted, taken over or shutting down)", key)
        except LostJob as error:
            log.info("lost job %s: %s", key, error)
        except Exception:
            log.exception("job %s failed unexpectedly", key)
            await self._fail_quietly(
                job, "SidecarError", "the sidecar failed while running this job; see its logs"
            )
        finally:
            self.running.pop(key, None)
            self.finishing.discard(key)
            self._slots.release()
            self.completed += 1
            if not self.stopping:
                self.jobs.pop(key, None)
                self.held.pop(key, None)
                self.interrupted.discard(key)
        requeued = self._requeued.pop(key, None)
        if requeued is not None and not self.stopping:
            self._add_pending(requeued)

    async def _recheck(self, key: str) -> None:
        """Look at a job again (a claim failed without the job changing)."""
        namespace, name = split_key(key)
        try:
            job = await self.client.get(InferenceJobResource, name, namespace=namespace)
        except Exception:
            return
        self._observe("MODIFIED", job.to_dict())

    # ------------------------------------------------------------------ one job
    async def run_job(self, job: dict[str, Any]) -> None:
        key = job_key(job)
        if problem := spec_problem(job["spec"]):
            held = self.held[key]
            await self._write(
                job, held, lifecycle.failed(held, "InvalidSpec", problem, timestamp())
            )
            return
        spec = InferenceJobSpec.model_validate(job["spec"])
        deadline = self._deadline(job, spec)
        request = from_job_spec(spec)
        priority = spec.priority if self.config.priority_scheduling else None
        params = request.sampling(self.harmony.stop_token_ids, priority)
        progress = Progress(prompt_tokens=0)
        # The lease is renewed from the claim until the job is released: while the prompt
        # renders, during retry backoffs and while the result is written.
        heartbeat = asyncio.create_task(self._heartbeat(key, progress))
        try:
            try:
                prompt = await self.renderer.render(request)
            except ValueError as error:  # text harmony cannot encode (e.g. a lone surrogate)
                held = self.held[key]
                await self._write(job, held, lifecycle.unrenderable(held, str(error), timestamp()))
                return
            progress.prompt_tokens = len(prompt)
            await self._attempts(job, spec, request, prompt, params, deadline, progress)
        finally:
            heartbeat.cancel()

    async def _attempts(
        self,
        job: dict[str, Any],
        spec: InferenceJobSpec,
        request: ChatRequest,
        prompt: list[int],
        params: SamplingParams,
        deadline: float | None,
        progress: Progress,
    ) -> None:
        """Call the engine until it answers or the lifecycle says the attempt is over."""
        key = job_key(job)
        while True:
            held = self.held[key]
            try:
                result = await generate(
                    self.engine,
                    self.harmony,
                    prompt,
                    params,
                    clock=self.clock,
                    deadline=deadline,
                    progress=progress,
                )
                break
            except TimeoutError:
                write = lifecycle.deadline_passed(held, spec.activeDeadlineSeconds, timestamp())
                await self._write(job, held, write)
                return
            except EngineError as error:
                decision = decide(
                    error,
                    engine_healthy=await self.engine.healthy() if error.retryable else None,
                    platform_retries=held.platform_retries,
                    charged=held.charged,
                    max_attempts=spec.backoffLimit + 1,
                    prompt_tokens=len(prompt),
                    max_model_len=self.gate.max_model_len,
                )
                step = lifecycle.after_engine_error(
                    held,
                    decision,
                    error.message,
                    worker=self.config.worker,
                    retry_base_seconds=self.config.retry_base_seconds,
                    retry_max_seconds=self.config.retry_max_seconds,
                    now=timestamp(),
                )
                if isinstance(step, lifecycle.Write):
                    if decision.verdict is Verdict.ENGINE_DOWN:
                        # Restarting, out of memory: stop claiming until it is healthy.
                        self.gate.went_down(error.message)
                    await self._write(job, held, step)
                    return
                log.warning(
                    "job %s attempt %d failed (%s); retrying in %.1fs",
                    key,
                    held.attempt,
                    error.message,
                    step.delay,
                )
                await self.store.update(key, held.attempt, step.write.changes)
                self.held[key] = step.next
                await asyncio.sleep(step.delay)
        self.finishing.add(key)  # the answer exists: from here on it is only written
        await self._finish_generated(job, spec, request, result)

    async def _write(self, job: dict[str, Any], held: Held, write: lifecycle.Write) -> None:
        """Write what the lifecycle decided for ``held``'s attempt, then its Event."""
        await self.store.update(
            held.key, held.attempt, write.changes, remove=write.remove, current=held.status
        )
        if write.event is not None:
            await self.store.event(job, *write.event)
        if write.event is not None or write.finishes:
            log.warning("job %s: %s", held.key, write.changes.get("message"))

    def _deadline(self, job: dict[str, Any], spec: InferenceJobSpec) -> float | None:
        if spec.activeDeadlineSeconds is None:
            return None
        created = parse_time(job["metadata"].get("creationTimestamp"))
        if created is None:
            return None
        remaining = (
            created
            + datetime.timedelta(seconds=spec.activeDeadlineSeconds)
            - datetime.datetime.now(datetime.UTC)
        ).total_seconds()
        return self.clock() + remaining

    async def _heartbeat(self, key: str, progress: Progress) -> None:
        interval = min(self.config.heartbeat_seconds, self.config.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            attempt = self.held[key].attempt
            try:
                await self.store.renew(key, attempt, lifecycle.heartbeat(progress))
            except LostJob:
                if self.held[key].attempt != attempt:
                    continue  # the job moved on to its next attempt meanwhile
                return  # requeued or deleted: the job's own writes will find out
            except Exception as error:
                # A busy or restarting apiserver: the lease outlasts a few missed beats.
                log.warning("renewing the lease of %s failed (%s); trying again", key, error)

    # ------------------------------------------------------------------ results
    async def _finish_generated(
        self, job: dict[str, Any], spec: InferenceJobSpec, request: ChatRequest, result: RunResult
    ) -> None:
        held = self.held[job_key(job)]
        uid = str(job["metadata"].get("uid", "")).replace("-", "")[:12]
        outcome = result.outcome(
            request, self.gate.max_model_len, call_id_prefix=f"call_{uid}_{held.attempt}"
        )
        output = layout(outcome.texts)
        saved: list[str] = []
        if output.config_maps:
            saved = await self.store.save_output(job, held.attempt, output.config_maps)
        write = lifecycle.answered(
            held,
            reasoning_level=spec.reasoningLevel,
            result=result,
            outcome=outcome,
            output=output,
            saved=saved,
            now=datetime.datetime.now(datetime.UTC),
        )
        try:
            await self.store.finish(held.key, held.attempt, write.changes, write.remove)
        except LostJob:
            await self.store.delete_output(split_key(held.key)[0], saved)
            raise
        # An answer is in the job's status; only a job that went wrong gets an Event too
        # (one per success would be a write per job, and bulk work floods the Events).
        if write.event is not None:
            await self.store.event(job, *write.event)
        log.info("job %s: %s (%d tokens)", held.key, outcome.reason, result.completion_tokens)

    async def _fail_quietly(self, job: dict[str, Any], reason: str, message: str) -> None:
        held = self.held.get(job_key(job)) or Held.claimed(job)
        try:
            await self._write(job, held, lifecycle.failed(held, reason, message, timestamp()))
        except Exception as error:
            log.warning("could not mark %s failed: %s", held.key, error)
