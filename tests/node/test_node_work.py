"""Work on the real node and what the kubelet does to it: jobs while the kubelet restarts
a killed sidecar container, a batch run by the Indexed Job's real pods, and a batch pod
evicted mid-run. Nothing here plays the kubelet: containers are started, signalled and
restarted by the kubelet and runc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, codecs
from lightkube.models.core_v1 import PersistentVolumeClaimSpec, VolumeResourceRequirements
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import (
    ConfigMap,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
)
from tests.conftest import ClusterUnderTest
from tests.node.conftest import MODEL, SERVING, ServedModel, kubectl, server_pods
from tests.support import wait_for

from gptoss_operator import naming
from gptoss_operator.api.resources import InferenceBatchResource, InferenceJobResource
from gptoss_sandbox.node import NODE_NAME, NODE_STORAGE_CLASS
from gptoss_sandbox.tiny_gptoss import SCRIPTED_ANSWER

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def job_status(kube: Client, name: str) -> dict[str, Any]:
    found = kube.get(InferenceJobResource, name, namespace=SERVING).to_dict()
    return dict(found.get("status") or {})


def create_jobs(kube: Client, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}-{i}" for i in range(count)]
    for name in names:
        kube.create(
            codecs.from_dict(
                {
                    "apiVersion": "gptoss.ai/v1alpha1",
                    "kind": "InferenceJob",
                    "metadata": {"name": name, "namespace": SERVING},
                    "spec": {
                        "modelRef": {"name": MODEL},
                        "messages": [{"role": "user", "content": f"Say hello ({name})."}],
                        "maxTokens": 128,
                        # A handed-back job is not the job's failure: none may fail.
                        "backoffLimit": 0,
                    },
                }
            )
        )
    return names


def sidecar_restarts(kube: Client) -> dict[str, int]:
    (pod,) = server_pods(kube)
    return {s.name: s.restartCount for s in pod.status.containerStatuses}


def test_jobs_survive_a_sidecar_container_the_kubelet_restarts(
    kube: Client, cluster: ClusterUnderTest, served_model: ServedModel
) -> None:
    """The sidecar gets SIGTERM inside its container while it runs jobs; the kubelet
    restarts it, and every job is answered once, none failed."""
    pod = served_model.pod.metadata.name
    before = sidecar_restarts(kube)
    names = create_jobs(kube, "kill", 16)
    wait_for(
        lambda: any(job_status(kube, n).get("phase") == "Running" for n in names),
        timeout=120,
        interval=0.1,
        message="a job running",
    )
    # PID 1 of the sidecar's container is the sidecar: SIGTERM, as a stop would send.
    killed = kubectl(
        cluster, "exec", "-n", SERVING, pod, "-c", "sidecar", "--", "sh", "-c", "kill 1"
    )
    assert killed.returncode == 0, killed.stderr
    wait_for(
        lambda: sidecar_restarts(kube)["sidecar"] == before["sidecar"] + 1,
        timeout=120,
        interval=0.5,
        message="the kubelet restarting the sidecar container",
    )

    def all_finished() -> list[dict[str, Any]] | None:
        statuses = [job_status(kube, n) for n in names]
        done = all(s.get("phase") in ("Succeeded", "Failed") for s in statuses)
        return statuses if done else None

    statuses = wait_for(all_finished, timeout=300, interval=1, message="every job finished")
    assert [s["phase"] for s in statuses] == ["Succeeded"] * len(names)
    assert all(s["response"] == SCRIPTED_ANSWER for s in statuses)
    handed_back = [s for s in statuses if s.get("voidedAttempts")]
    assert handed_back, "the jobs in flight when the sidecar stopped were handed back"
    assert sidecar_restarts(kube) == {"vllm": before["vllm"], "sidecar": before["sidecar"] + 1}


def batch_lines(count: int) -> str:
    lines = [
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": f"question {i}"}]},
            }
        )
        for i in range(1, count + 1)
    ]
    lines[4] = "{not json"  # line 5
    return "\n".join(lines) + "\n"


def create_batch(kube: Client, name: str, lines: int, **spec: Any) -> None:
    kube.create(
        ConfigMap(
            metadata=ObjectMeta(name=f"{name}-input", namespace=SERVING),
            data={"input.jsonl": batch_lines(lines)},
        )
    )
    kube.create(
        PersistentVolumeClaim(
            metadata=ObjectMeta(name=f"{name}-out", namespace=SERVING),
            spec=PersistentVolumeClaimSpec(
                accessModes=["ReadWriteOnce"],
                storageClassName=NODE_STORAGE_CLASS,
                resources=VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        )
    )
    kube.create(
        InferenceBatchResource(
            metadata=ObjectMeta(name=name, namespace=SERVING),
            spec={
                "modelRef": {"name": MODEL},
                "input": {"configMap": {"name": f"{name}-input"}},
                "output": {"volume": {"claimName": f"{name}-out", "path": "out"}},
                "defaults": {"maxTokens": 128},
                **spec,
            },
        )
    )


def batch_status(kube: Client, name: str) -> dict[str, Any]:
    found = kube.get(InferenceBatchResource, name, namespace=SERVING).to_dict()
    return dict(found.get("status") or {})


def wait_batch_finished(kube: Client, name: str, timeout: float = 600) -> dict[str, Any]:
    return wait_for(
        lambda: (s := batch_status(kube, name)).get("phase") in ("Succeeded", "Failed") and s,
        timeout=timeout,
        interval=1,
        message=f"batch {name} finished",
    )


def output_folder(kube: Client, claim: str) -> Path:
    """Where the claim's files are: its local volume's folder on the node."""
    bound = kube.get(PersistentVolumeClaim, claim, namespace=SERVING)
    volume = kube.get(PersistentVolume, bound.spec.volumeName)
    return Path(volume.spec.local.path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_a_batch_runs_in_the_indexed_jobs_pods(kube: Client, served_model: ServedModel) -> None:
    del served_model
    create_batch(kube, "b1", 24, shards=2, requestsPerShard=2)
    status = wait_batch_finished(kube, "b1")
    assert status["phase"] == "Succeeded", status
    assert status["counts"] == {"total": 24, "succeeded": 23, "failed": 1, "inFlight": 0}
    shards = kube.get(Job, naming.batch_shards_job_name("b1"), namespace=SERVING)
    assert shards.spec.completionMode == "Indexed"
    pods = list(kube.list(Pod, namespace=SERVING, labels={"job-name": shards.metadata.name}))
    index = "batch.kubernetes.io/job-completion-index"
    assert sorted(p.metadata.annotations[index] for p in pods) == ["0", "1"]
    for pod in pods:
        assert pod.spec.nodeName == NODE_NAME
        (state,) = pod.status.containerStatuses
        assert state.state.terminated.exitCode == 0
    folder = output_folder(kube, "b1-out") / "out"
    answers = read_jsonl(folder / "output.jsonl")
    assert sorted(a["custom_id"] for a in answers) == sorted(
        f"req-{i}" for i in range(1, 25) if i != 5
    )
    assert {a["response"]["body"]["choices"][0]["message"]["content"] for a in answers} == {
        SCRIPTED_ANSWER
    }
    (error,) = read_jsonl(folder / "errors.jsonl")
    assert (error["error"]["line"], error["error"]["code"]) == (5, "invalid_json")


def evict(kube: Client, pod: Pod) -> None:
    kube.create(
        Pod.Eviction(metadata=ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace)),
        pod.metadata.name,
        namespace=pod.metadata.namespace,
    )


def test_a_batch_pod_evicted_mid_run_loses_and_repeats_no_line(
    kube: Client, served_model: ServedModel
) -> None:
    del served_model
    create_batch(kube, "b2", 40, shards=1, requestsPerShard=1)
    shard_job = naming.batch_shards_job_name("b2")

    def running_pod_with_progress() -> Pod | None:
        done = sum(
            shard.get("succeeded", 0) + shard.get("failed", 0)
            for shard in (batch_status(kube, "b2").get("shards") or {}).values()
        )
        pods = kube.list(Pod, namespace=SERVING, labels={"job-name": shard_job})
        running = [p for p in pods if p.status.phase == "Running"]
        return running[0] if running and done >= 5 else None

    victim = wait_for(
        running_pod_with_progress, timeout=300, interval=0.5, message="the shard under way"
    )
    evict(kube, victim)
    status = wait_batch_finished(kube, "b2")
    assert status["phase"] == "Succeeded", status
    assert status["counts"] == {"total": 40, "succeeded": 39, "failed": 1, "inFlight": 0}
    pods = list(kube.list(Pod, namespace=SERVING, labels={"job-name": shard_job}))
    assert pods, "the shard's last pod is kept"
    assert victim.metadata.uid not in {p.metadata.uid for p in pods}, "the Job replaced it"
    assert (batch_status(kube, "b2")["shards"]["0"]["worker"]) != victim.metadata.name
    answers = read_jsonl(output_folder(kube, "b2-out") / "out" / "output.jsonl")
    ids = [a["custom_id"] for a in answers]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(1, 41) if i != 5)
    assert len(ids) == len(set(ids)), "no line answered twice in the output"
