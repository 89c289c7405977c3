"""Replicas follow the queue: a model idles at zero, a job wakes it, a burst scales it to
its maximum and drains through several sidecars, a lowered maximum removes pods whose
sidecars hand their jobs back, and the idle model returns to zero. No job is lost, and
none runs without its attempt being counted.

kwok plays the vLLM pods (they report Ready 3 s after scheduling, like a slow weight
load); ``PodSidecars`` runs a real sidecar per ready pod and stops it when the pod goes;
the engine is the stand-in, slow enough that jobs are still running when pods go away.
"""

from __future__ import annotations

import uuid

import pytest
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.types import PatchType

from gptoss_operator.api.resources import GptOssModelResource
from gptoss_operator.core import naming
from gptoss_sandbox.cluster import free_port
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.job_helpers import condition, create_job, job_status, wait_finished
from tests.cluster.model_helpers import (
    create_model,
    events_for,
    patch_model,
    pods,
    status_of,
    wait_for_phase,
)
from tests.cluster.pod_sidecars import PodSidecars
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster]

POLICY = {
    "minReplicas": 0,
    "maxReplicas": 3,
    "targetInFlightPerReplica": 2,
    "scaleDownStabilizationSeconds": 4,
    "scaleToZeroAfterSeconds": 8,
}


def _deployment_replicas(kube: Client, namespace: str) -> int:
    deployment = kube.get(Deployment, naming.deployment_name("m"), namespace=namespace)
    assert deployment.spec is not None
    return int(deployment.spec.replicas or 0)


def _reasons(kube: Client, namespace: str) -> list[str]:
    return [str(e.get("reason")) for e in events_for(kube, namespace, "m")]


def _scheduled_reason(kube: Client, namespace: str, name: str) -> str | None:
    return condition(job_status(kube, namespace, name), "Scheduled").get("reason")


