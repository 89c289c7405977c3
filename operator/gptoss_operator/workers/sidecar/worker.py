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
from gptoss_operator.api.job import FINISHED_PHASES, InferenceJobSpec, Phase
from gptoss_operator.api.job_output import layout
from gptoss_operator.api.json_schema import spec_problem
from gptoss_operator.api.resources import InferenceJobResource
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
from gptoss_operator.workers.sidecar.lifecycle import Held
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
    lease_seconds: int = 30
    heartbeat_seconds: float = 5.0
    engine_quiet_seconds: float = QUIET_SECONDS
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    # How long a pod that is shutting down waits for answers being written.
    finish_grace_seconds: float = 10.0
    resync_seconds: float = 60.0
    watch_timeout_seconds: int = 240


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
        self.store = JobStore(client, config.namespace, config.worker, config.lease_seconds)
        self.clock = clock
        self.pending: dict[str, dict[str, Any]] = {}
        # (creationTimestamp, name) of pending jobs, oldest first; entries of jobs no
        # longer pending are skipped when they come up.
        self._order: list[tuple[str, str]] = []
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
        self._watcher: asyncio.Task[None] | None = None
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

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        log.info("waiting for the engine at %s", self.config.engine_url)
        await self.gate.open()
        log.info(
            "taking InferenceJobs for model %s in %s as %s",
            self.config.model,
            self.config.namespace,
            self.config.worker,
        )
        self._watcher = asyncio.create_task(self._watch(), name="watch")
        resync = asyncio.create_task(self._resync_forever(), name="resync")
        try:
            await self._dispatch()
        finally:
            resync.cancel()
            self._watcher.cancel()
            self.gate.close()
            for task in list(self.running.values()):
                task.cancel()
            self.renderer.close()
            await self.engine.close()

    async def _watch(self) -> None:
        fields = {"spec.modelRef.name": self.config.model}
        while True:
            try:
                async for event_type, obj in self.client.watch(
                    InferenceJobResource,
                    namespace=self.config.namespace,
                    fields=dict[str, Any](fields),
                    server_timeout=self.config.watch_timeout_seconds,
                    on_error=_retry_watch,
                ):
                    self._observe(event_type, obj.to_dict())
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("watch of InferenceJobs ended: %s", error)
                await asyncio.sleep(1.0)

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
        """List the model's unfinished jobs; restart the watch if it missed Pending ones.
        Returns how many it missed."""
        fields = {
            "spec.modelRef.name": self.config.model,
            "status.phase": not_in([Phase.RUNNING.value, *FINISHED_PHASES]),
        }
        missed = []
        async for obj in self.client.list(
            InferenceJobResource, namespace=self.config.namespace, fields=dict[str, Any](fields)
        ):
            job = obj.to_dict()
            name = job["metadata"]["name"]
            if name not in self.pending and name not in self.running:
                missed.append(name)
            self._observe("MODIFIED", job)
        self.last_sync = self.clock()
        if missed and self._watcher is not None:
            log.warning(
                "the watch missed %d Pending job(s) (%s); restarting it",
                len(missed),
                ", ".join(sorted(missed)[:5]),
            )
            self.watch_restarts += 1
            self._watcher.cancel()
            self._watcher = asyncio.create_task(self._watch(), name="watch")
        return len(missed)

    def _observe(self, event_type: str, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        status = job.get("status") or {}
        phase = status.get("phase") or Phase.PENDING.value
        if event_type == "DELETED" or job["metadata"].get("deletionTimestamp"):
            self._drop_pending(name)
            task = self.running.get(name)
            if task is not None:
                task.cancel()
            return
        holder = status.get("worker")
        if phase == Phase.RUNNING.value and holder and holder != self.config.worker:
            self.peers[holder] = self.clock()
            self._saw_claim(holder, status)
        if phase == Phase.PENDING.value and name in self.running:
            self._requeued[name] = claim_facts(job)
        elif phase == Phase.PENDING.value:
            self._add_pending(job)
        else:
            self._drop_pending(name)
            self._requeued.pop(name, None)
            task = self.running.get(name)
            if task is None or name in self.finishing:
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
        for name, task in running.items():
            if name not in self.finishing:
                task.cancel()
        # Answers already complete are written, not thrown away, within the grace period.
        finishing = [running[name] for name in self.finishing if name in running]
        if finishing:
            await asyncio.wait(finishing, timeout=self.config.finish_grace_seconds)
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        cut_short = [
            (self.jobs[name], self.held[name])
            for name in running
            if name in self.interrupted and name in self.jobs and name in self.held
        ]
        cut_short += [(job, Held.claimed(job)) for job in unstarted]
        for job, held in cut_short:
            try:
                await self._write(job, held, lifecycle.worker_shutdown(held, self.config.worker))
                log.info("requeued %s", held.name)
            except Exception as error:
                log.warning("could not requeue %s: %s", held.name, error)

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
                if self.pending and self._help_at is not None and not self.stopping:
                    # Every job waiting is another worker's, not yet due for help.
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._wake.wait(), max(0.01, self._help_at - self.clock())
                        )
                continue
            task = asyncio.create_task(self._claim_and_start(job))
            self._claims.add(task)
            task.add_done_callback(self._claims.discard)

    async def _claim_and_start(self, job: dict[str, Any]) -> None:
        try:
            claimed = await self._claim(job)
        finally:
            self._claim_slots.release()
        if claimed is None or self.stopping:
            if claimed is not None:
                self._claimed_unstarted.append(claimed)  # the drain hands it back
            self._slots.release()
            return
        name = claimed["metadata"]["name"]
        task = asyncio.create_task(self._run_and_release(claimed), name=f"job-{name}")
        self.running[name] = task

    def _add_pending(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        if name not in self.pending:
            created = str(job["metadata"].get("creationTimestamp", ""))
            heapq.heappush(self._order, (created, name))
            self._since[name] = self.clock()
        self.pending[name] = claim_facts(job)
        self._wake.set()

    def _drop_pending(self, name: str) -> dict[str, Any] | None:
        self._since.pop(name, None)
        return self.pending.pop(name, None)

    def _saw_claim(self, worker: str, status: dict[str, Any]) -> None:
        """Remember when ``worker`` last claimed a job (a renewal is not a claim)."""
        acquired = parse_time((status.get("lease") or {}).get("acquireTime"))
        if acquired is None:
            return
        age = (datetime.datetime.now(datetime.UTC) - acquired).total_seconds()
        at = self.clock() - (age if age > _FRESH_CLAIM_SECONDS else 0.0)
        self._claimed_at[worker] = max(self._claimed_at.get(worker, at), at)

    def _next_pending(self) -> dict[str, Any] | None:
        """One of the oldest pending jobs. Once this worker has seen other workers of the
        model claim jobs, it takes the oldest job that hashes to it among them (looking
        as far as CLAIM_REACH). When none is in reach, it helps a worker that is busy or
        quiet (see _helpable), with one of its youngest jobs in reach, which the owner
        comes to last; None when no worker needs help. Before it has seen other workers,
        the one it ranks first among the oldest CLAIM_CHOICES. Workers that have seen
        each other split the queue, so they seldom race for one job (a lost race costs
        a write refused by the apiserver)."""
        me = self.config.worker
        peers = self._live_peers()
        self._help_at = None
        reach = CLAIM_REACH if peers else CLAIM_CHOICES
        candidates: dict[str, tuple[str, str]] = {}
        chosen: str | None = None
        while self._order and len(candidates) < reach:
            entry = heapq.heappop(self._order)
            if entry[1] in self.pending and entry[1] not in candidates:
                candidates[entry[1]] = entry
                if peers and self._owner(entry[1], peers) == me:
                    chosen = entry[1]  # the oldest of this worker's share
                    break
        if not candidates:
            self._order.clear()
            return None
        if chosen is None:
            names = list(candidates)  # popped oldest first
            choices = self._helpable(names, peers)[-CLAIM_CHOICES:] if peers else names
            if choices:
                chosen = min(choices[:CLAIM_CHOICES], key=lambda name: claim_rank(me, name))
        for name, entry in candidates.items():
            if name != chosen:
                heapq.heappush(self._order, entry)
        return None if chosen is None else self._drop_pending(chosen)

    def _helpable(self, names: list[str], peers: list[str]) -> list[str]:
        """The jobs among ``names`` (none of them this worker's) that their owner leaves
        waiting: it has more than HELP_BACKLOG of them in reach, or the job has waited
        HELP_AFTER_SECONDS and the owner claimed nothing meanwhile (its slots are full,
        or it is gone). An owner with room takes its own at once: helping it then only
        races it for them."""
        owners = {name: self._owner(name, peers) for name in names}
        backlog = Counter(owners.values())
        now = self.clock()
        due = {
            name: max(self._since.get(name, now), self._claimed_at.get(owners[name], -math.inf))
            + HELP_AFTER_SECONDS
            for name in names
        }
        helpable = [
            name for name in names if backlog[owners[name]] > HELP_BACKLOG or due[name] <= now
        ]
        if not helpable:
            self._help_at = min(due.values())
        return helpable

    def _owner(self, name: str, peers: list[str]) -> str:
        """``owner`` among this worker and ``peers``, remembered while they stay the
        same (the jobs in reach are looked at again on every pick)."""
        workers = (self.config.worker, *sorted(peers))
        if workers != self._owners_among or len(self._owner_of) > 2 * len(self.pending) + 1024:
            self._owners_among, self._owner_of = workers, {}
        found = self._owner_of.get(name)
        if found is None:
            found = self._owner_of[name] = owner(workers, name)
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
        name = job["metadata"]["name"]
        # A claim refused because the job changed (None) needs no second look: the watch
        # brings the newer version, Pending again or taken by another worker.
        try:
            return await self.store.claim(job)
        except Exception as error:
            log.warning("claiming %s failed: %s", name, error)
            await asyncio.sleep(self.config.retry_base_seconds)
            # Nothing changed the job, so no watch event will bring it back: look.
            await self._recheck(name)
            return None

    async def _run_and_release(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        self.jobs[name] = job
        self.held[name] = Held.claimed(job)
        try:
            await self.run_job(job)
        except asyncio.CancelledError:
            self.interrupted.add(name)
            log.info("job %s cancelled (deleted, taken over or shutting down)", name)
        except LostJob as error:
            log.info("lost job %s: %s", name, error)
        except Exception:
            log.exception("job %s failed unexpectedly", name)
            await self._fail_quietly(
                job, "SidecarError", "the sidecar failed while running this job; see its logs"
            )
        finally:
            self.running.pop(name, None)
            self.finishing.discard(name)
            self._slots.release()
            self.completed += 1
            if not self.stopping:
                self.jobs.pop(name, None)
                self.held.pop(name, None)
                self.interrupted.discard(name)
        requeued = self._requeued.pop(name, None)
        if requeued is not None and not self.stopping:
            self._add_pending(requeued)

    async def _recheck(self, name: str) -> None:
        """Look at a job again (a claim failed without the job changing)."""
        try:
            job = await self.client.get(InferenceJobResource, name, namespace=self.config.namespace)
        except Exception:
            return
        self._observe("MODIFIED", job.to_dict())

    # ------------------------------------------------------------------ one job
    async def run_job(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        if problem := spec_problem(job["spec"]):
            held = self.held[name]
            await self._write(
                job, held, lifecycle.failed(held, "InvalidSpec", problem, timestamp())
            )
            return
        spec = InferenceJobSpec.model_validate(job["spec"])
        deadline = self._deadline(job, spec)
        request = from_job_spec(spec)
        params = request.sampling(self.harmony.stop_token_ids)
        progress = Progress(prompt_tokens=0)
        # The lease is renewed from the claim until the job is released: while the prompt
        # renders, during retry backoffs and while the result is written.
        heartbeat = asyncio.create_task(self._heartbeat(name, progress))
        try:
            try:
                prompt = await self.renderer.render(request)
            except ValueError as error:  # text harmony cannot encode (e.g. a lone surrogate)
                held = self.held[name]
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
        name = job["metadata"]["name"]
        while True:
            held = self.held[name]
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
                    name,
                    held.attempt,
                    error.message,
                    step.delay,
                )
                await self.store.update(name, held.attempt, step.write.changes)
                self.held[name] = step.next
                await asyncio.sleep(step.delay)
        self.finishing.add(name)  # the answer exists: from here on it is only written
        await self._finish_generated(job, spec, request, result)

    async def _write(self, job: dict[str, Any], held: Held, write: lifecycle.Write) -> None:
        """Write what the lifecycle decided for ``held``'s attempt, then its Event."""
        await self.store.update(
            held.name, held.attempt, write.changes, remove=write.remove, current=held.status
        )
        if write.event is not None:
            await self.store.event(job, *write.event)
        if write.event is not None or write.finishes:
            log.warning("job %s: %s", held.name, write.changes.get("message"))

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

    async def _heartbeat(self, name: str, progress: Progress) -> None:
        interval = min(self.config.heartbeat_seconds, self.config.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            attempt = self.held[name].attempt
            try:
                await self.store.renew(name, attempt, lifecycle.heartbeat(progress))
            except LostJob:
                if self.held[name].attempt != attempt:
                    continue  # the job moved on to its next attempt meanwhile
                return  # requeued or deleted: the job's own writes will find out
            except Exception as error:
                # A busy or restarting apiserver: the lease outlasts a few missed beats.
                log.warning("renewing the lease of %s failed (%s); trying again", name, error)

    # ------------------------------------------------------------------ results
    async def _finish_generated(
        self, job: dict[str, Any], spec: InferenceJobSpec, request: ChatRequest, result: RunResult
    ) -> None:
        held = self.held[job["metadata"]["name"]]
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
            await self.store.finish(held.name, held.attempt, write.changes, write.remove)
        except LostJob:
            await self.store.delete_output(saved)
            raise
        # An answer is in the job's status; only a job that went wrong gets an Event too
        # (one per success would be a write per job, and bulk work floods the Events).
        if write.event is not None:
            await self.store.event(job, *write.event)
        log.info("job %s: %s (%d tokens)", held.name, outcome.reason, result.completion_tokens)

    async def _fail_quietly(self, job: dict[str, Any], reason: str, message: str) -> None:
        held = self.held.get(job["metadata"]["name"]) or Held.claimed(job)
        try:
            await self._write(job, held, lifecycle.failed(held, reason, message, timestamp()))
        except Exception as error:
            log.warning("could not mark %s failed: %s", held.name, error)
