"""The sidecar's writes to InferenceJobs: claims and guarded status updates.

Every write is a JSON Patch with ``test`` operations, so it applies atomically and only
when the job is still in the state the sidecar believes: a claim tests the object's
resourceVersion (optimistic concurrency); later writes test that the job is Running on
this worker's attempt. Two sidecars can therefore never run the same attempt, and a worker
whose job was requeued or deleted learns it on its next write (:class:`LostJob`).

Writes that fail for the apiserver's sake (429, 5xx, timeouts) are retried; a claim whose
answer was lost is resolved by reading the job back. A finished answer is written even
when its attempt lost the lease meanwhile, as long as the job has no result yet: the
answer is what the job is for, and writing it stops any re-run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType

from gptoss_operator.api.common import API_VERSION
from gptoss_operator.api.conditions import timestamp
from gptoss_operator.api.job import FINISHED_PHASES, KIND, Phase
from gptoss_operator.api.resources import InferenceJobResource
from gptoss_operator.core import naming
from gptoss_operator.core.events import post_event
from gptoss_operator.core.retry import is_transient, retry_transient
from gptoss_operator.workers.sidecar import lifecycle
from gptoss_operator.workers.sidecar.keys import job_key, split_key

log = logging.getLogger(__name__)

# Answers that mean the job is not in the state a guarded write expected.
_CHANGED = (404, 409, 422)


class LostJob(Exception):
    """The job is gone, finished, or another worker now owns it."""


def output_config_map(job_name: str, attempt: int, index: int = 0) -> str:
    """The ConfigMaps that keep one attempt's full texts, named by attempt so the status
    and the texts it points to always come from the same attempt."""
    suffix = f"-{index + 1}" if index else ""
    return f"{job_name[:220]}-output-a{attempt}{suffix}"


def claim_facts(job: dict[str, Any]) -> dict[str, Any]:
    """What JobStore.claim reads of a waiting job, without its body (the messages may be
    a MiB or more): a sidecar holds every waiting job of its model."""
    metadata = job["metadata"]
    kept = ("name", "namespace", "creationTimestamp", "resourceVersion", "generation")
    return {
        "metadata": {key: metadata[key] for key in kept if key in metadata},
        "spec": {
            key: value
            for key, value in (job.get("spec") or {}).items()
            if key in ("reasoningLevel", "priority", "maxTokens")
        },
        "status": job.get("status") or {},
    }


class JobStore:
    """Jobs are named by ``job_key`` (namespace/name): a sidecar serves its model's
    namespace and those of its tenants."""

    def __init__(
        self,
        client: AsyncClient,
        model: str,
        model_namespace: str,
        worker: str,
        lease_seconds: int = 30,
    ) -> None:
        self.client = client
        self.model = model
        self.model_namespace = model_namespace
        self.worker = worker
        self.lease_seconds = lease_seconds

    async def _json_patch(self, key: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        namespace, name = split_key(key)
        result = await self.client.patch(
            InferenceJobResource.Status,
            name,
            ops,
            namespace=namespace,
            patch_type=PatchType.JSON,
        )
        return dict(result.to_dict())

    async def get(self, key: str) -> dict[str, Any] | None:
        """The job as stored now (None when deleted), retrying transient errors."""
        namespace, name = split_key(key)

        async def read() -> dict[str, Any] | None:
            try:
                job = await self.client.get(InferenceJobResource, name, namespace=namespace)
            except ApiError as error:
                if error.status.code == 404:
                    return None
                raise
            return dict(job.to_dict())

        return await retry_transient(read, f"reading {key}")

    async def claim(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Take a Pending job for this worker. None when someone else changed it first."""
        metadata = job["metadata"]
        now = timestamp()
        claimed = lifecycle.claim(
            job.get("status") or {},
            worker=self.worker,
            generation=metadata.get("generation"),
            reasoning_level=job["spec"].get("reasoningLevel", "medium"),
            lease_seconds=self.lease_seconds,
            now=now,
        )
        if claimed is None:
            return None
        attempt = claimed["attempts"]
        ops = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": metadata["resourceVersion"],
            },
            {"op": "add", "path": "/status", "value": claimed},
        ]
        key = job_key(job)
        try:
            return await self._json_patch(key, ops)
        except ApiError as error:
            if error.status.code in _CHANGED:
                return None
            if not is_transient(error):
                raise
        except Exception as error:
            if not is_transient(error):
                raise
        # The claim may have been applied with its answer lost: the job says whose it is.
        stored = await self.get(key)
        if stored is not None and _claimed_by(stored, self.worker, attempt, now):
            log.info("claim of %s was applied although its answer was lost", key)
            return stored
        return None

    async def update(
        self,
        key: str,
        attempt: int,
        changes: dict[str, Any],
        remove: tuple[str, ...] = (),
        current: Mapping[str, Any] | None = None,
        retry: bool = True,
    ) -> dict[str, Any]:
        """Apply status changes if the job is Running on this worker's ``attempt``;
        else LostJob. Transient errors are retried unless ``retry`` is False."""
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/status/phase", "value": Phase.RUNNING.value},
            {"op": "test", "path": "/status/worker", "value": self.worker},
            {"op": "test", "path": "/status/attempts", "value": attempt},
        ]
        ops += _set_ops(changes, remove, current)

        async def patch() -> dict[str, Any]:
            try:
                return await self._json_patch(key, ops)
            except ApiError as error:
                if error.status.code in _CHANGED:
                    raise LostJob(f"{key}: {error.status.message}") from error
                raise

        if not retry:
            return await patch()
        return await retry_transient(patch, f"updating {key}")

    async def renew(self, key: str, attempt: int, progress: dict[str, Any]) -> None:
        """One lease renewal, not retried: the next heartbeat is the retry."""
        changes = {"lease/renewTime": timestamp(), **progress}
        await self.update(key, attempt, changes, retry=False)

    async def finish(
        self, key: str, attempt: int, final: dict[str, Any], remove: tuple[str, ...]
    ) -> dict[str, Any]:
        """Write a finished attempt's result.

        The normal case is a guarded update. When the attempt lost its lease meanwhile
        (requeued, or re-run elsewhere) but the job has no result yet, the result is
        written over whatever is in progress (tested against the resourceVersion read):
        the answer exists, and a re-run would only compute it again. LostJob when the job
        is deleted or already finished.
        """
        try:
            return await self.update(key, attempt, final, remove=remove)
        except LostJob:
            pass
        while True:
            stored = await self.get(key)
            status = dict((stored or {}).get("status") or {})
            if stored is None or status.get("phase") in FINISHED_PHASES:
                raise LostJob(f"{key} was deleted or finished before attempt {attempt} ended")
            ops = [
                {
                    "op": "test",
                    "path": "/metadata/resourceVersion",
                    "value": stored["metadata"]["resourceVersion"],
                },
                *_set_ops({**final, "worker": self.worker}, remove, status),
            ]
            try:
                result = await retry_transient(
                    functools.partial(self._json_patch, key, ops), f"finishing {key}"
                )
            except ApiError as error:
                if error.status.code in _CHANGED:
                    continue  # changed again since read: look again
                raise
            log.info("%s: attempt %d's result kept although its lease had lapsed", key, attempt)
            return result

    async def save_output(
        self, job: dict[str, Any], attempt: int, config_maps: list[dict[str, str]]
    ) -> list[str]:
        """Keep full texts in ConfigMaps owned by the job (deleted with it)."""
        names = []
        for index, data in enumerate(config_maps):
            name = output_config_map(job["metadata"]["name"], attempt, index)
            await self._save_config_map(job, attempt, name, data)
            names.append(name)
        return names

    async def _save_config_map(
        self, job: dict[str, Any], attempt: int, name: str, texts: dict[str, str]
    ) -> None:
        metadata = job["metadata"]
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": metadata["namespace"],
                "labels": {
                    "gptoss.ai/inference-job": metadata["name"][:63],
                    naming.MODEL_LABEL: self.model,
                    naming.MODEL_NAMESPACE_LABEL: self.model_namespace,
                },
                "annotations": {"gptoss.ai/attempt": str(attempt), "gptoss.ai/worker": self.worker},
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": KIND,
                        "name": metadata["name"],
                        "uid": metadata["uid"],
                    }
                ],
            },
            "data": texts,
        }

        async def write() -> None:
            try:
                await self.client.create(codecs.from_dict(manifest))
            except ApiError as error:
                if error.status.code != 409:
                    raise
                # This attempt's own earlier write whose answer was lost.
                await self.client.replace(codecs.from_dict(manifest))

        await retry_transient(write, f"saving the output of {metadata['name']} in {name}")

    async def delete_output(self, namespace: str, names: list[str]) -> None:
        """Remove output ConfigMaps whose attempt did not get to write its status."""
        for name in names:
            try:
                await self.client.delete(ConfigMap, name, namespace=namespace)
            except Exception as error:
                log.warning("could not delete %s (the job's deletion will): %s", name, error)

    async def event(self, job: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        await post_event(
            self.client,
            {"apiVersion": API_VERSION, "kind": KIND, **job},
            event_type,
            reason,
            message,
            component="gptoss-sidecar",
        )


def _claimed_by(job: dict[str, Any], worker: str, attempt: int, acquired: str) -> bool:
    status = job.get("status") or {}
    lease = status.get("lease") or {}
    return (
        status.get("phase") == Phase.RUNNING.value
        and status.get("worker") == worker
        and status.get("attempts") == attempt
        and lease.get("acquireTime") == acquired
    )


def _set_ops(
    changes: dict[str, Any], remove: tuple[str, ...], current: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    ops = [
        {"op": "add", "path": f"/status/{key}", "value": value}
        for key, value in changes.items()
        if value is not None
    ]
    present = set(current.keys()) if current is not None else set(remove)
    ops += [{"op": "remove", "path": f"/status/{key}"} for key in remove if key in present]
    return ops
