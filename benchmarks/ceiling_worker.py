"""A bare worker for the apiserver ceiling: the apiserver traffic of a sidecar answering
short InferenceJobs, with none of its logic.

Per job it makes the sidecar's two writes (the claim, a JSON patch tested against the
job's resourceVersion; the result, a JSON patch tested against the claim) and it keeps
the sidecar's watch (the model's jobs, by field selector). No engine, no harmony, no
lease renewals, no retries: the jobs/s that N of these reach on a box is the most N
sidecars could reach there. Workers split the jobs by a hash of their names, so no two
race for one job.

    python benchmarks/ceiling_worker.py NAMESPACE MODEL INDEX WORKERS [CONCURRENCY]
"""

from __future__ import annotations

import asyncio
import datetime
import sys
import zlib
from typing import Any

from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from gptoss_operator.core.kube import new_client

JOBS = create_namespaced_resource(
    "gptoss.ai", "v1alpha1", "InferenceJob", "inferencejobs", verbs=None
)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(type_: str, status: str, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": _now(), "observedGeneration": generation}


def claim_ops(job: dict[str, Any], worker: str) -> list[dict[str, Any]]:
    status = job.get("status") or {}
    generation = int(job["metadata"].get("generation") or 1)
    attempt = int(status.get("attempts") or 0) + 1
    now = _now()
    claimed = {
        **status,
        "phase": "Running",
        "observedGeneration": generation,
        "message": f"running on {worker} (attempt {attempt})",
        "conditions": [
            _condition("Scheduled", "True", "Running", f"running on {worker}", generation),
            _condition("Ready", "False", "Running", f"running on {worker}", generation),
            _condition("Reconciling", "True", "Running", f"running on {worker}", generation),
            _condition("Stalled", "False", "Running", "", generation),
        ],
        "worker": worker,
        "attempts": attempt,
        "startTime": now,
        "reasoningLevel": "medium",
        "lease": {"holder": worker, "acquireTime": now, "renewTime": now,
                  "durationSeconds": 30},
    }
    return [
        {"op": "test", "path": "/metadata/resourceVersion",
         "value": job["metadata"]["resourceVersion"]},
        {"op": "add", "path": "/status", "value": claimed},
    ]


def result_ops(claimed: dict[str, Any], worker: str) -> list[dict[str, Any]]:
    status = claimed["status"]
    generation = int(claimed["metadata"].get("generation") or 1)
    fields = {
        "response": "The answer, in a few words.",
        "analysis": "A short line of reasoning before the answer.",
        "commentary": "",
        "reasoningLevel": "medium",
        "finishReason": "stop",
        "usage": {"promptTokens": 80, "completionTokens": 64, "totalTokens": 144},
        "completionTime": _now(),
        "duration": "0.1s",
        "timeToFirstTokenSeconds": 0.01,
        "tokensPerSecond": 640.0,
        "phase": "Succeeded",
        "message": "the model answered",
        "observedGeneration": generation,
        "conditions": [
            _condition("Scheduled", "True", "Running", f"running on {worker}", generation),
            _condition("Ready", "True", "Completed", "the model answered", generation),
            _condition("Reconciling", "False", "Completed", "the model answered", generation),
            _condition("Stalled", "False", "Completed", "", generation),
        ],
    }
    return [
        {"op": "test", "path": "/status/phase", "value": "Running"},
        {"op": "test", "path": "/status/worker", "value": worker},
        {"op": "test", "path": "/status/attempts", "value": status["attempts"]},
        *({"op": "add", "path": f"/status/{key}", "value": value}
          for key, value in fields.items()),
        {"op": "remove", "path": "/status/lease"},
    ]


async def work(namespace: str, model: str, index: int, workers: int, concurrency: int) -> None:
    worker = f"ceiling-{index}"
    client = new_client(worker)  # the sidecars' client: the same connection pool
    slots = asyncio.Semaphore(concurrency)
    taken: set[str] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def answer(job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        async with slots:
            try:
                claimed = await client.patch(JOBS.Status, name, claim_ops(job, worker),
                                             namespace=namespace, patch_type=PatchType.JSON)
                await client.patch(JOBS.Status, name, result_ops(claimed.to_dict(), worker),
                                   namespace=namespace, patch_type=PatchType.JSON)
            except Exception as error:  # a benchmark worker: say it, the count shows it
                print(f"{name}: {error}", file=sys.stderr, flush=True)

    fields = {"spec.modelRef.name": model}
    while True:
        async for event, obj in client.watch(JOBS, namespace=namespace, fields=fields):
            job = obj.to_dict()
            name = job["metadata"]["name"]
            phase = (job.get("status") or {}).get("phase") or "Pending"
            if (event == "DELETED" or phase != "Pending" or name in taken
                    or zlib.crc32(name.encode()) % workers != index):
                continue
            taken.add(name)
            task = asyncio.create_task(answer(job))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


if __name__ == "__main__":
    namespace, model, index, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    concurrency = int(sys.argv[5]) if len(sys.argv) > 5 else 64
    asyncio.run(work(namespace, model, index, workers, concurrency))
