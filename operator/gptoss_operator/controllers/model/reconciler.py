"""Reconcile one GptOssModel: make its children match the spec, then report status.

Level-based: every call reads the current state and converges from there, so it is
safe to call from any trigger (create, update, resume, a child's event, a timer) and
after an operator restart. Calls for the same model are serialized and coalesced.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, PersistentVolumeClaim
from lightkube.resources.rbac_authorization_v1 import RoleBinding
from lightkube.types import CascadeType, PatchType

from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.api.resources import GptOssModelResource
from gptoss_operator.builders import (
    ModelContext,
    api_key,
    download,
    network,
    rbac,
    serving,
    storage,
)
from gptoss_operator.builders.storage import default_size
from gptoss_operator.controllers.autoscale.decision import zero_message
from gptoss_operator.controllers.autoscale.scaler import Autoscaler
from gptoss_operator.controllers.model import download_retry
from gptoss_operator.controllers.model import status as model_status
from gptoss_operator.controllers.model.watched import Watched
from gptoss_operator.core import kube, metrics, naming
from gptoss_operator.core.events import EventSink
from gptoss_operator.core.naming import RETRY_ANNOTATION
from gptoss_operator.core.quantity import to_bytes
from gptoss_operator.core.serializer import KeyedSerializer
from gptoss_operator.core.settings import Settings

log = logging.getLogger(__name__)

# A claim younger than this is not checked for warning Events yet (it is being bound).
CLAIM_EVENTS_AFTER_SECONDS = 3.0


def _age_seconds(obj: dict[str, Any]) -> float:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return 0.0
    if isinstance(created, str):
        moment = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    else:
        moment = created
    return (datetime.datetime.now(datetime.UTC) - moment).total_seconds()


@dataclass
class AppliedCache:
    """What this process last applied per object, so an unchanged manifest is not sent
    again on every reconcile. Entries expire (and a child's deletion clears its model's
    entries), so objects someone deleted or edited are restored."""

    ttl_seconds: float = 300.0
    entries: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)

    @staticmethod
    def _key(manifest: dict[str, Any]) -> tuple[str, str, str]:
        metadata = manifest["metadata"]
        return (metadata["namespace"], manifest["kind"], metadata["name"])

    @staticmethod
    def _digest(manifest: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()

    def fresh(self, manifest: dict[str, Any]) -> bool:
        entry = self.entries.get(self._key(manifest))
        if entry is None:
            return False
        digest, when = entry
        return digest == self._digest(manifest) and time.monotonic() - when < self.ttl_seconds

    def remember(self, manifest: dict[str, Any]) -> None:
        self.entries[self._key(manifest)] = (self._digest(manifest), time.monotonic())

    def forget(self, namespace: str, model: str) -> None:
        prefix = f"{model}-"
        for key in [k for k in self.entries if k[0] == namespace and k[2].startswith(prefix)]:
            del self.entries[key]


def _current_attempt(jobs: list[dict[str, Any]], digest: str) -> dict[str, Any] | None:
    """The latest download attempt for this source that is not being deleted."""
    ours = [
        job
        for job in jobs
        if (job["metadata"].get("annotations") or {}).get(naming.SOURCE_HASH_ANNOTATION) == digest
        and not job["metadata"].get("deletionTimestamp")
    ]
    return max(ours, key=download_retry.attempt_of, default=None)


@dataclass
class ReportedStatus:
    """The status this process last wrote to each model and the resourceVersion that
    write made: until the watch's view of the model reaches that version, the reconcile
    compares with (and computes Events from) what it wrote, not from the older view."""

    entries: dict[tuple[str, str, str], tuple[dict[str, Any], str]] = field(default_factory=dict)

    def overlay(
        self, key: tuple[str, str, str], seen: dict[str, Any], seen_version: str
    ) -> dict[str, Any]:
        entry = self.entries.get(key)
        if entry is None:
            return seen
        written, version = entry
        if kube.newer_or_same(seen_version, version) is not False:
            # The view holds the write (or the versions say nothing: trust the view).
            del self.entries[key]
            return seen
        merged: dict[str, Any] = merge_patch(seen, written)
        return merged

    def remember(self, key: tuple[str, str, str], status: dict[str, Any], version: str) -> None:
        self.entries[key] = (status, version)

    def forget(self, key: tuple[str, str, str]) -> None:
        self.entries.pop(key, None)


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with a JSON merge patch applied (RFC 7386): None removes a key."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _contains(old: Any, new: Any) -> bool:
    """True when ``old`` already holds every value ``new`` sets (a merge patch of ``new``
    would change nothing)."""
    if isinstance(new, dict):
        return isinstance(old, dict) and all(_contains(old.get(k), v) for k, v in new.items())
    return bool(old == new)


class ModelReconciler:
    def __init__(
        self,
        client: AsyncClient,
        settings: Settings,
        emit: EventSink,
        watched: Watched,
        autoscaler: Autoscaler | None = None,
        indexed: asyncio.Event | None = None,
    ) -> None:
        self.client = client
        self.watched = watched
        self.reported = ReportedStatus()
        # Set once the watches' views hold what the apiserver has: a reconcile on a half
        # filled view would report the model's pods missing.
        self.indexed = indexed
        self.settings = settings
        self.emit = emit
        self.autoscaler = autoscaler
        self.serializer = KeyedSerializer()
        self.applied = AppliedCache()
        self.legacy_checked: set[str] = set()  # uids of models without a legacy binding
        self.api_keys_created: set[str] = set()  # uids of models whose key Secret exists
        self.cleaned: dict[tuple[str, str], str] = {}
        # Claim sizes the apiserver refused, per model, so a refusal is not retried (and
        # reported) on every reconcile: (size, why).
        self.resize_refused: dict[tuple[str, str], tuple[str, str]] = {}

    def forget(self, namespace: str, model: str) -> None:
        """A child of the model went away: apply everything again next time."""
        self.applied.forget(namespace, model)
        self.cleaned.pop((namespace, model), None)

    async def _apply_once(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Apply unless this exact manifest was applied recently; None when skipped."""
        if self.applied.fresh(manifest):
            return None
        applied = await kube.apply(self.client, manifest)
        self.applied.remember(manifest)
        return applied

    async def _ensure_api_key(self, ctx: ModelContext) -> None:
        """Create the model's API key Secret unless it names one (once per model and
        process: the operator may create Secrets but never reads them)."""
        if ctx.uid in self.api_keys_created:
            return
        manifest = api_key.generated_secret(ctx, secrets.token_urlsafe(32))
        if manifest is not None and await kube.create_unread(self.client, manifest):
            log.info("created the API key Secret of %s/%s", ctx.namespace, ctx.name)
        self.api_keys_created.add(ctx.uid)

    async def _remove_legacy_binding(self, ctx: ModelContext) -> None:
        """Unbind the one worker Role of earlier versions (it granted both workers the
        union of their rules); only a binding this model owns."""
        if ctx.uid in self.legacy_checked:
            return
        name = rbac.legacy_binding_name(ctx.name)
        binding = await kube.get_or_none(self.client, RoleBinding, name, ctx.namespace)
        owners = (binding.metadata.ownerReferences or []) if binding is not None else []
        if any(owner.uid == ctx.uid for owner in owners):
            try:
                await self.client.delete(RoleBinding, name, namespace=ctx.namespace)
            except ApiError as error:
                if error.status.code != 404:
                    raise
            log.info("removed the legacy worker binding %s/%s", ctx.namespace, name)
        self.legacy_checked.add(ctx.uid)

    async def reconcile(self, namespace: str, name: str) -> None:
        if self.indexed is not None:
            await self.indexed.wait()
        await self.serializer.run((namespace, name), lambda: self._reconcile(namespace, name))

    async def _reconcile(self, namespace: str, name: str) -> None:
        body = self.watched.model(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        spec = GptOssModelSpec.model_validate(body.get("spec") or {})
        ctx = ModelContext(name, namespace, body["metadata"]["uid"], spec, self.settings)
        annotations = body["metadata"].get("annotations") or {}
        generation = int(body["metadata"].get("generation", 1))
        try:
            observed = await self._converge(ctx, generation, annotations.get(RETRY_ANNOTATION))
        except kube.NotOurs as error:
            # Never adopt: the model waits (Stalled) until the name is free.
            observed = model_status.Observed(
                generation=generation, digest=naming.source_hash(spec), name_in_use=str(error)
            )
        reported = (namespace, name, ctx.uid)
        previous = self.reported.overlay(
            reported, body.get("status") or {}, str(body["metadata"].get("resourceVersion", ""))
        )
        computed = model_status.compute(
            observed,
            previous,
            name=name,
            namespace=namespace,
            replicas=spec.serving.replicas,
            api_key_secret=api_key.reference(ctx),
        )
        patch = computed.patch
        if not _contains(previous, patch):
            try:
                version = await kube.patch_status(
                    self.client, GptOssModelResource, name, namespace, patch
                )
            except ApiError as error:
                if error.status.code == 404:  # deleted while we worked
                    self.reported.forget(reported)
                    return
                raise
            self.reported.remember(reported, merge_patch(previous, patch), version)
        metrics.count("model_reconciles")
        if observed.claim_resize_refused_now and observed.claim_resize_error:
            await self.emit(body, "Warning", "StorageNotExpandable", observed.claim_resize_error)
        if observed.download_retry is not None and observed.download_retry.now:
            attempt = download_retry.attempt_of(observed.job or {})
            await self.emit(
                body,
                "Normal",
                "DownloadRetried",
                f"download attempt {attempt} started ({observed.download_retry.reason})",
            )
        for event_type, reason, message in computed.events:
            await self.emit(body, event_type, reason, message)

    async def _converge(
        self, ctx: ModelContext, generation: int, retry_token: str | None = None
    ) -> model_status.Observed:
        client = self.client
        digest = naming.source_hash(ctx.spec)
        observed = model_status.Observed(generation=generation, digest=digest)

        # The workers' ServiceAccounts must exist before their pods are created (the rest
        # of this step may go along: a model's first children come one round trip sooner).
        await asyncio.gather(
            *(self._apply_once(m) for m in rbac.worker_identities(ctx)),
            self._remove_legacy_binding(ctx),
            self._ensure_api_key(ctx),
        )

        claim_name = naming.claim_name(ctx.name, ctx.spec)
        if ctx.spec.storage.existingClaim:
            claim = await kube.get_or_none(client, PersistentVolumeClaim, claim_name, ctx.namespace)
            observed.claim = kube.to_dict(claim) if claim is not None else None
            observed.claim_missing = claim is None
            if observed.claim_missing:
                return observed
            observed.job = await self._download_job(ctx, digest, generation, retry_token, observed)
        else:
            # A claim the watch does not show is made (or found ours) before the Job that
            # writes into it: a claim of that name someone else made is never written.
            wanted = storage.claim(ctx)
            observed.claim = self.watched.claim(wanted)
            if observed.claim is None:
                observed.claim = await kube.create_or_read_ours(
                    client, PersistentVolumeClaim, wanted
                )
            observed.job = await self._download_job(ctx, digest, generation, retry_token, observed)
        if observed.claim is not None and not ctx.spec.storage.existingClaim:
            await self._grow_claim(ctx, observed)
        claim_age = _age_seconds(observed.claim or {})
        if observed.claim and observed.claim.get("status", {}).get("phase") != "Bound":
            if claim_age > CLAIM_EVENTS_AFTER_SECONDS:
                observed.claim_warning = await self._latest_warning(
                    ctx.namespace, "PersistentVolumeClaim", claim_name
                )
            observed.claim_pending_too_long = claim_age > self.settings.claim_pending_grace_seconds

        job_name = (observed.job or {}).get("metadata", {}).get("name") or (
            naming.download_job_name(ctx.name, digest)
        )
        job_uid = (observed.job or {}).get("metadata", {}).get("uid")
        observed.job_pods = (
            self.watched.pods_of(ctx.namespace, ctx.name, naming.job_pods_selector(job_uid))
            if job_uid
            else []
        )
        existing = self.watched.deployment(ctx.namespace, ctx.name, ctx.uid)
        downloaded = model_status.download_verdict(observed).ok
        served: str | None = None
        if downloaded:
            served = digest
        elif existing is not None:
            annotations = existing["metadata"].get("annotations") or {}
            served = annotations.get(naming.SOURCE_HASH_ANNOTATION)
        if served is not None:
            self._choose_replicas(ctx, existing, observed)
            desired = serving.deployment(ctx, served, observed.replicas)
            applied = await self._apply_once(desired)
            observed.deployment = applied or existing
            if not observed.deployment:
                self.applied.forget(ctx.namespace, ctx.name)
                observed.deployment = await self._apply_once(desired)
            service = serving.service(ctx)
            observed.service = await self._apply_once(service) or service
            policy = network.network_policy(ctx)
            if policy is not None:
                await self._apply_once(policy)
            observed.served_digest = served
            observed.server_pods = self.watched.pods_of(
                ctx.namespace, ctx.name, naming.server_pods_selector(ctx.name, ctx.uid)
            )
        if downloaded and self.cleaned.get((ctx.namespace, ctx.name)) != digest:
            await self._delete_stale_jobs(ctx, job_name)
            self.cleaned[(ctx.namespace, ctx.name)] = digest
        return observed

    def _choose_replicas(
        self, ctx: ModelContext, existing: dict[str, Any] | None, observed: model_status.Observed
    ) -> None:
        """spec.serving.replicas, or the autoscaler's count when the model has a policy.
        A Deployment scaled by hand is applied again (the model says how many pods)."""
        deployed = ((existing or {}).get("spec") or {}).get("replicas")
        policy = ctx.spec.serving.autoscaling
        if policy is None or self.autoscaler is None:
            if self.autoscaler is not None:
                self.autoscaler.forget(ctx.namespace, ctx.name)
            observed.replicas = ctx.spec.serving.replicas
        else:
            target = policy.target(ctx.spec.sidecar.concurrency)
            autoscaler = self.autoscaler
            observed.replicas = autoscaler.replicas_for(
                ctx.namespace, ctx.name, policy, target, deployed
            )
            last = autoscaler.states[(ctx.namespace, ctx.name)].last
            observed.zero_message = zero_message(policy, last)
            observed.waking = autoscaler.waking(ctx.namespace, ctx.name)
            observed.autoscaling = autoscaler.status_of(ctx.namespace, ctx.name)
        if deployed is not None and deployed != observed.replicas:
            self.applied.forget(ctx.namespace, ctx.name)

    async def _grow_claim(self, ctx: ModelContext, observed: model_status.Observed) -> None:
        """Raise the claim's request to spec.storage.size when that grew. Kubernetes
        grows bound claims whose StorageClass allows expansion; it refuses the others,
        and the model's status says so."""
        claim = observed.claim or {}
        desired = ctx.spec.storage.size or default_size(ctx.spec)
        requested = claim.get("spec", {}).get("resources", {}).get("requests", {}).get("storage")
        if requested is None or to_bytes(desired) <= to_bytes(str(requested)):
            return
        key = (ctx.namespace, ctx.name)
        refused = self.resize_refused.get(key)
        if refused is not None and refused[0] == desired:
            observed.claim_resize_error = refused[1]
            return
        name = claim["metadata"]["name"]
        try:
            grown = await self.client.patch(
                PersistentVolumeClaim,
                name,
                {"spec": {"resources": {"requests": {"storage": desired}}}},
                namespace=ctx.namespace,
                patch_type=PatchType.MERGE,
            )
        except ApiError as error:
            if error.status.code not in (403, 422):
                raise
            why = (
                f"spec.storage.size {desired} cannot be applied: claim {name} "
                f"({requested}) cannot grow ({error.status.message}); use a StorageClass "
                "with allowVolumeExpansion, or a new claim (spec.storage.existingClaim)"
            )
            self.resize_refused[key] = (desired, why)
            observed.claim_resize_error = why
            observed.claim_resize_refused_now = True
            return
        log.info("claim %s/%s grows from %s to %s", ctx.namespace, name, requested, desired)
        observed.claim = kube.to_dict(grown)

    async def _download_job(
        self,
        ctx: ModelContext,
        digest: str,
        generation: int,
        retry_token: str | None,
        observed: model_status.Observed,
    ) -> dict[str, Any]:
        """The source's current download Job: created when missing, replaced by the
        next attempt when a failed one is due to run again.

        The watch's view decides, except that a Job is created (attempt 0, or the next
        one) only when a live read agrees: a view a moment behind a retry would start
        an attempt again."""
        selector = naming.download_selector(ctx.name)

        def plan(job: dict[str, Any] | None) -> download_retry.RetryPlan | None:
            if job is None:
                return None
            return download_retry.plan_retry(
                job,
                generation,
                retry_token,
                datetime.datetime.now(datetime.UTC),
                self.settings.download_retry_seconds,
                self.settings.download_retry_cap_seconds,
            )

        current = _current_attempt(self.watched.jobs_of(ctx.namespace, ctx.name, ctx.uid), digest)
        retry = plan(current)
        if current is None or (retry is not None and retry.now):
            listed = self.client.list(Job, namespace=ctx.namespace, labels=dict[str, Any](selector))
            live = [
                job
                async for job in (kube.to_dict(job) async for job in listed)
                if kube.controlled_by(job, ctx.uid)
            ]
            current = _current_attempt(live, digest)
            retry = plan(current)
        if current is None:
            manifest = download.job(ctx, digest, 0, generation, retry_token)
            return await kube.create_or_read_ours(self.client, Job, manifest)
        observed.download_retry = retry
        if retry is None or not retry.now:
            return current
        attempt = download_retry.attempt_of(current) + 1
        log.info(
            "download of %s/%s runs again (attempt %d, %s)",
            ctx.namespace,
            ctx.name,
            attempt,
            retry.reason,
        )
        manifest = download.job(ctx, digest, attempt, generation, retry_token)
        created = await kube.create_or_read_ours(self.client, Job, manifest)
        try:
            await self.client.delete(
                Job,
                current["metadata"]["name"],
                namespace=ctx.namespace,
                cascade=CascadeType.BACKGROUND,
            )
        except ApiError as error:
            if error.status.code != 404:
                raise
        return created

    async def _latest_warning(self, namespace: str, kind: str, name: str) -> str | None:
        newest: tuple[str, str] | None = None
        fields = {"involvedObject.kind": kind, "involvedObject.name": name, "type": "Warning"}
        async for event in self.client.list(
            Event, namespace=namespace, fields=dict[str, Any](fields)
        ):
            data = kube.to_dict(event)
            when = str(data.get("lastTimestamp") or data.get("eventTime") or "")
            if newest is None or when >= newest[0]:
                newest = (when, str(data.get("message", "")))
        return newest[1] if newest else None

    async def _delete_stale_jobs(self, ctx: ModelContext, keep: str) -> None:
        selector = naming.download_selector(ctx.name)
        async for job in self.client.list(
            Job, namespace=ctx.namespace, labels=dict[str, Any](selector)
        ):
            name = job.metadata.name if job.metadata else None
            if name and name != keep and kube.controlled_by(kube.to_dict(job), ctx.uid):
                log.info("deleting superseded download Job %s/%s", ctx.namespace, name)
                await self.client.delete(
                    Job, name, namespace=ctx.namespace, cascade=CascadeType.BACKGROUND
                )