def test_replicas_follow_the_queue_from_zero_to_max_and_back(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    engine = StandinEngine(model="m", port=free_port(), token_delay=0.1)
    url = engine.start_in_thread()
    create_model(
        kube,
        namespace,
        "m",
        source={"repo": "openai/gpt-oss-20b"},
        sidecar={"concurrency": 2},
        serving={
            "autoscaling": POLICY,
            "podAnnotations": {"sandbox.gptoss.ai/ready-after": "3s"},
        },
    )
    sidecars = PodSidecars(
        kube, cluster.kubeconfig, namespace, "m", url, tmp_path_factory.mktemp("autoscale")
    ).start()
    seen_replicas: list[int] = []
    try:
        # A model with minReplicas 0 and nothing to do starts at zero pods, on purpose.
        status = wait_for_phase(kube, namespace, "m", "ScaledToZero", timeout=60)
        assert condition(status, "Ready")["status"] == "True"
        assert condition(status, "Serving")["reason"] == "ScaledToZero"
        assert _deployment_replicas(kube, namespace) == 0

        # One job wakes it; while the pod loads the job says why it waits.
        first = f"j-{uuid.uuid4().hex[:6]}"
        create_job(kube, namespace, first, "m", activeDeadlineSeconds=120)
        wait_for(
            lambda: _scheduled_reason(kube, namespace, first) == "ModelWaking",
            timeout=10,
            message="the job waiting for the model to wake",
        )
        waking = status_of(kube, namespace, "m")
        assert waking["replicas"] == 1
        assert condition(waking, "Serving")["reason"] == "Waking"
        assert waking["autoscaling"]["lastScaleReason"] == "Woken"
        assert wait_finished(kube, namespace, first, timeout=60)["phase"] == "Succeeded"
        assert "Woken" in _reasons(kube, namespace)

        # A burst: 12 jobs at 2 per pod want 6 pods; the maximum is 3.
        burst = [f"b-{uuid.uuid4().hex[:6]}" for _ in range(12)]
        for name in burst:
            create_job(kube, namespace, name, "m")

        def three_sidecars_busy() -> bool:
            seen_replicas.append(_deployment_replicas(kube, namespace))
            workers = {
                job_status(kube, namespace, name).get("worker")
                for name in burst
                if job_status(kube, namespace, name).get("phase") == "Running"
            }
            return len(workers) == 3

        wait_for(three_sidecars_busy, timeout=60, message="three pods running jobs")
        assert status_of(kube, namespace, "m")["replicas"] == 3
        assert max(seen_replicas) == 3
        # From the one pod the first job woke (ScaledUp) or, on a machine slow enough
        # that the idle time passed first, from zero (Woken again): both are the burst's.
        assert {"ScaledUp", "Woken"} & set(_reasons(kube, namespace)[1:])

        # A lowered maximum removes two busy pods at once: their sidecars hand back.
        patch_model(
            kube, namespace, "m", {"spec": {"serving": {"autoscaling": {"maxReplicas": 1}}}}
        )
        wait_for(
            lambda: _deployment_replicas(kube, namespace) == 1,
            timeout=20,
            message="the Deployment scaled down to the new maximum",
        )
        statuses = {name: wait_finished(kube, namespace, name, timeout=120) for name in burst}
        for name, status in statuses.items():
            assert status["phase"] == "Succeeded", (name, status.get("message"))
            assert status["response"].startswith("Stand-in answer to:")
            # Attempts cut short by a pod going away are voided: each job counts once.
            assert status["attempts"] - status.get("voidedAttempts", 0) == 1, status
        handed_back = [s for s in statuses.values() if s.get("voidedAttempts")]
        assert handed_back, "pods holding running jobs were removed"
        assert len(set(sidecars.started_for)) >= 3
        # Every request the engine saw is one counted attempt: no job ran twice at once.
        attempts = int(job_status(kube, namespace, first)["attempts"])
        attempts += sum(int(s["attempts"]) for s in statuses.values())
        assert engine.requests_served == attempts

        # Idle: back to zero after the idle time, and the pods are gone.
        status = wait_for_phase(kube, namespace, "m", "ScaledToZero", timeout=60)
        assert status["autoscaling"]["lastScaleReason"] == "ScaledToZero"
        assert "no work for 8s" in condition(status, "Serving")["message"]
        wait_for(
            lambda: not pods(kube, namespace, naming.server_selector("m")),
            timeout=30,
            message="no vLLM pod left",
        )
        reasons = _reasons(kube, namespace)
        assert {"Woken", "ScaledDown", "ScaledToZero"} <= set(reasons), reasons
        # The operator's /metrics tell the same story.
        series = operator.metrics()
        labels = f'model="m",namespace="{namespace}"'
        assert series[f"gptoss_model_replicas{{{labels}}}"] == 0
        assert series[f"gptoss_model_desired_replicas{{{labels}}}"] == 0
        assert series[f'gptoss_model_queue{{{labels},phase="Pending"}}'] == 0
        for reason in ("Woken", "ScaledDown", "ScaledToZero"):
            decisions = f'gptoss_scaling_decisions_total{{{labels},reason="{reason}"}}'
            assert series[decisions] >= 1, decisions
        assert not sidecars.errors, sidecars.errors
    except Exception:
        print(sidecars.log_tail())
        raise
    finally:
        sidecars.stop()
        engine.stop_in_thread()


def test_with_autoscaling_the_operator_owns_the_count(
    kube: Client, operator: OperatorProcess, namespace: str
) -> None:
    """Which wins, documented in the README: the autoscaler. Scaling the Deployment by
    hand is undone; `kubectl scale gom` (the model's /scale) writes spec.serving.replicas,
    which is unused while autoscaling is set, and /scale reads back the autoscaler's
    count. Without autoscaling, spec.serving.replicas rules again."""
    del operator
    create_model(
        kube,
        namespace,
        "m",
        source={"repo": "openai/gpt-oss-20b"},
        serving={"autoscaling": {"minReplicas": 2, "maxReplicas": 3}},
    )
    status = wait_for_phase(kube, namespace, "m", "Ready", timeout=60)
    assert status["replicas"] == 2
    assert status["autoscaling"]["desiredReplicas"] == 2
    wait_for(lambda: _deployment_replicas(kube, namespace) == 2, timeout=20, message="2 pods")

    kube.patch(
        Deployment,
        naming.deployment_name("m"),
        {"spec": {"replicas": 5}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    wait_for(
        lambda: _deployment_replicas(kube, namespace) == 2,
        timeout=20,
        message="the hand-scaled Deployment back at the autoscaler's count",
    )

    # As `kubectl scale` does it: a patch of /scale (a read-then-replace would race the
    # operator's status writes and be refused with a conflict).
    kube.patch(
        GptOssModelResource.Scale,
        "m",
        {"spec": {"replicas": 3}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    # The operator has read the new spec (its status says so) and kept its own count.
    generation = kube.get(GptOssModelResource, "m", namespace=namespace).metadata.generation
    wait_for(
        lambda: status_of(kube, namespace, "m").get("observedGeneration") == generation,
        timeout=20,
        message="the model's new generation observed",
    )
    assert _deployment_replicas(kube, namespace) == 2
    scale = kube.get(GptOssModelResource.Scale, "m", namespace=namespace)
    assert (scale.spec.replicas, scale.status.replicas) == (3, 2)

    kube.patch(
        GptOssModelResource,
        "m",
        [{"op": "remove", "path": "/spec/serving/autoscaling"}],
        namespace=namespace,
        patch_type=PatchType.JSON,
    )
    wait_for(
        lambda: _deployment_replicas(kube, namespace) == 3,
        timeout=20,
        message="spec.serving.replicas applied once autoscaling is gone",
    )
    wait_for(
        lambda: (
            "autoscaling" not in status_of(kube, namespace, "m")
            and status_of(kube, namespace, "m")["replicas"] == 3
        ),
        timeout=20,
        message="status.autoscaling cleared",
    )
