"""Models and their children as the watches saw them: what is a model's, how it is found,
and the status the reconcile wrote before the watch shows it."""

from __future__ import annotations

from typing import Any

from gptoss_operator.controllers.model.reconciler import ReportedStatus, merge_patch
from gptoss_operator.controllers.model.watched import Watched, child_entry, model_entry
from gptoss_operator.core import naming
from gptoss_operator.core.kube import newer_or_same


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


def _owned(obj: dict[str, Any], uid: str, kind: str = "GptOssModel") -> dict[str, Any]:
    obj["metadata"]["ownerReferences"] = [
        {"kind": kind, "name": "m", "uid": uid, "controller": True}
    ]
    return obj


def _views(**indexes: dict[tuple[str, str], list[dict[str, Any]]]) -> Watched:
    model = {"metadata": {"name": "m", "namespace": "ns", "uid": "new"}, "spec": {}}
    empty: dict[tuple[str, str], list[dict[str, Any]]] = {}
    return Watched(
        models={("ns", "m"): [model]},
        claims=indexes.get("claims", empty),
        jobs=indexes.get("jobs", empty),
        pods=indexes.get("pods", empty),
        deployments=indexes.get("deployments", empty),
    )


def test_children_are_found_by_their_controller_within_their_model() -> None:
    server = naming.labels("m", naming.COMPONENT_SERVER)
    download = naming.labels("m", naming.COMPONENT_DOWNLOAD)
    deployments = {
        ("ns", "m"): [_owned(_obj("m-vllm", server), "new")],
        ("other", "m"): [_owned(_obj("m-vllm", server, namespace="other"), "new")],
    }
    jobs = {
        ("ns", "m"): [
            _owned(_obj("m-download-1", download), "new"),
            _owned(_obj("m-download-0", download), "new"),
        ]
    }
    views = _views(deployments=deployments, jobs=jobs)
    deployment = views.deployment("ns", "m", "new")
    assert deployment is not None
    assert deployment["metadata"]["name"] == "m-vllm"
    assert views.deployment("other", "m", "elsewhere") is None
    assert sorted(j["metadata"]["name"] for j in views.jobs_of("ns", "m", "new")) == [
        "m-download-0",
        "m-download-1",
    ]
    assert views.model("ns", "m") is not None
    assert views.model("other", "m") is None
    found = views.jobs_of("ns", "m", "new")
    found[0]["metadata"] = {}
    assert all(j["metadata"] for j in views.jobs_of("ns", "m", "new")), (
        "a caller's change to what it read does not reach the view"
    )


def test_a_model_made_again_under_its_name_never_reads_its_predecessors_children() -> None:
    """Deleting a model and creating it again leaves the first one's children for a
    while (the garbage collector, terminating pods, a claim in use): they carry the
    same name labels, and none of them is the new model's."""
    server = naming.labels("m", naming.COMPONENT_SERVER)
    download = naming.labels("m", naming.COMPONENT_DOWNLOAD)
    old_claim = _owned(_obj("m-weights", naming.labels("m", "weights")), "old")
    old_job = _owned(_obj("m-download-0", download), "old")
    old_job["metadata"]["uid"] = "old-job"
    old_job_pod = _obj("m-download-0-x", {**download, naming.JOB_CONTROLLER_UID_LABEL: "old-job"})
    old_server_pod = _obj("m-vllm-a", {**server, naming.MODEL_UID_LABEL: "old"})
    new_server_pod = _obj("m-vllm-b", {**server, naming.MODEL_UID_LABEL: "new"})
    views = _views(
        claims={("ns", "m"): [old_claim]},
        jobs={("ns", "m"): [old_job, _owned(_obj("b-shards", download), "b", "InferenceBatch")]},
        pods={("ns", "m"): [old_job_pod, old_server_pod, new_server_pod]},
        deployments={("ns", "m"): [_owned(_obj("m-vllm", server), "old")]},
    )
    wanted_claim = _owned(_obj("m-weights", naming.labels("m", "weights")), "new")
    assert views.claim(wanted_claim) is None, "the old model's claim is not the new one's"
    assert views.deployment("ns", "m", "new") is None
    assert views.jobs_of("ns", "m", "new") == []
    servers = views.pods_of("ns", "m", naming.server_pods_selector("m", "new"))
    assert [p["metadata"]["name"] for p in servers] == ["m-vllm-b"]
    assert views.pods_of("ns", "m", naming.job_pods_selector("new-job")) == []
    assert views.pods_of("ns", "m", naming.job_pods_selector("old-job")) == [old_job_pod]

    kept = _obj("m-weights", naming.labels("m", "weights"))  # deletionPolicy Retain
    unowned = {"metadata": {**kept["metadata"]}}
    assert _views(claims={("ns", "m"): [kept]}).claim(unowned) == kept, (
        "a claim kept after its model is found by its labels"
    )


def test_the_status_written_last_counts_until_the_watch_shows_it() -> None:
    """Right after a status write the watch's view is older: comparing with it would
    write the same status again and send its Events twice. The view counts again from
    the resourceVersion the write made, however long that takes."""
    reported = ReportedStatus()
    key = ("ns", "m", "u")
    seen = {"phase": "Downloading", "conditions": [{"type": "Ready"}], "queue": {"pending": 3}}
    assert reported.overlay(key, seen, "41") == seen
    reported.remember(key, merge_patch(seen, {"phase": "Ready", "message": None}), "42")
    for _ in range(2):
        now = reported.overlay(key, seen, "41")
        assert now["phase"] == "Ready", "the view before the write is older than the write"
        assert now["queue"] == {"pending": 3}
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 4}}) == {
        "a": {"c": 2, "d": 4}
    }
    shown = {**seen, "phase": "Ready"}
    assert reported.overlay(key, shown, "42") == shown, "the view holds the write"
    assert key not in reported.entries

    reported.remember(key, {"phase": "Ready"}, "42")
    later = {**seen, "phase": "Failed"}
    assert reported.overlay(key, later, "100") == later, "a later write by anyone wins"
    reported.remember(key, {"phase": "Ready"}, "9")
    assert reported.overlay(key, later, "10") == later, "versions compare as integers"


def test_versions_that_are_not_positive_integers_leave_the_view_as_the_truth() -> None:
    assert newer_or_same("10", "9") is True
    assert newer_or_same("9", "10") is False
    assert newer_or_same("7", "7") is True
    for odd in ("", "0", "012", "abc", "\uff11\uff12"):
        assert newer_or_same(odd, "5") is None
        assert newer_or_same("5", odd) is None
    reported = ReportedStatus()
    reported.remember(("ns", "m", "u"), {"phase": "Ready"}, "")
    assert reported.overlay(("ns", "m", "u"), {"phase": "Pending"}, "41") == {"phase": "Pending"}
