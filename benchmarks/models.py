"""GptOssModel latencies: apply → claim and download Job created, and download Job
complete → Deployment created, as a client's watch sees them (not the objects' timestamps,
which have one-second resolution)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jobs import percentile
from lightkube import AsyncClient
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import PersistentVolumeClaim
from plane import Plane, model_manifest


async def _first_seen(client: AsyncClient, resource: Any, namespace: str,
                      seen: dict[str, float], predicate: Any = None) -> None:
    async for _, obj in client.watch(resource, namespace=namespace):
        model = (obj.metadata.labels or {}).get("gptoss.ai/model")
        if model and model not in seen and (predicate is None or predicate(obj)):
            seen[model] = time.monotonic()


def _complete(job: Any) -> bool:
    return any(c.type == "Complete" and c.status == "True"
               for c in (job.status.conditions or []))


async def _measure(world: Plane, namespace: str, models: int, gap: float) -> dict[str, Any]:
    client = AsyncClient(world.kube.config, field_manager="bench")
    claims: dict[str, float] = {}
    jobs: dict[str, float] = {}
    completes: dict[str, float] = {}
    deployments: dict[str, float] = {}
    watchers = [
        asyncio.create_task(_first_seen(client, resource, namespace, seen, predicate))
        for resource, seen, predicate in (
            (PersistentVolumeClaim, claims, None), (Job, jobs, None),
            (Job, completes, _complete), (Deployment, deployments, None))
    ]
    await asyncio.sleep(1)
    applied: dict[str, float] = {}
    for index in range(models):
        name = f"m{index:02d}"
        applied[name] = time.monotonic()
        await client.create(model_manifest(name), namespace=namespace)
        await asyncio.sleep(gap)
    deadline = time.monotonic() + 180
    while len(deployments) < models and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    for task in watchers:
        task.cancel()
    await client.close()
    created = [(max(claims[n], jobs[n]) - applied[n]) * 1000
               for n in applied if n in jobs and n in claims]
    rolled = [(deployments[n] - completes[n]) * 1000
              for n in applied if n in deployments and n in completes]
    return {
        "model_apply_to_job_ms": {"p50": percentile(created, 50), "p99": percentile(created, 99)},
        "job_complete_to_deployment_ms": {"p50": percentile(rolled, 50),
                                          "p99": percentile(rolled, 99)},
        "models_served": len(deployments),
    }


def model_lifecycle(world: Plane, models: int = 50, gap: float = 0.2) -> dict[str, Any]:
    namespace = world.namespace("models")
    return asyncio.run(_measure(world, namespace, models, gap))
