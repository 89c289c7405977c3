"""The sidecar's guarded writes against the real apiserver: a stale attempt cannot write,
a finished answer is kept over a re-run, and each attempt's output has its own ConfigMap.

Two JobStores play two sidecars; the operator's own requeue decision (janitor) plays a
lapsed lease, applied at a moment past the lease's expiry.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType

from gptoss_operator.api.job import Phase
from gptoss_operator.api.job_status import phase_fields, with_conditions
from gptoss_operator.api.resources import InferenceJobResource
from gptoss_operator.controllers.facts import JobFacts
from gptoss_operator.controllers.job.janitor import decide, status_patch
from gptoss_operator.workers.sidecar.store import JobStore, LostJob
from tests.cluster.job_helpers import job_manifest
from tests.conftest import ClusterUnderTest

pytestmark = [pytest.mark.cluster, pytest.mark.faults]


@pytest.fixture
async def client(cluster: ClusterUnderTest, crds: list[str]) -> AsyncIterator[AsyncClient]:
    del crds
    async_client = AsyncClient(
        KubeConfig.from_file(str(cluster.kubeconfig)), field_manager="gptoss-tests"
    )
    yield async_client
    await async_client.close()


async def _job(client: AsyncClient, namespace: str) -> dict[str, Any]:
    name = f"j-{uuid.uuid4().hex[:8]}"
    manifest = job_manifest(name, "m")
    await client.create(InferenceJobResource.from_dict(manifest), namespace=namespace)
    return await _get(client, namespace, name)


async def _get(client: AsyncClient, namespace: str, name: str) -> dict[str, Any]:
    job = await client.get(InferenceJobResource, name, namespace=namespace)
    return dict(job.to_dict())


async def _lease_lapses(client: AsyncClient, namespace: str, name: str) -> dict[str, Any]:
    """What the operator does when the lease is not renewed: requeue (Pending)."""
    facts = JobFacts.from_body(await _get(client, namespace, name))
    now = datetime.datetime.now(datetime.UTC)
    action = decide(facts, "Ready", now, lease_age=300)
    assert action is not None
    assert action.reason == "WorkerLost"
    await client.patch(
        InferenceJobResource.Status,
        name,
        status_patch(facts, action),
        namespace=namespace,
        patch_type=PatchType.JSON,
    )
    return await _get(client, namespace, name)


def _final(job: dict[str, Any], answer: str) -> dict[str, Any]:
    done = with_conditions(job["status"], Phase.SUCCEEDED, "Completed", "done", 1)
    return {"response": answer, "completionTime": "2026-01-01T00:00:00Z", **phase_fields(done)}


async def test_a_requeued_attempt_can_no_longer_write(client: AsyncClient, namespace: str) -> None:
    a = JobStore(client, "m", namespace, "worker-a")
    job = await _job(client, namespace)
    name = job["metadata"]["name"]
    key = f"{namespace}/{name}"
    claimed = await a.claim(job)
    assert claimed is not None
    assert claimed["status"]["attempts"] == 1
    requeued = await _lease_lapses(client, namespace, name)
    # The requeue keeps worker and attempts; the phase is what says the attempt is over.
    assert requeued["status"]["phase"] == "Pending"
    assert requeued["status"]["worker"] == "worker-a"
    with pytest.raises(LostJob):
        await a.update(key, 1, {"message": "a stale progress report"})
    after = await _get(client, namespace, name)
    assert after["status"]["message"] != "a stale progress report"


async def test_a_finished_answer_is_kept_over_a_rerun(client: AsyncClient, namespace: str) -> None:
    a = JobStore(client, "m", namespace, "worker-a")
    b = JobStore(client, "m", namespace, "worker-b")
    job = await _job(client, namespace)
    name = job["metadata"]["name"]
    key = f"{namespace}/{name}"
    claimed_a = await a.claim(job)
    assert claimed_a is not None
    requeued = await _lease_lapses(client, namespace, name)
    claimed_b = await b.claim(requeued)
    assert claimed_b is not None
    assert claimed_b["status"]["attempts"] == 2
    # Attempt 1 ends while attempt 2 runs: its answer is the job's result.
    await a.finish(key, 1, _final(claimed_a, "answer of attempt 1"), ("lease",))
    done = await _get(client, namespace, name)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["response"] == "answer of attempt 1"
    assert done["status"]["worker"] == "worker-a"
    assert "lease" not in done["status"]
    # Attempt 2 learns on its next write, and cannot replace the result when it ends.
    with pytest.raises(LostJob):
        await b.renew(key, 2, {})
    with pytest.raises(LostJob):
        await b.finish(key, 2, _final(claimed_b, "answer of attempt 2"), ("lease",))
    assert (await _get(client, namespace, name))["status"]["response"] == "answer of attempt 1"


async def test_each_attempt_writes_its_own_output(client: AsyncClient, namespace: str) -> None:
    a = JobStore(client, "m", namespace, "worker-a")
    b = JobStore(client, "m", namespace, "worker-b")
    job = await _job(client, namespace)
    names_a = await a.save_output(job, 1, [{"response": "one"}, {"response": " more"}])
    names_b = await b.save_output(job, 2, [{"response": "two"}])
    assert not set(names_a) & set(names_b)
    # Saving again (an answer lost in transit) replaces only the attempt's own data.
    assert await a.save_output(job, 1, [{"response": "one"}, {"response": " more"}]) == names_a
    stored = {
        name: (await client.get(ConfigMap, name, namespace=namespace)).data
        for name in names_a + names_b
    }
    assert [stored[n] for n in names_a] == [{"response": "one"}, {"response": " more"}]
    assert stored[names_b[0]] == {"response": "two"}
    config_map = await client.get(ConfigMap, names_b[0], namespace=namespace)
    assert config_map.metadata.ownerReferences[0].uid == job["metadata"]["uid"]
    assert config_map.metadata.labels["gptoss.ai/model"] == "m"
    assert config_map.metadata.labels["gptoss.ai/model-namespace"] == namespace
    await a.delete_output(namespace, names_a)
    remaining = [cm.metadata.name async for cm in client.list(ConfigMap, namespace=namespace)]
    assert not set(names_a) & set(remaining)
    assert names_b[0] in remaining
