"""The control plane under the tests is a real one: scheduling, Jobs, GC, CRDs with CEL."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import ApiError, Client, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Node, Pod

from tests.conftest import ClusterUnderTest, use_existing_cluster
from tests.support import wait_for

pytestmark = pytest.mark.cluster


def _pod(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.example/idle:1",
                    "resources": {"limits": {"nvidia.com/gpu": gpus}},
                }
            ]
        },
    }


@pytest.mark.skipif(use_existing_cluster(), reason="checks the local plane's build")
def test_apiserver_reports_its_real_version(kube: Client, cluster: ClusterUnderTest) -> None:
    assert cluster.local is not None
    version = cluster.local.request("GET", "/version")
    assert version["gitVersion"] == "v1.37.2"
    assert (version["major"], version["minor"]) == ("1", "37")


def test_fake_gpu_nodes_advertise_gpus(kube: Client) -> None:
    gpu_nodes = [
        node for node in kube.list(Node) if int(node.status.capacity.get("nvidia.com/gpu", "0")) > 0
    ]
    assert len(gpu_nodes) >= 1
    for node in gpu_nodes:
        ready = {c.type: c.status for c in node.status.conditions}
        assert ready.get("Ready") == "True", node.metadata.name


def test_gpu_deployment_becomes_available_on_a_gpu_node(kube: Client, namespace: str) -> None:
    deployment = codecs.from_dict(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gpu-app", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "gpu-app"}},
                "template": {
                    "metadata": {"labels": {"app": "gpu-app"}},
                    "spec": _pod("x", 1)["spec"],
                },
            },
        }
    )
    kube.create(deployment)

    def available() -> bool:
        current = kube.get(Deployment, "gpu-app", namespace=namespace)
        conditions = {c.type: c.status for c in (current.status.conditions or [])}
        return conditions.get("Available") == "True" and current.status.readyReplicas == 1

    wait_for(available, timeout=60, message="Deployment Available")
    pods = list(kube.list(Pod, namespace=namespace, labels={"app": "gpu-app"}))
    assert len(pods) == 1
    node = kube.get(Node, pods[0].spec.nodeName)
    assert int(node.status.capacity["nvidia.com/gpu"]) >= 1
    assert pods[0].status.phase == "Running"


def test_job_completes(kube: Client, namespace: str) -> None:
    job = codecs.from_dict(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once", "namespace": namespace},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "main", "image": "registry.example/task:1"}],
                    }
                },
            },
        }
    )
    kube.create(job)

    def complete() -> bool:
        current = kube.get(Job, "once", namespace=namespace)
        conditions = {c.type: c.status for c in (current.status.conditions or [])}
        return conditions.get("Complete") == "True"

    wait_for(complete, timeout=60, message="Job Complete")
    assert kube.get(Job, "once", namespace=namespace).status.succeeded == 1


def test_pod_asking_for_too_many_gpus_is_unschedulable(kube: Client, namespace: str) -> None:
    kube.create(
        codecs.from_dict({**_pod("greedy", 16), "metadata": {"name": "greedy"}}),
        namespace=namespace,
    )

    def unschedulable() -> Any:
        pod = kube.get(Pod, "greedy", namespace=namespace)
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return condition
        return None

    condition = wait_for(unschedulable, timeout=60, message="PodScheduled=False")
    assert condition.reason == "Unschedulable"
    assert "nvidia.com/gpu" in condition.message
    assert kube.get(Pod, "greedy", namespace=namespace).status.phase == "Pending"


def test_deleting_an_owner_garbage_collects_dependents(kube: Client, namespace: str) -> None:
    owner = kube.create(
        ConfigMap(metadata=ObjectMeta(name="owner"), data={"k": "v"}),
        namespace=namespace,
    )
    dependent = codecs.from_dict(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dependent",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner.metadata.uid,
                    }
                ],
            },
        }
    )
    kube.create(dependent, namespace=namespace)
    kube.delete(ConfigMap, "owner", namespace=namespace)

    def collected() -> bool:
        try:
            kube.get(ConfigMap, "dependent", namespace=namespace)
        except ApiError as error:
            return error.status.code == 404
        return False

    wait_for(collected, timeout=60, message="dependent garbage-collected")


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.tests.gptoss.ai"},
    "spec": {
        "group": "tests.gptoss.ai",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "minReplicas": {"type": "integer"},
                                    "maxReplicas": {"type": "integer"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.maxReplicas",
                                        "message": "minReplicas must not exceed maxReplicas",
                                        "fieldPath": ".minReplicas",
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_with_cel_rule_is_established_and_refuses_invalid_objects(
    kube: Client, namespace: str
) -> None:
    from lightkube.generic_resource import create_namespaced_resource

    try:
        kube.create(codecs.from_dict(WIDGET_CRD))
    except ApiError as error:
        if error.status.code != 409:
            raise

    def established() -> Any:
        crd = kube.get(CustomResourceDefinition, "widgets.tests.gptoss.ai")
        conditions = {c.type: c for c in crd.status.conditions or []}
        assert "NonStructuralSchema" not in conditions
        established = conditions.get("Established")
        return established is not None and established.status == "True"

    wait_for(established, timeout=30, message="CRD Established")
    widget = create_namespaced_resource("tests.gptoss.ai", "v1", "Widget", "widgets")
    good = widget(metadata={"name": "good"}, spec={"minReplicas": 1, "maxReplicas": 2})
    kube.create(good, namespace=namespace)
    bad = widget(metadata={"name": "bad"}, spec={"minReplicas": 3, "maxReplicas": 2})
    with pytest.raises(ApiError) as refused:
        kube.create(bad, namespace=namespace)
    assert refused.value.status.code == 422
    message = refused.value.status.message
    assert "spec.minReplicas" in message
    assert "minReplicas must not exceed maxReplicas" in message
