"""The sidecar's writes to InferenceJobs: claims and guarded status updates.

Every write is a JSON Patch with ``test`` operations, so it applies atomically and only
when the job is still in the state the sidecar believes: a claim tests the object's
resourceVersion (optimistic concurrency); later writes test that this worker still holds
the same attempt. Two sidecars can therefore never run the same attempt, and a worker
whose job was requeued or deleted learns it on its next write.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.types import PatchType

from gptoss_operator.api.common import API_VERSION
from gptoss_operator.api.job import KIND, Phase
from gptoss_operator.api.resources import InferenceJobResource
from gptoss_operator.conditions import timestamp
from gptoss_operator.events import post_event
from gptoss_operator.job_status import with_conditions

log = logging.getLogger(__name__)


class LostJob(Exception):
    """The job is gone, or another worker now owns it."""


class JobStore:
    def __init__(
        self, client: AsyncClient, namespace: str, worker: str, lease_seconds: int = 30
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.worker = worker
        self.lease_seconds = lease_seconds

    async def _json_patch(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        result = await self.client.patch(
            InferenceJobResource.Status,
            name,
            ops,
            namespace=self.namespace,
            patch_type=PatchType.JSON,
        )
        return dict(result.to_dict())

    async def claim(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Take a Pending job for this worker. None when someone else changed it first."""
        status = dict(job.get("status") or {})
        if (status.get("phase") or Phase.PENDING.value) != Phase.PENDING.value:
            return None
        metadata = job["metadata"]
        attempt = int(status.get("attempts") or 0) + 1
        now = datetime.datetime.now(datetime.UTC)
        claimed = with_conditions(
            status,
            Phase.RUNNING,
            "Running",
            f"running on {self.worker} (attempt {attempt})",
            metadata.get("generation"),
        )
        claimed.update(
            worker=self.worker,
            attempts=attempt,
            startTime=status.get("startTime") or timestamp(now),
            reasoningLevel=job["spec"].get("reasoningLevel", "medium"),
            lease={
                "holder": self.worker,
                "acquireTime": timestamp(now),
                "renewTime": timestamp(now),
                "durationSeconds": self.lease_seconds,
            },
        )
        ops = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": metadata["resourceVersion"],
            },
            {"op": "add", "path": "/status", "value": claimed},
        ]
        try:
            return await self._json_patch(metadata["name"], ops)
        except ApiError as error:
            if error.status.code in (404, 409, 422):
                return None
            raise

    async def update(
        self,
        name: str,
        attempt: int,
        changes: dict[str, Any],
        remove: tuple[str, ...] = (),
        current: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Apply status changes if this worker still holds ``attempt``; else LostJob."""
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": "/status/worker", "value": self.worker},
            {"op": "test", "path": "/status/attempts", "value": attempt},
        ]
        for key, value in changes.items():
            if value is not None:
                ops.append({"op": "add", "path": f"/status/{key}", "value": value})
        present = set((current or {}).keys()) if current is not None else set(remove)
        for key in remove:
            if key in present:
                ops.append({"op": "remove", "path": f"/status/{key}"})
        try:
            return await self._json_patch(name, ops)
        except ApiError as error:
            if error.status.code in (404, 409, 422):
                raise LostJob(f"{name}: {error.status.message}") from error
            raise

    async def renew(self, name: str, attempt: int, progress: dict[str, Any]) -> None:
        now = timestamp()
        changes = {"lease/renewTime": now, **progress}
        await self.update(name, attempt, changes)

    async def save_output(self, job: dict[str, Any], name: str, texts: dict[str, str]) -> None:
        """Keep full texts in a ConfigMap owned by the job (deleted with it)."""
        metadata = job["metadata"]
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {"gptoss.ai/inference-job": metadata["name"][:63]},
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
        try:
            await self.client.create(codecs.from_dict(manifest))
        except ApiError as error:
            if error.status.code != 409:
                raise
            await self.client.replace(codecs.from_dict(manifest))

    async def event(self, job: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        await post_event(
            self.client,
            {"apiVersion": API_VERSION, "kind": KIND, **job},
            event_type,
            reason,
            message,
            component="gptoss-sidecar",
        )
