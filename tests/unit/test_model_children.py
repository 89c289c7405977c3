"""The model's children as the watches saw them: what is a model's, and how it is found."""

from __future__ import annotations

from typing import Any

from gptoss_operator import naming
from gptoss_operator.children import Children, index_entry


def _obj(name: str, labels: dict[str, str], namespace: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}}


def test_a_child_is_filed_under_its_model_and_a_batchs_objects_are_not() -> None:
    server_pod = _obj("m-vllm-1", naming.labels("m", naming.COMPONENT_SERVER))
    assert index_entry(server_pod) == {("ns", "m"): server_pod}
    shard_pod = _obj("b-shards-0", naming.batch_labels("m", "b", "shard"))
    assert index_entry(shard_pod) is None, "a batch's pods belong to the batch"
    assert index_entry(_obj("x", {"app.kubernetes.io/managed-by": naming.MANAGED_BY})) is None


def test_children_are_found_by_selector_and_name_within_their_model() -> None:
    download = naming.labels("m", naming.COMPONENT_DOWNLOAD)
    server = naming.labels("m", naming.COMPONENT_SERVER)
    pods = {
        ("ns", "m"): [
            _obj("dl-1", {**download, "job-name": "m-download-1"}),
            _obj("dl-0", {**download, "job-name": "m-download-0"}),
            _obj("srv", server),
        ],
        ("other", "m"): [_obj("srv", server, namespace="other")],
    }
    deployments = {("ns", "m"): [_obj("m-vllm", server)]}
    views = Children(claims={}, jobs={}, pods=pods, deployments=deployments)
    found = views.pods_of("ns", "m", {"job-name": "m-download-1"})
    assert [p["metadata"]["name"] for p in found] == ["dl-1"]
    servers = views.pods_of("ns", "m", naming.server_selector("m"))
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in servers] == [("ns", "srv")]
    assert views.pods_of("ns", "n", naming.server_selector("n")) == []
    deployment = views.deployment("ns", "m", "m-vllm")
    assert deployment is not None
    assert deployment["metadata"]["name"] == "m-vllm"
    assert views.deployment("other", "m", "m-vllm") is None
    assert views.claim("ns", "m", "m-weights") is None
    found[0]["metadata"] = {}
    assert views.pods_of("ns", "m", {"job-name": "m-download-1"}) != [], (
        "a caller's change to what it read does not reach the view"
    )
