"""Reconcile one InferenceBatch: wait for its model, run the shards' Indexed Job, then
the merge Job, and keep the status in step with what they and the workers report.

The Jobs are created once and never changed (the spec is immutable); the status is
recomputed from them on every trigger, so a restarted operator picks up where things
are. A batch whose model is missing or not serving yet waits (it is never failed for
that); a worker pod that cannot start (a missing Secret, an unpullable image) is
reported as a condition reason and an Event while the pod waits to be fixed.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from dataclasses import replace
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod

from gptoss_operator.api.batch import (
    FINISHED_PHASES,
    InferenceBatchSpec,
    InferenceBatchStatus,
    gateway_key_sha256,
)
from gptoss_operator.api.conditions import get_condition, now, parse_time
from gptoss_operator.api.job import model_key_of
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.api.resources import GptOssModelResource, InferenceBatchResource
from gptoss_operator.builders import ModelContext, rbac
from gptoss_operator.builders.batch import (
    BatchContext,
    gateway_key_secret,
    merge_job,
    shards_job,
)
from gptoss_operator.controllers.batch.status import (
    Observed,
    batch_status,
    job_finished,
    pod_trouble,
    status_changed,
    termination_message,
)
from gptoss_operator.controllers.facts import ModelFacts
from gptoss_operator.controllers.quota import tenant_of
from gptoss_operator.controllers.usage import count_batch
from gptoss_operator.core import kube, naming
from gptoss_operator.core.events import EventSink
from gptoss_operator.core.serializer import KeyedSerializer
from gptoss_operator.core.settings import Settings

log = logging.getLogger(__name__)
# Reasons worth an Event when the batch enters them (Warnings unless listed as Normal).
NORMAL_REASONS = {"Running", "Merging", "Completed"}
QUIET_REASONS = {"Creating"}


class BatchReconciler:
    def __init__(self, client: AsyncClient, settings: Settings, emit: EventSink) -> None:
        self.client = client
        self.settings = settings
        self.emit = emit
        self.serializer = KeyedSerializer()
        self.poked: set[tuple[str, str]] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def poke(self, namespace: str, name: str, delay: float) -> None:
        """Reconcile within ``delay`` seconds; pokes meanwhile fold into that one run (the
        workers' progress reports arrive from every shard)."""
        key = (namespace, name)
        if key in self.poked:
            return
        self.poked.add(key)

        async def later() -> None:
            await asyncio.sleep(delay)
            self.poked.discard(key)
            try:
                await self.reconcile(namespace, name)
            except Exception as error:
                log.warning("reconcile of InferenceBatch %s/%s failed: %s", namespace, name, error)

        task = asyncio.get_running_loop().create_task(later())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def reconcile(self, namespace: str, name: str) -> None:
        await self.serializer.run((namespace, name), lambda: self._reconcile(namespace, name))

    async def _reconcile(self, namespace: str, name: str) -> None:
        found = await kube.get_or_none(self.client, InferenceBatchResource, name, namespace)
        if found is None:
            return
        batch = kube.to_dict(found)
        status = batch.get("status") or {}
        if status.get("phase") in FINISHED_PHASES:
            await self._expire(batch)
            return
        spec = InferenceBatchSpec.model_validate(batch["spec"])
        observed = await self._observe(batch, spec)
        fields = batch_status(
            spec.shards,
            InferenceBatchStatus.model_validate(status),
            batch["metadata"].get("generation"),
            observed,
            now(),
        ).to_patch()
        if not status_changed(status, fields):
            return
        await kube.patch_status(self.client, InferenceBatchResource, name, namespace, fields)
        await self._announce(batch, status, fields)
        if fields["phase"] in FINISHED_PHASES:
            batch["status"] = {**status, **fields}
            await self._count_usage(batch, spec)
            await self._expire(batch)

    async def _observe(self, batch: dict[str, Any], spec: InferenceBatchSpec) -> Observed:
        namespace = batch["metadata"]["namespace"]
        name = batch["metadata"]["name"]
        uid = batch["metadata"]["uid"]
        shards = await kube.get_or_none(
            self.client, Job, naming.batch_shards_job_name(name), namespace
        )
        if shards is None or not kube.controlled_by(kube.to_dict(shards), uid):
            # A Job of this name that is not this batch's (one of a batch deleted and
            # created again, not yet collected) is never read as this batch's progress.
            for job in (shards, await kube.get_or_none(
                self.client, Job, naming.batch_merge_job_name(name), namespace
            )):  # fmt: skip
                if job is not None and not kube.controlled_by(kube.to_dict(job), uid):
                    return Observed(waiting=_not_ours(kube.to_dict(job)))
        model_namespace = model_key_of(batch)[0]
        if shards is None:
            model = await kube.get_or_none(
                self.client, GptOssModelResource, spec.modelRef.name, model_namespace
            )
            waiting = _waiting_for(
                namespace, model_namespace, spec.modelRef.name, kube.to_dict(model) or None
            )
            if waiting is not None:
                return Observed(waiting=waiting)
            ctx = self._context(batch, spec, kube.to_dict(model))
            ctx = replace(ctx, key_secret=await self._gateway_key(batch, ctx))
            if model_namespace != namespace:
                try:
                    for manifest in rbac.tenant_batch_identity(
                        ctx.model.name,
                        model_namespace,
                        namespace,
                        self.settings.batch_worker_cluster_role,
                    ):
                        await kube.apply(self.client, manifest)
                except kube.NotOurs as taken:
                    return Observed(waiting=("IdentityTaken", str(taken)))
            shards = await kube.create_or_read(self.client, Job, shards_job(ctx))
        shards_dict = kube.to_dict(shards)
        listed = [
            kube.to_dict(pod)
            async for pod in self.client.list(
                Pod, namespace=namespace, labels={naming.BATCH_LABEL: name}
            )
        ]
        # Only the pods of this batch's Jobs (by the Job controller's uid label).
        pods = [pod for pod in listed if _job_uid(pod) == shards_dict["metadata"]["uid"]]
        observed = Observed(shards_job=shards_dict, trouble=pod_trouble(pods))
        shards_done = job_finished(shards_dict)
        if shards_done is None:
            model = await kube.get_or_none(
                self.client, GptOssModelResource, spec.modelRef.name, model_namespace
            )
            if model is None:  # the shards wait for an engine that is gone
                gone = (
                    "ModelNotFound",
                    f"GptOssModel {model_namespace}/{spec.modelRef.name} does not exist any "
                    "more; the shards wait for its engine (create the model again, or delete "
                    "the batch)",
                )
                return Observed(shards_job=shards_dict, trouble=gone)
            return observed
        failure = None
        if shards_done == "Failed":
            failure = _last_word(pods, naming.COMPONENT_BATCH_SHARDS, "Failed")
        merge = await kube.get_or_none(
            self.client, Job, naming.batch_merge_job_name(name), namespace
        )
        if merge is None:
            model = await kube.get_or_none(
                self.client, GptOssModelResource, spec.modelRef.name, model_namespace
            )
            ctx = self._context(batch, spec, kube.to_dict(model) or _absent(spec))
            merge = await kube.create_or_read(self.client, Job, merge_job(ctx))
        merge_dict = kube.to_dict(merge)
        if not kube.controlled_by(merge_dict, uid):
            return Observed(
                shards_job=shards_dict, trouble=_not_ours(merge_dict), shard_failure=failure
            )
        pods += [pod for pod in listed if _job_uid(pod) == merge_dict["metadata"]["uid"]]
        merged = merge_failure = None
        merge_done = job_finished(merge_dict)
        if merge_done == "Complete":
            merged = _last_word(pods, naming.COMPONENT_BATCH_MERGE, "Succeeded")
        elif merge_done == "Failed":
            merge_failure = _last_word(pods, naming.COMPONENT_BATCH_MERGE, "Failed")
        return Observed(
            shards_job=shards_dict,
            merge_job=merge_dict,
            trouble=observed.trouble,
            shard_failure=failure,
            merged=merged,
            merge_failure=merge_failure,
        )

    async def _gateway_key(self, batch: dict[str, Any], ctx: BatchContext) -> str:
        """The Secret of the batch's gateway key, made now unless its status names one.
        Its hash goes into the status before any shard can present it; the key itself
        is never read back (the operator creates Secrets, it does not read them)."""
        recorded = ((batch.get("status") or {}).get("gatewayKey") or {}).get("secret")
        if recorded:
            return str(recorded)
        key = secrets.token_urlsafe(32)
        digest = gateway_key_sha256(key)
        manifest = gateway_key_secret(ctx, key, digest)
        await kube.create_unread(self.client, manifest)
        fields = {"gatewayKey": {"secret": manifest["metadata"]["name"], "sha256": digest}}
        await kube.patch_status(
            self.client, InferenceBatchResource, ctx.name, ctx.namespace, fields
        )
        return str(manifest["metadata"]["name"])

    def _context(
        self, batch: dict[str, Any], spec: InferenceBatchSpec, model: dict[str, Any]
    ) -> BatchContext:
        metadata = batch["metadata"]
        model_ctx = ModelContext(
            name=spec.modelRef.name,
            namespace=model_key_of(batch)[0],
            uid=str((model.get("metadata") or {}).get("uid") or ""),
            spec=GptOssModelSpec.model_validate(model.get("spec") or {}),
            settings=self.settings,
        )
        return BatchContext(
            name=metadata["name"],
            namespace=metadata["namespace"],
            uid=metadata["uid"],
            spec=spec,
            model=model_ctx,
        )

    async def _announce(
        self, batch: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
    ) -> None:
        """An Event when the batch's phase or reason changes."""
        old = _reason(before)
        new = _reason(after)
        if new == old or new in QUIET_REASONS:
            return
        kind = "Normal" if new in NORMAL_REASONS else "Warning"
        if after.get("phase") == "Failed":
            kind = "Warning"
        await self.emit(batch, kind, new or "Unknown", after.get("message") or "")

    async def _count_usage(self, batch: dict[str, Any], spec: InferenceBatchSpec) -> None:
        """A finished batch's tokens, under its tenant (once: only the write that
        finished it gets here)."""
        namespace = batch["metadata"]["namespace"]
        model_namespace = model_key_of(batch)[0]
        try:
            model = await kube.get_or_none(
                self.client, GptOssModelResource, spec.modelRef.name, model_namespace
            )
        except Exception as error:  # the counter misses it; the batch's status has it
            log.warning("reading the model of finished batch %s failed: %s", namespace, error)
            return
        facts = ModelFacts.from_body(kube.to_dict(model)) if model is not None else None
        count_batch(
            (model_namespace, spec.modelRef.name),
            tenant_of(facts, namespace),
            namespace,
            (batch.get("status") or {}).get("usage") or {},
        )

    async def _expire(self, batch: dict[str, Any]) -> None:
        """Delete a finished batch once its ttlSecondsAfterFinished has passed."""
        ttl = (batch.get("spec") or {}).get("ttlSecondsAfterFinished")
        finished = parse_time((batch.get("status") or {}).get("completionTime"))
        if ttl is None or finished is None:
            return
        metadata = batch["metadata"]
        key = (metadata["namespace"], metadata["name"])
        left = (
            finished + datetime.timedelta(seconds=int(ttl)) - datetime.datetime.now(datetime.UTC)
        ).total_seconds()
        if left <= 0:
            log.info("deleting finished InferenceBatch %s/%s (TTL)", *key)
            await kube.delete_if_present(self.client, InferenceBatchResource, key[1], key[0])
            return
        self.poke(*key, left + 0.5)  # look again when it is due


def _waiting_for(
    namespace: str, model_namespace: str, model: str, found: dict[str, Any] | None
) -> tuple[str, str] | None:
    """Why the shards cannot start yet: no model, a model that does not serve this
    namespace, or one that does not serve yet (a waiting batch counts as demand, so it
    wakes a model scaled to zero)."""
    if found is None:
        return (
            "ModelNotFound",
            f"GptOssModel {model} does not exist in namespace {model_namespace}; the batch "
            "starts once it does",
        )
    if not ModelFacts.from_body(found).serves(namespace, model_namespace):
        return (
            "AccessDenied",
            f"spec.modelRef: GptOssModel {model_namespace}/{model} does not serve namespace "
            f"{namespace} (its spec.access.namespaces); the batch waits until it does",
        )
    status = found.get("status") or {}
    if not status.get("servedModelName"):
        return "WaitingForModel", f"GptOssModel {model} is not set up yet"
    serving = get_condition(status.get("conditions") or [], "Serving") or {}
    if serving.get("status") != "True":
        why = serving.get("message") or serving.get("reason") or "no replica is ready"
        return (
            "WaitingForEngine",
            f"GptOssModel {model} is not serving ({status.get('phase')}: {why}); the "
            "batch starts once it serves",
        )
    return None


def _job_uid(pod: dict[str, Any]) -> str | None:
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get(naming.JOB_CONTROLLER_UID_LABEL)


def _not_ours(job: dict[str, Any]) -> tuple[str, str]:
    name = job["metadata"]["name"]
    owners = job["metadata"].get("ownerReferences") or []
    whose = f"owned by {owners[0].get('kind')} uid {owners[0].get('uid')}" if owners else "unowned"
    return (
        "WaitingForOldJobs",
        f"Job {name} is not this batch's ({whose}: left by an earlier batch of this name, "
        "or made by someone else); the batch starts once it is gone",
    )


def _reason(status: dict[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") in ("Reconciling", "Stalled", "Complete") and (
            condition.get("status") == "True"
        ):
            return str(condition.get("reason"))
    return None


def _absent(spec: InferenceBatchSpec) -> dict[str, Any]:
    """A model that went away after the shards ran: the merge needs only its name."""
    return {"metadata": {"name": spec.modelRef.name}, "spec": {}}


def _component_pods(pods: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    return sorted(
        (
            pod
            for pod in pods
            if pod["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        ),
        key=lambda pod: pod["metadata"].get("creationTimestamp") or "",
    )


def _last_word(pods: list[dict[str, Any]], component: str, phase: str) -> dict[str, Any] | None:
    """The termination message of the component's latest pod that ended in ``phase``
    with one."""
    for pod in reversed(_component_pods(pods, component)):
        if (pod.get("status") or {}).get("phase") == phase:
            message = termination_message(pod)
            if message:
                return message
    return None
