"""Model status from observed children: phases, kstatus conditions, Events."""

from __future__ import annotations

import json
from typing import Any

from gptoss_operator.controllers.model.status import (
    Observed,
    compute,
    pod_problem,
    termination_message,
)


def _job(condition: str | None) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True"}] if condition else []
    return {"metadata": {"name": "j"}, "status": {"conditions": conditions}}


def _deployment(ready: int, generation: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": "d", "generation": generation},
        "status": {
            "readyReplicas": ready,
            "updatedReplicas": ready,
            "observedGeneration": generation,
        },
    }


def _compute(
    observed: Observed, previous: dict[str, Any] | None = None, replicas: int = 1
) -> dict[str, Any]:
    return compute(observed, previous or {}, name="m", namespace="ns", replicas=replicas).patch


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_phases_in_order() -> None:
    claim = {"metadata": {"name": "m-weights"}, "status": {"phase": "Bound"}}
    pending = _compute(Observed(generation=1, digest="d", claim=claim))
    assert pending["phase"] == "Pending"
    downloading = _compute(Observed(1, "d", claim=claim, job=_job(None)))
    assert downloading["phase"] == "Downloading"
    starting = _compute(
        Observed(
            1,
            "d",
            claim=claim,
            job=_job("Complete"),
            deployment=_deployment(0),
            served_digest="d",
            service={},
        )
    )
    assert starting["phase"] == "Starting"
    assert _cond(starting, "Reconciling")["status"] == "True"
    ready = _compute(
        Observed(
            1,
            "d",
            claim=claim,
            job=_job("Complete"),
            deployment=_deployment(1),
            served_digest="d",
            service={},
        )
    )
    assert ready["phase"] == "Ready"
    assert [(_cond(ready, t)["status"]) for t in ("Ready", "Reconciling", "Stalled")] == [
        "True",
        "False",
        "False",
    ]
    assert ready["endpoint"] == "http://m-vllm.ns.svc:8000/v1"
    assert ready["readySummary"] == "1/1"


def test_scaled_to_zero_is_ready_but_not_serving() -> None:
    """Zero pods on purpose is where the model was asked to be: kstatus Current."""
    status = _compute(
        Observed(
            1, "d", job=_job("Complete"), deployment=_deployment(0), served_digest="d", service={}
        ),
        replicas=0,
    )
    assert status["phase"] == "ScaledToZero"
    assert _cond(status, "Serving")["reason"] == "ScaledToZero"
    assert _cond(status, "Ready")["status"] == "True"
    assert _cond(status, "Reconciling")["status"] == "False"
    assert _cond(status, "Stalled")["status"] == "False"


def test_the_autoscalers_count_and_reasons_are_reported() -> None:
    observed = Observed(
        1, "d", job=_job("Complete"), deployment=_deployment(0), served_digest="d", service={}
    )
    observed.replicas = 0
    observed.zero_message = "2 → 0 replicas: no work for 600s; a new InferenceJob wakes it"
    observed.autoscaling = {"desiredReplicas": 0, "lastScaleReason": "ScaledToZero"}
    status = _compute(observed, replicas=1)
    assert status["replicas"] == 0
    assert status["phase"] == "ScaledToZero"
    assert _cond(status, "Ready")["message"] == observed.zero_message
    assert status["autoscaling"] == observed.autoscaling
    observed.replicas, observed.waking = 1, True
    status = _compute(observed, replicas=1)
    assert status["phase"] == "Starting"
    assert _cond(status, "Serving")["reason"] == "Waking"
    assert _cond(status, "Reconciling")["status"] == "True"


def test_a_model_without_a_policy_clears_status_autoscaling() -> None:
    status = _compute(Observed(1, "d", job=_job("Complete")), replicas=1)
    assert "autoscaling" in status
    assert status["autoscaling"] is None


def test_failed_download_uses_the_termination_message() -> None:
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {
                    "name": "download",
                    "state": {
                        "terminated": {
                            "exitCode": 11,
                            "finishedAt": "2026-01-01T00:00:00Z",
                            "message": json.dumps(
                                {"reason": "RevisionNotFound", "message": "no such rev"}
                            ),
                        }
                    },
                }
            ]
        },
    }
    status = _compute(Observed(1, "d", job=_job("Failed"), job_pods=[pod]))
    assert status["phase"] == "Failed"
    assert (_cond(status, "Downloaded")["reason"], _cond(status, "Downloaded")["message"]) == (
        "RevisionNotFound",
        "no such rev",
    )
    assert _cond(status, "Stalled")["status"] == "True"


