"""Operator latency over 50 GptOssModels on the local control plane:
apply -> claim and download Job created, and download Job complete -> Deployment created.
(Goal: p99 under 1 s for each on a 2-core machine.)"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import plane_with_operator, summary  # noqa: E402
from lightkube import AsyncClient, Client  # noqa: E402
from lightkube.resources.apps_v1 import Deployment  # noqa: E402
from lightkube.resources.batch_v1 import Job  # noqa: E402
from lightkube.resources.core_v1 import PersistentVolumeClaim  # noqa: E402

from gptoss_operator.api.resources import GptOssModelResource  # noqa: E402

NAMESPACE = "bench"
MODELS = 50


async def watch_first_seen(client: AsyncClient, resource: Any, seen: dict[str, float],
                           predicate: Any = None) -> None:
    async for _, obj in client.watch(resource, namespace=NAMESPACE):
        model = (obj.metadata.labels or {}).get("gptoss.ai/model")
        if model and model not in seen and (predicate is None or predicate(obj)):
            seen[model] = time.monotonic()


def job_complete(job: Any) -> bool:
    return any(c.type == "Complete" and c.status == "True"
               for c in (job.status.conditions or []))


async def measure(kube: Client) -> None:
    client = AsyncClient(kube.config, field_manager="bench")
    claims: dict[str, float] = {}
    jobs: dict[str, float] = {}
    completes: dict[str, float] = {}
    deployments: dict[str, float] = {}
    watchers = [
        asyncio.create_task(watch_first_seen(client, resource, seen, predicate))
        for resource, seen, predicate in (
            (PersistentVolumeClaim, claims, None),
            (Job, jobs, None),
            (Job, completes, job_complete),
            (Deployment, deployments, None),
        )
    ]
    await asyncio.sleep(1)
    applied: dict[str, float] = {}
    for index in range(MODELS):
        name = f"m{index:02d}"
        applied[name] = time.monotonic()
        await client.create(GptOssModelResource.from_dict({
            "apiVersion": "gptoss.ai/v1alpha1", "kind": "GptOssModel",
            "metadata": {"name": name}, "spec": {"source": {"repo": "openai/gpt-oss-20b"}},
        }), namespace=NAMESPACE)
        await asyncio.sleep(0.2)
    deadline = time.monotonic() + 180
    while len(deployments) < MODELS and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    for task in watchers:
        task.cancel()
    created = [max(claims[n], jobs[n]) - applied[n] for n in applied if n in jobs and n in claims]
    rolled = [deployments[n] - completes[n] for n in applied
              if n in deployments and n in completes]
    print(f"models: {MODELS}, Deployments created: {len(deployments)}")
    print(summary("apply -> PVC and Job created", created))
    print(summary("Job complete -> Deployment created", rolled))


def main() -> None:
    with plane_with_operator(NAMESPACE) as (_cluster, kube):
        asyncio.run(measure(kube))


if __name__ == "__main__":
    main()
