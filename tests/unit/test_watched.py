"""Models and their children as the watches saw them: what is a model's, how it is found,
and the status the reconcile wrote before the watch shows it."""

from __future__ import annotations

from typing import Any

from gptoss_operator.controllers.model.reconciler import ReportedStatus, merge_patch
from gptoss_operator.controllers.model.watched import Watched, child_entry, model_entry
from gptoss_operator.core import naming


def _obj(name: str, labels: dict[str, str], namespace: str = "ns") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels}}


def test_a_child_is_filed_under_its_model_and_a_batchs_objects_are_not() -> None:
    model = {"metadata": {"name": "m", "namespace": "ns"}}
    assert model_entry(model) == {("ns", "m"): model}
    server_pod = _obj("m-vllm-1", naming.labels("m", naming.COMPONENT_SERVER))
    assert child_entry(server_pod) == {("ns", "m"): server_pod}
    shard_pod = _obj("b-shards-0", naming.batch_labels("m", "b", "shard"))
    assert child_entry(shard_pod) is None, "a batch's pods belong to the batch"
    assert child_entry(_obj("x", {"app.kubernetes.io/managed-by": naming.MANAGED_BY})) is None


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
    model = {"metadata": {"name": "m", "namespace": "ns", "uid": "u"}, "spec": {}}
    views = Watched(
        models={("ns", "m"): [model]}, claims={}, jobs={}, pods=pods, deployments=deployments
    )
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
    assert views.model("ns", "m") == model
    assert views.model("other", "m") is None
    found[0]["metadata"] = {}
    assert views.pods_of("ns", "m", {"job-name": "m-download-1"}) != [], (
        "a caller's change to what it read does not reach the view"
    )


def test_the_status_written_last_counts_until_the_watch_shows_it() -> None:
    """Right after a status write the watch's view is older: comparing with it would
    write the same status again and send its Events twice."""
    reported = ReportedStatus(ttl_seconds=60)
    key = ("ns", "m", "u")
    seen = {"phase": "Downloading", "conditions": [{"type": "Ready"}], "queue": {"pending": 3}}
    assert reported.overlay(key, seen) == seen
    reported.remember(key, merge_patch(seen, {"phase": "Ready", "message": None}))
    now = reported.overlay(key, seen)
    assert now["phase"] == "Ready"
    assert now["queue"] == {"pending": 3}
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 4}}) == {
        "a": {"c": 2, "d": 4}
    }
    stale = ReportedStatus(ttl_seconds=0)
    stale.remember(key, {"phase": "Ready"})
    assert stale.overlay(key, seen) == seen, "after a while the watch's view is the truth"
    assert key not in stale.entries
