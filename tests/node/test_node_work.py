"""Jobs on the real node while the kubelet restarts a killed sidecar container. Nothing
here plays the kubelet: containers are started, signalled and restarted by the kubelet
and runc."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import Client, codecs
from tests.conftest import ClusterUnderTest
from tests.node.conftest import MODEL, SERVING, ServedModel, kubectl, server_pods
from tests.support import wait_for

from gptoss_operator.api.resources import InferenceJobResource
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