def test_plain_termination_message_is_passed_on() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {
                    "name": "download",
                    "state": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": "Traceback: boom",
                        }
                    },
                }
            ]
        }
    }
    assert termination_message([pod]) == ("Error", "Traceback: boom")


def test_pod_problems() -> None:
    unschedulable = {
        "metadata": {"name": "p"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                }
            ]
        },
    }
    problem = pod_problem([unschedulable])
    assert problem is not None
    assert problem.reason == "Unschedulable"
    assert problem.stalled
    pulling = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {"name": "vllm", "image": "x", "state": {"waiting": {"reason": "ImagePullBackOff"}}}
            ]
        },
    }
    problem = pod_problem([pulling])
    assert problem is not None
    assert problem.reason == "ImagePullError"
    assert pod_problem([{"status": {"phase": "Running"}}]) is None


def test_transition_time_moves_only_when_status_changes() -> None:
    observed = Observed(1, "d", job=_job(None))
    first = _compute(observed)
    stamp = _cond(first, "Ready")["lastTransitionTime"]
    for condition in first["conditions"]:
        condition["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    again = _compute(observed, previous=first)
    assert _cond(again, "Ready")["lastTransitionTime"] == "2000-01-01T00:00:00Z"
    assert stamp != "2000-01-01T00:00:00Z"


def test_events_only_on_changes() -> None:
    observed = Observed(1, "d", job=_job("Failed"))
    first = compute(observed, {}, name="m", namespace="ns", replicas=1)
    assert ("Warning", "DownloadFailed") in [(t, r) for t, r, _ in first.events]
    second = compute(observed, first.patch, name="m", namespace="ns", replicas=1)
    assert second.events == []


def _unschedulable(message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "dl"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ]
        },
    }


def test_a_pod_waiting_for_its_claim_is_reconciling_not_stalled() -> None:
    # The Job's pod can reach the scheduler before the claim does: that heals itself in
    # seconds, and a claim that stays unbound is reported by the claim's own grace period.
    claim = {"metadata": {"name": "m-weights"}, "status": {"phase": "Pending"}}
    for message in (
        'persistentvolumeclaim "m-weights" not found',
        "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
    ):
        observed = Observed(1, "d", claim=claim, job=_job(None), job_pods=[_unschedulable(message)])
        status = _compute(observed)
        assert status["phase"] == "Downloading", message
        assert _cond(status, "Stalled")["status"] == "False"
        assert _cond(status, "Reconciling")["status"] == "True"
        assert _cond(status, "Downloaded")["reason"] == "WaitingForClaim"
    stuck = Observed(
        1,
        "d",
        claim=claim,
        claim_pending_too_long=True,
        job=_job(None),
        job_pods=[_unschedulable('persistentvolumeclaim "m-weights" not found')],
    )
    assert _cond(_compute(stuck), "Stalled")["reason"] == "ClaimPending"


def test_a_name_in_use_stalls_the_model_and_warns_once() -> None:
    message = "Service ns/m-vllm exists and is not this model's (made by someone else); …"
    observed = Observed(generation=2, digest="d", name_in_use=message)
    computed = compute(observed, {"phase": "Starting"}, name="m", namespace="ns", replicas=1)
    status = computed.patch
    assert status["phase"] == "Starting"  # what the model has is left as it is
    assert status["observedGeneration"] == 2
    assert _cond(status, "Stalled") | {"lastTransitionTime": None} == {
        "type": "Stalled",
        "status": "True",
        "reason": "NameInUse",
        "message": message,
        "observedGeneration": 2,
        "lastTransitionTime": None,
    }
    assert (_cond(status, "Ready")["status"], _cond(status, "Ready")["reason"]) == (
        "False",
        "NameInUse",
    )
    assert _cond(status, "Reconciling")["status"] == "False"
    assert computed.events == [("Warning", "NameInUse", message)]
    # Told once: the same message again is no new Event.
    again = compute(observed, status, name="m", namespace="ns", replicas=1)
    assert again.events == []
    # A new model: Pending.
    fresh = compute(observed, {}, name="m", namespace="ns", replicas=1).patch
    assert fresh["phase"] == "Pending"
    assert "endpoint" not in fresh
