"""Pending jobs are written when what they wait for changes, not on every hiccup.

Each write to a job is a watch event for every sidecar and every GitOps tool; with
thousands queued, needless rewrites are a storm. These tests count writes by the jobs'
resourceVersions (no sidecar runs, so only the operator writes to them).
"""

from __future__ import annotations

import uuid

import pytest
from lightkube import Client

from gptoss_operator.core import naming
from tests.cluster.job_helpers import condition, create_job, job_status
from tests.cluster.model_helpers import (
    MANUAL,
    create_model,
    pods,
    running_pod,
    status_of,
    waiting_pod,
)
from tests.conftest import OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.faults]


def _pending(kube: Client, namespace: str, model: str) -> int:
    return int((status_of(kube, namespace, model).get("queue") or {}).get("pending") or 0)


def _queued_jobs(kube: Client, namespace: str, model: str, count: int) -> list[str]:
    """``count`` new jobs, once the model's status.queue counts them (the operator's
    housekeeping has seen them: a waiting job itself gets no write)."""
    before = _pending(kube, namespace, model)
    names = [f"j-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for name in names:
        create_job(kube, namespace, name, model)
    wait_for(
        lambda: _pending(kube, namespace, model) == before + count,
        timeout=30,
        message=f"{count} more jobs counted in the queue of {model}",
    )
    return names


def _versions(kube: Client, namespace: str, names: list[str]) -> dict[str, str]:
    from gptoss_operator.api.resources import InferenceJobResource

    return {
        name: kube.get(InferenceJobResource, name, namespace=namespace).metadata.resourceVersion
        for name in names
    }


def test_one_replica_of_two_restarting_rewrites_no_pending_job(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(
        kube,
        namespace,
        "pair",
        source={"repo": "openai/gpt-oss-20b"},
        serving={"replicas": 2, "podAnnotations": MANUAL},
    )
    servers = wait_for(
        lambda: len(found := pods(kube, namespace, naming.server_selector("pair"))) == 2 and found,
        timeout=60,
        message="two vLLM pods",
    )
    for pod in servers:
        running_pod(kube, namespace, pod)
    wait_for(lambda: status_of(kube, namespace, "pair").get("phase") == "Ready", timeout=60)
    names = _queued_jobs(kube, namespace, "pair", 5)
    before = _versions(kube, namespace, names)

    waiting_pod(kube, namespace, servers[0], "CrashLoopBackOff", "back-off restarting")
    wait_for(
        lambda: status_of(kube, namespace, "pair").get("readySummary") == "1/2",
        timeout=30,
        message="the model reporting one replica of two",
    )
    assert status_of(kube, namespace, "pair")["phase"] == "Starting"
    # A job created now is counted: housekeeping has run since the replica went down.
    _queued_jobs(kube, namespace, "pair", 1)
    assert _versions(kube, namespace, names) == before, "jobs rewritten while one replica serves"

    # Control: with no replica left, the jobs do say they wait for the model.
    waiting_pod(kube, namespace, servers[1], "CrashLoopBackOff", "back-off restarting")
    for name in names:
        wait_for(
            lambda name=name: (
                condition(job_status(kube, namespace, name), "Scheduled").get("reason")
                == "WaitingForModel"
            ),
            timeout=30,
            message=f"{name} WaitingForModel",
        )


def test_an_operator_restart_rewrites_no_pending_job(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    create_model(kube, namespace, "m", source={"repo": "openai/gpt-oss-20b"})
    wait_for(lambda: status_of(kube, namespace, "m").get("phase") == "Ready", timeout=60)
    names = _queued_jobs(kube, namespace, "m", 20)
    before = _versions(kube, namespace, names)
    for _ in range(3):
        operator.stop()
        operator.start()
        # A job created after the restart is counted: housekeeping runs again.
        _queued_jobs(kube, namespace, "m", 1)
    assert _versions(kube, namespace, names) == before, "queued jobs rewritten by a restart"
