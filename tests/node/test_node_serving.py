"""The product as pods on a real node: the chart's operator, a model's download Job and its
vLLM pod (vLLM and the sidecar as two containers), and a job answered by that sidecar.

Everything a pod gets from its spec (the securityContext, the projected token, probes, env
from fieldRefs, termination messages) is applied by the kubelet and runc here, not by us.
"""

from __future__ import annotations

import pytest
from lightkube import ApiError, Client, codecs
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod
from tests.conftest import ClusterUnderTest
from tests.node.conftest import (
    MODEL,
    SERVING,
    ChartRelease,
    ServedModel,
    kubectl,
    pod_ready,
)
from tests.support import wait_for

from gptoss_operator.api.resources import InferenceJobResource
from gptoss_operator.core import naming
from gptoss_sandbox.images import ImageArchive
from gptoss_sandbox.node import NODE_NAME
from gptoss_sandbox.tiny_gptoss import SCRIPTED_ANSWER

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def test_the_chart_installs_and_its_operator_runs_as_a_pod(
    cluster: ClusterUnderTest, chart_release: ChartRelease, product_image: ImageArchive
) -> None:
    pod = chart_release.operator_pod
    assert pod.spec.nodeName == NODE_NAME
    (status,) = pod.status.containerStatuses
    assert status.ready
    assert status.restartCount == 0
    assert status.image.endswith(product_image.reference.split("/", 1)[1])
    # The kubelet ran it as the chart says: uid 10001, a read-only root filesystem.
    whoami = kubectl(
        cluster, "exec", "-n", chart_release.namespace, pod.metadata.name, "--", "id", "-u"
    )
    assert whoami.stdout.strip() == "10001", whoami.stderr
    write = kubectl(
        cluster, "exec", "-n", chart_release.namespace, pod.metadata.name, "--",
        "touch", "/opt/gptoss/probe",
    )  # fmt: skip
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr


def test_a_model_downloads_in_a_job_pod_and_serves_from_two_containers(
    kube: Client, cluster: ClusterUnderTest, served_model: ServedModel
) -> None:
    # The download ran as a real pod of the Job, on the node, and exited 0.
    job = next(iter(kube.list(Job, namespace=SERVING, labels={naming.MODEL_LABEL: MODEL})))
    assert job.status.succeeded == 1
    (download_pod,) = kube.list(Pod, namespace=SERVING, labels={"job-name": job.metadata.name})
    assert download_pod.spec.nodeName == NODE_NAME
    (terminated,) = download_pod.status.containerStatuses
    assert terminated.state.terminated.exitCode == 0
    # vLLM and the sidecar, both Ready, in one pod on the node.
    pod = kube.get(Pod, served_model.pod.metadata.name, namespace=SERVING)
    assert pod.spec.nodeName == NODE_NAME
    assert pod_ready(pod)
    statuses = {s.name: s for s in pod.status.containerStatuses}
    assert set(statuses) == {"vllm", "sidecar"}
    assert all(s.ready for s in statuses.values())
    # The device plugin's fake GPU was allocated to the engine container.
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    # runc mounted both root filesystems read-only, as the restricted spec asks.
    for container in ("vllm", "sidecar"):
        write = kubectl(
            cluster, "exec", "-n", SERVING, pod.metadata.name, "-c", container, "--",
            "sh", "-c", "touch /probe",
        )  # fmt: skip
        assert write.returncode != 0, container
        assert "Read-only file system" in write.stderr, (container, write.stderr)


def test_a_job_is_answered_by_the_sidecar_container(
    kube: Client, served_model: ServedModel
) -> None:
    job = codecs.from_dict(
        {
            "apiVersion": "gptoss.ai/v1alpha1",
            "kind": "InferenceJob",
            "metadata": {"name": "hello", "namespace": SERVING},
            "spec": {
                "modelRef": {"name": MODEL},
                "messages": [{"role": "user", "content": "Say hello."}],
                "maxTokens": 64,
            },
        }
    )
    kube.create(job)

    def finished() -> dict[str, object] | None:
        status = kube.get(InferenceJobResource, "hello", namespace=SERVING).to_dict()
        current = status.get("status") or {}
        return current if current.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(finished, timeout=300, interval=1, message="the job to finish")
    assert status["phase"] == "Succeeded", status
    assert status["response"] == SCRIPTED_ANSWER
    assert status["worker"] == served_model.pod.metadata.name


def test_the_restricted_level_is_enforced_where_everything_ran(
    kube: Client, served_model: ServedModel
) -> None:
    """The tier's pods were all admitted by a namespace that refuses a privileged one."""
    del served_model
    privileged = codecs.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged", "namespace": SERVING},
            "spec": {
                "containers": [
                    {
                        "name": "c",
                        "image": "localhost/anything",
                        "securityContext": {"privileged": True},
                    }
                ]
            },
        }
    )
    with pytest.raises(ApiError) as refused:
        kube.create(privileged)
    assert refused.value.status.code == 403
    assert "violates PodSecurity" in str(refused.value.status.message)
