"""GptOssModel on the real control plane: PVC + Job -> Deployment + Service -> Ready."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.models.core_v1 import (
    HostPathVolumeSource,
    ObjectReference,
    PersistentVolumeSpec,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import (
    PersistentVolume,
    PersistentVolumeClaim,
    Service,
    ServiceAccount,
)
from lightkube.resources.rbac_authorization_v1 import RoleBinding
from lightkube.resources.storage_v1 import StorageClass

from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.api.resources import GptOssModelResource
from gptoss_operator.core import naming
from tests.cluster.model_helpers import (
    MANUAL,
    condition,
    create_model,
    events_for,
    finish_pod,
    patch_model,
    pods,
    status_of,
    wait_for_condition,
    wait_for_event,
    wait_for_phase,
)
from tests.conftest import OperatorProcess
from tests.support import wait_for

pytestmark = pytest.mark.cluster


def _gone(kube: Client, resource: Any, name: str, namespace: str) -> bool:
    try:
        kube.get(resource, name, namespace=namespace)
    except ApiError as error:
        return error.status.code == 404
    return False


def _download_pod(kube: Client, namespace: str, model: str) -> Any:
    def found() -> Any:
        listed = pods(
            kube,
            namespace,
            {naming.MODEL_LABEL: model, "app.kubernetes.io/component": "download"},
        )
        return listed[0] if listed and listed[0].spec.nodeName else None

    return wait_for(found, timeout=60, message="download pod scheduled")


def test_model_goes_from_pending_to_ready_and_cleans_up(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(
        kube,
        namespace,
        "alpha",
        source={"repo": "openai/gpt-oss-20b"},
        download={"podAnnotations": MANUAL},
    )
    digest = naming.source_hash(
        GptOssModelSpec.model_validate({"source": {"repo": "openai/gpt-oss-20b"}})
    )

    # Downloading: claim and Job exist, the pod runs, no server yet. (For a moment the pod
    # may wait for its claim to reach the scheduler: WaitingForClaim, also Downloading.)
    status = wait_for_condition(kube, namespace, "alpha", "Downloaded", "Downloading")
    assert status["phase"] == "Downloading"
    assert status["observedGeneration"] == 1
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Reconciling")["status"] == "True"
    assert condition(status, "Stalled")["status"] == "False"
    assert condition(status, "Downloaded") | {"lastTransitionTime": None} == {
        "type": "Downloaded",
        "status": "False",
        "reason": "Downloading",
        "message": "downloading the weights",
        "lastTransitionTime": None,
        "observedGeneration": 1,
    }
    assert condition(status, "Serving")["reason"] == "WaitingForDownload"
    assert (status["replicas"], status["readyReplicas"], status["readySummary"]) == (1, 0, "0/1")
    assert status["claimName"] == "alpha-weights"
    assert status["selector"] == "app.kubernetes.io/component=server,gptoss.ai/model=alpha"
    assert "endpoint" not in status

    claim = kube.get(PersistentVolumeClaim, "alpha-weights", namespace=namespace)
    assert claim.spec.resources.requests["storage"] == "40Gi"
    assert not claim.metadata.ownerReferences, "Retain: the claim outlives the model"
    job = kube.get(Job, f"alpha-dl-{digest}", namespace=namespace)
    assert job.metadata.ownerReferences[0].kind == "GptOssModel"
    container = job.spec.template.spec.containers[0]
    env = {e.name: e.value for e in container.env}
    assert env["GPTOSS_REPO"] == "openai/gpt-oss-20b"
    assert env["GPTOSS_EXCLUDE_PATTERNS"] == "original/*,metal/*"
    assert container.securityContext.runAsNonRoot is True
    assert container.securityContext.allowPrivilegeEscalation is False
    assert container.securityContext.capabilities.drop == ["ALL"]
    assert job.spec.template.spec.securityContext.seccompProfile.type == "RuntimeDefault"
    for resource, name in (
        (ServiceAccount, "alpha-download"),
        (ServiceAccount, "alpha-sidecar"),
        (RoleBinding, "alpha-download"),
        (RoleBinding, "alpha-sidecar"),
    ):
        assert kube.get(resource, name, namespace=namespace).metadata.ownerReferences
    assert _gone(kube, Deployment, "alpha-vllm", namespace)

    # The downloader reports progress into status; the operator keeps it.
    patch_model(
        kube,
        namespace,
        "alpha",
        {
            "status": {
                "download": {
                    "bytesDone": 50,
                    "bytesTotal": 100,
                    "percent": 50,
                    "filesDone": 1,
                    "filesTotal": 3,
                }
            }
        },
        status=True,
    )
    wait_for(
        lambda: status_of(kube, namespace, "alpha")["download"]["percent"] == 50,
        message="progress visible",
    )

    # The download finishes: the server comes up and the model is Ready.
    finish_pod(kube, namespace, _download_pod(kube, namespace, "alpha"), exit_code=0)
    status = wait_for_phase(kube, namespace, "alpha", "Ready")
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "Available"
    assert condition(status, "Reconciling")["status"] == "False"
    assert condition(status, "Stalled")["status"] == "False"
    assert condition(status, "Downloaded")["status"] == "True"
    assert condition(status, "Serving")["status"] == "True"
    assert (status["readyReplicas"], status["readySummary"]) == (1, "1/1")
    assert status["endpoint"] == f"http://alpha-vllm.{namespace}.svc:8000/v1"
    assert status["download"]["percent"] == 100
    assert status["servedModelName"] == "alpha"
    wait_for_event(kube, namespace, "alpha", "Downloaded")
    wait_for_event(kube, namespace, "alpha", "PhaseReady")

    deployment = kube.get(Deployment, "alpha-vllm", namespace=namespace)
    engine, sidecar = deployment.spec.template.spec.containers
    assert engine.args[:2] == ["serve", f"/data/served/{digest}"]
    assert engine.resources.limits["nvidia.com/gpu"] == "1"
    assert engine.startupProbe.failureThreshold * engine.startupProbe.periodSeconds == 2700
    assert sidecar.command == ["gptoss-sidecar"]
    service = kube.get(Service, "alpha-vllm", namespace=namespace)
    assert service.spec.ports[0].port == 8000

    # A spec change rolls the Deployment.
    patch_model(kube, namespace, "alpha", {"spec": {"serving": {"maxModelLen": 8192}}})

    def rolled() -> bool:
        status = status_of(kube, namespace, "alpha")
        current = kube.get(Deployment, "alpha-vllm", namespace=namespace)
        return (
            status.get("observedGeneration") == 2
            and status.get("phase") == "Ready"
            and "--max-model-len" in current.spec.template.spec.containers[0].args
        )

    wait_for(rolled, timeout=60, message="rolled to generation 2")
    replica_sets = list(
        kube.list(ReplicaSet, namespace=namespace, labels={naming.MODEL_LABEL: "alpha"})
    )
    assert len(replica_sets) == 2

    # Deleting the model removes what it owns and keeps the retained claim.
    kube.delete(GptOssModelResource, "alpha", namespace=namespace)
    for resource, name in (
        (Deployment, "alpha-vllm"),
        (Service, "alpha-vllm"),
        (Job, f"alpha-dl-{digest}"),
        (ServiceAccount, "alpha-sidecar"),
    ):
        wait_for(
            lambda r=resource, n=name: _gone(kube, r, n, namespace),
            timeout=60,
            message=f"{name} garbage-collected",
        )
    assert kube.get(PersistentVolumeClaim, "alpha-weights", namespace=namespace)


def test_claim_with_delete_policy_goes_with_the_model(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(kube, namespace, "beta", storage={"deletionPolicy": "Delete", "size": "5Gi"})
    wait_for_phase(kube, namespace, "beta", "Ready")
    claim = kube.get(PersistentVolumeClaim, "beta-weights", namespace=namespace)
    assert claim.spec.resources.requests["storage"] == "5Gi"
    assert claim.metadata.ownerReferences[0].name == "beta"
    kube.delete(GptOssModelResource, "beta", namespace=namespace)
    wait_for(
        lambda: _gone(kube, PersistentVolumeClaim, "beta-weights", namespace),
        timeout=60,
        message="claim deleted with the model",
    )


def test_new_revision_downloads_again_then_rolls(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(kube, namespace, "gamma", download={"podAnnotations": MANUAL})
    finish_pod(kube, namespace, _download_pod(kube, namespace, "gamma"), exit_code=0)
    wait_for_phase(kube, namespace, "gamma", "Ready")
    first = kube.get(Deployment, "gamma-vllm", namespace=namespace).spec.template.spec
    patch_model(kube, namespace, "gamma", {"spec": {"source": {"revision": "v2"}}})
    status = wait_for_phase(kube, namespace, "gamma", "Downloading")
    # While the new revision downloads, the old one keeps serving.
    assert condition(status, "Serving")["status"] == "True"
    still = kube.get(Deployment, "gamma-vllm", namespace=namespace).spec.template.spec
    assert still.containers[0].args == first.containers[0].args

    def new_pod() -> Any:
        for pod in pods(
            kube,
            namespace,
            {naming.MODEL_LABEL: "gamma", "app.kubernetes.io/component": "download"},
        ):
            if pod.spec.nodeName and pod.status.phase == "Pending":
                return pod
        return None

    finish_pod(kube, namespace, wait_for(new_pod, message="new download pod"), exit_code=0)
    wait_for(
        lambda: (
            kube.get(Deployment, "gamma-vllm", namespace=namespace)
            .spec.template.spec.containers[0]
            .args[1]
            != first.containers[0].args[1]
        ),
        message="Deployment serving the new revision",
    )
    wait_for_phase(kube, namespace, "gamma", "Ready")
    jobs = [
        j.metadata.name
        for j in kube.list(Job, namespace=namespace, labels={naming.MODEL_LABEL: "gamma"})
    ]
    assert len([j for j in jobs if j]) >= 1
    wait_for(
        lambda: (
            len(list(kube.list(Job, namespace=namespace, labels={naming.MODEL_LABEL: "gamma"})))
            == 1
        ),
        message="superseded download Job removed",
    )


def test_operator_restarts_converge_without_duplicates(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    operator.stop()
    try:
        create_model(kube, namespace, "delta", download={"podAnnotations": MANUAL})
        for _ in range(3):
            operator.start()
            wait_for(
                lambda: list(
                    kube.list(Job, namespace=namespace, labels={naming.MODEL_LABEL: "delta"})
                ),
                timeout=60,
                message="download Job",
            )
            operator.stop(kill=True)
        operator.start()
        finish_pod(kube, namespace, _download_pod(kube, namespace, "delta"), exit_code=0)
        wait_for_phase(kube, namespace, "delta", "Ready")
        operator.stop(kill=True)
        operator.start()
        wait_for(
            lambda: status_of(kube, namespace, "delta").get("phase") == "Ready",
            message="Ready after restart",
        )
    finally:
        if operator.process is None:
            operator.start()
    labels = {naming.MODEL_LABEL: "delta"}
    assert len(list(kube.list(Job, namespace=namespace, labels=labels))) == 1
    assert len(list(kube.list(Deployment, namespace=namespace, labels=labels))) == 1
    assert len(list(kube.list(Service, namespace=namespace, labels=labels))) == 1
    assert len(list(kube.list(PersistentVolumeClaim, namespace=namespace, labels=labels))) == 1
    assert len(list(kube.list(ReplicaSet, namespace=namespace, labels=labels))) == 1


def test_unschedulable_gpu_request_is_a_condition_and_an_event(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(kube, namespace, "huge", serving={"gpusPerReplica": 16})
    status = wait_for_condition(kube, namespace, "huge", "Serving", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in condition(status, "Serving")["message"]
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Ready")["status"] == "False"
    assert status["phase"] == "Starting"
    event = wait_for_event(kube, namespace, "huge", "Unschedulable")
    assert event["type"] == "Warning"


def test_missing_storage_class_is_a_condition_and_an_event(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(kube, namespace, "nosc", storage={"storageClassName": "does-not-exist"})
    status = wait_for_condition(kube, namespace, "nosc", "Downloaded", "ClaimPending")
    message = condition(status, "Downloaded")["message"]
    assert "nosc-weights" in message
    assert condition(status, "Stalled")["status"] == "True"
    assert status["phase"] == "Pending"
    wait_for_event(kube, namespace, "nosc", "ClaimPending")


def test_download_failure_surfaces_the_termination_message(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(kube, namespace, "gated", download={"podAnnotations": MANUAL})
    message = {"reason": "Unauthorized", "message": "openai/gpt-oss-120b is gated: 401"}
    finish_pod(
        kube,
        namespace,
        _download_pod(kube, namespace, "gated"),
        exit_code=10,
        message=json.dumps(message),
    )
    status = wait_for_phase(kube, namespace, "gated", "Failed")
    downloaded = condition(status, "Downloaded")
    assert downloaded["reason"] == "Unauthorized"
    assert downloaded["message"].startswith("openai/gpt-oss-120b is gated: 401; retrying in")
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "Unauthorized"
    assert wait_for_event(kube, namespace, "gated", "Unauthorized")["type"] == "Warning"
    # The pod failure policy ends the Job at once: no retry storm.
    job = next(iter(kube.list(Job, namespace=namespace, labels={naming.MODEL_LABEL: "gated"})))
    assert job.status.failed == 1


def _attempt_pod(kube: Client, namespace: str, model: str, attempt: int) -> Any:
    """The scheduled pod of download attempt ``attempt`` (its Job is named -r<attempt>)."""

    def found() -> Any:
        for pod in pods(kube, namespace, {naming.MODEL_LABEL: model}):
            job = (pod.metadata.labels or {}).get("job-name", "")
            current = job.endswith(f"-r{attempt}") if attempt else "-r" not in job
            if current and pod.spec.nodeName and not pod.metadata.deletionTimestamp:
                return pod
        return None

    return wait_for(found, timeout=60, message=f"download attempt {attempt} scheduled")


def test_a_failed_download_runs_again_once_the_cause_is_fixed(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(kube, namespace, "fixable", download={"podAnnotations": MANUAL})
    denied = json.dumps({"reason": "Unauthorized", "message": "401: bad token"})
    finish_pod(
        kube, namespace, _attempt_pod(kube, namespace, "fixable", 0), exit_code=10, message=denied
    )
    status = wait_for_phase(kube, namespace, "fixable", "Failed")
    message = condition(status, "Downloaded")["message"]
    assert "retrying in" in message
    assert "gptoss.ai/retry-download" in message
    # The token Secret was fixed (outside the spec): the user asks for a retry.
    patch_model(
        kube, namespace, "fixable", {"metadata": {"annotations": {"gptoss.ai/retry-download": "1"}}}
    )
    retried = _attempt_pod(kube, namespace, "fixable", 1)
    assert wait_for_event(kube, namespace, "fixable", "DownloadRetried")["type"] == "Normal"
    wait_for(
        lambda: status_of(kube, namespace, "fixable").get("phase") == "Downloading",
        timeout=30,
        message="downloading again",
    )
    # It fails again, this time for space; the fix is in the spec: a bigger volume.
    full = json.dumps({"reason": "InsufficientStorage", "message": "need 70Gi, 60Gi free"})
    finish_pod(kube, namespace, retried, exit_code=12, message=full)
    wait_for_phase(kube, namespace, "fixable", "Failed")
    patch_model(kube, namespace, "fixable", {"spec": {"storage": {"size": "200Gi"}}})
    rerun = _attempt_pod(kube, namespace, "fixable", 2)
    # The sandbox's claims are never bound, so Kubernetes refuses to grow this one: the
    # model says so, naming the field, instead of failing silently.
    refused = wait_for_event(kube, namespace, "fixable", "StorageNotExpandable")
    assert refused["type"] == "Warning"
    assert "spec.storage.size 200Gi cannot be applied" in refused["message"]
    finish_pod(kube, namespace, rerun, exit_code=0)
    wait_for_phase(kube, namespace, "fixable", "Ready")

    # The failed attempts are gone; the one that succeeded stays.
    def remaining() -> list[str]:
        jobs = kube.list(Job, namespace=namespace, labels={naming.MODEL_LABEL: "fixable"})
        return [job.metadata.name for job in jobs if not job.metadata.deletionTimestamp]

    names = wait_for(lambda: len(left := remaining()) == 1 and left, timeout=30)
    assert names[0].endswith("-r2")
    # Each attempt started once (the operator reads its watches, which may lag a moment
    # behind the Jobs it just made: it asks the apiserver before starting an attempt).
    retried = [
        (event["message"], event.get("count", 1))
        for event in events_for(kube, namespace, "fixable")
        if event.get("reason") == "DownloadRetried"
    ]
    assert sorted(retried) == [
        ("download attempt 1 started (RetryRequested)", 1),
        ("download attempt 2 started (SpecChanged)", 1),
    ]


PROVISIONER = "sandbox.gptoss.ai/fake-volume"


def test_raising_the_storage_size_grows_an_expandable_claim(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    expandable = f"expandable-{namespace}"
    kube.create(
        StorageClass(
            metadata=ObjectMeta(name=expandable),
            provisioner=PROVISIONER,
            allowVolumeExpansion=True,
            volumeBindingMode="Immediate",
        )
    )
    volume = f"pv-{namespace}"
    try:
        create_model(
            kube,
            namespace,
            "grows",
            storage={"storageClassName": expandable, "size": "100Gi"},
            download={"podAnnotations": MANUAL},
        )
        # Play the provisioner: a volume bound to the model's claim.
        kube.create(
            PersistentVolume(
                metadata=ObjectMeta(
                    name=volume,
                    annotations={
                        "pv.kubernetes.io/provisioned-by": "sandbox.gptoss.ai/fake-volume"
                    },
                ),
                spec=PersistentVolumeSpec(
                    capacity={"storage": "100Gi"},
                    accessModes=["ReadWriteOnce"],
                    storageClassName=expandable,
                    claimRef=ObjectReference(namespace=namespace, name="grows-weights"),
                    hostPath=HostPathVolumeSource(path=f"/tmp/{volume}"),
                ),
            )
        )

        def claim() -> Any:
            return kube.get(PersistentVolumeClaim, "grows-weights", namespace=namespace)

        wait_for(
            lambda: not _gone(kube, PersistentVolumeClaim, "grows-weights", namespace),
            timeout=30,
            message="claim created",
        )
        wait_for(lambda: claim().status.phase == "Bound", timeout=60, message="claim bound")
        patch_model(kube, namespace, "grows", {"spec": {"storage": {"size": "200Gi"}}})
        wait_for(
            lambda: claim().spec.resources.requests["storage"] == "200Gi",
            timeout=30,
            message="the claim's request raised to 200Gi",
        )
        reasons = {event["reason"] for event in events_for(kube, namespace, "grows")}
        assert "StorageNotExpandable" not in reasons
    finally:
        kube.delete(StorageClass, expandable)
        kube.delete(PersistentVolume, volume)


def test_models_can_be_deleted_while_the_operator_is_down(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    create_model(kube, namespace, "orphan")
    wait_for_phase(kube, namespace, "orphan", "Ready")
    model = kube.get(GptOssModelResource, "orphan", namespace=namespace)
    assert not model.metadata.finalizers, "no finalizer may block deletion"
    operator.stop()
    try:
        kube.delete(GptOssModelResource, "orphan", namespace=namespace)
        wait_for(
            lambda: _gone(kube, GptOssModelResource, "orphan", namespace),
            timeout=30,
            message="model deleted without the operator",
        )
        wait_for(
            lambda: _gone(kube, Deployment, "orphan-vllm", namespace),
            timeout=60,
            message="children garbage-collected",
        )
    finally:
        operator.start()


def test_operator_exposes_prometheus_metrics(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    import urllib.request

    create_model(kube, namespace, "counted")
    wait_for_phase(kube, namespace, "counted", "Ready")
    port = operator.env["GPTOSS_METRICS_PORT"]

    def scraped() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
        except OSError as error:
            raise AssertionError(f"metrics endpoint not up yet: {error}") from error
        return text if 'gptoss_models{phase="Ready"}' in text else None

    text = wait_for(scraped, timeout=30, message="metrics with a Ready model")
    assert "gptoss_model_reconciles_total" in text
    assert "# TYPE gptoss_models gauge" in text
