"""InferenceBatch on the control plane without a node: a batch waits for its model and
then plans an Indexed Job, one index per shard. Its pods run on the real node, in the
node tier (tests/node/test_node_batches.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.generic_resource import GenericNamespacedResource
from lightkube.models.core_v1 import PersistentVolumeClaimSpec, VolumeResourceRequirements
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import (
    Event,
    Namespace,
    PersistentVolumeClaim,
    Secret,
    ServiceAccount,
)
from lightkube.resources.rbac_authorization_v1 import RoleBinding
from lightkube.types import PatchType

from gptoss_operator.api.resources import GptOssModelResource, InferenceBatchResource
from gptoss_operator.core import naming
from gptoss_sandbox.cluster import SANDBOX_STORAGE_CLASS, free_port
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.chart_helpers import token_kubeconfig, tools
from tests.cluster.job_helpers import ready_model_namespace
from tests.cluster.model_helpers import MANUAL, create_model, pods, running_pod, status_of
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def engine() -> Iterator[StandinEngine]:
    server = StandinEngine(model="m", port=free_port())
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_in_thread()


def request_line(i: int) -> str:
    return json.dumps(
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": f"question {i}"}]},
        }
    )


def create_claim(kube: Client, namespace: str, name: str) -> None:
    kube.create(
        PersistentVolumeClaim(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=PersistentVolumeClaimSpec(
                accessModes=["ReadWriteOnce"],
                storageClassName=SANDBOX_STORAGE_CLASS,
                resources=VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        )
    )


def create_batch(kube: Client, namespace: str, name: str, model: str = "m", **spec: Any) -> None:
    kube.create(
        InferenceBatchResource(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec={"modelRef": {"name": model}, **spec},
        )
    )


def batch_of(kube: Client, namespace: str, name: str) -> dict[str, Any]:
    found: GenericNamespacedResource = kube.get(InferenceBatchResource, name, namespace=namespace)
    return dict(found.to_dict())


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def batch_events(kube: Client, namespace: str, name: str) -> list[str]:
    return [
        str(event.reason)
        for event in kube.list(
            Event,
            namespace=namespace,
            fields={"involvedObject.kind": "InferenceBatch", "involvedObject.name": name},
        )
    ]


def wait_phase(
    kube: Client, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 90
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = batch_of(kube, namespace, name).get("status") or {}
        return status if status.get("phase") in phases else None

    return wait_for(reached, timeout=timeout, message=f"batch {name} in {phases}")


def batch_identity(
    kube: Client, cluster: ClusterUnderTest, namespace: str, tmp_path: Path, model: str = "m"
) -> Path:
    """A kubeconfig holding a token of the model's batch identity, once it is bound."""
    account = naming.batch_account_name(model)
    wait_for(
        lambda: any(
            binding.metadata.name == account
            for binding in kube.list(RoleBinding, namespace=namespace)
        ),
        timeout=30,
        message="the model's batch identity",
    )
    return token_kubeconfig(cluster, kube, namespace, account, tmp_path / "batch.kubeconfig")


@dataclass(frozen=True)
class Setting:
    """A model, a claim "data" whose files are in ``data``, and the batch identity."""

    data: Path
    kubeconfig: Path
    logs: Path


def setting(kube: Client, cluster: ClusterUnderTest, namespace: str, tmp_path: Path) -> Setting:
    data, logs = tmp_path / "data", tmp_path / "logs"
    data.mkdir()
    logs.mkdir()
    create_claim(kube, namespace, "data")
    create_model(kube, namespace, "m")
    return Setting(data, batch_identity(kube, cluster, namespace, tmp_path), logs)


def volume_batch(kube: Client, namespace: str, name: str, path: str, **spec: Any) -> None:
    """A batch reading ``path`` on the claim "data" and writing to its folder out/."""
    create_batch(
        kube,
        namespace,
        name,
        input={"volume": {"claimName": "data", "path": path}},
        output={"volume": {"claimName": "data", "path": "out"}},
        **spec,
    )


def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools().kubectl), *args], capture_output=True, text=True, check=False
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


def test_a_batch_waits_for_its_model_then_plans_an_indexed_job_of_its_shards(
    kube: Client, operator: OperatorProcess, namespace: str
) -> None:
    """No pod runs here (kwok leaves a batch's pods alone): the shards' run, merge and
    faults are the node tier's (tests/node/test_node_batches.py)."""
    create_claim(kube, namespace, "data")
    create_batch(
        kube,
        namespace,
        "b1",
        input={"volume": {"claimName": "data", "path": "in/requests.jsonl"}},
        output={"volume": {"claimName": "data", "path": "out/b1"}},
        shards=3,
        requestsPerShard=4,
    )
    waiting = wait_phase(kube, namespace, "b1", ("Pending",))
    wait_for(
        lambda: (
            condition(batch_of(kube, namespace, "b1")["status"], "Reconciling").get("reason")
            == "ModelNotFound"
        ),
        timeout=30,
        message="ModelNotFound",
    )
    assert condition(waiting, "Ready").get("status") == "False"
    wait_for(  # the Event follows the status that prompts it
        lambda: "ModelNotFound" in batch_events(kube, namespace, "b1"),
        timeout=30,
        message="ModelNotFound Event",
    )

    create_model(kube, namespace, "m")
    job = wait_for(lambda: _shards_job(kube, namespace, "b1"), timeout=60, message="shards Job")
    assert job.spec.completionMode == "Indexed"
    assert job.spec.completions == 3
    assert job.spec.template.spec.serviceAccountName == naming.batch_account_name("m")
    assert wait_phase(kube, namespace, "b1", ("Running",))["phase"] == "Running"


def test_a_batch_of_another_namespaces_model_plans_its_shards_here_with_a_key_of_its_own(
    kube: Client, operator: OperatorProcess, namespace: str
) -> None:
    """A batch in a team's namespace for a model of another: it waits with a reason while
    the model's spec.access leaves the team out, or while the name of the model's batch
    identity in the team's namespace is taken by an object the operator did not make;
    then its shards are planned in the team's namespace, as that identity (made and
    bound there), with the batch's gateway key (a Secret there, its hash in the model's
    status), the shards pointed at the model's gateway; the identity's binding goes once
    the batch does."""
    model_namespace = ready_model_namespace(kube, "t-away", "m")
    reference = {"name": "m", "namespace": model_namespace}
    account = naming.tenant_batch_account_name(model_namespace, "m")
    try:
        kube.patch(
            GptOssModelResource,
            "m",
            {"spec": {"access": {"namespaces": ["elsewhere"]}}},
            namespace=model_namespace,
            patch_type=PatchType.MERGE,
        )
        kube.create(ServiceAccount(metadata=ObjectMeta(name=account, namespace=namespace)))
        create_batch(
            kube,
            namespace,
            "away",
            input={"configMap": {"name": "lines"}},
            output={"volume": {"claimName": "data", "path": "o"}},
            modelRef=reference,
        )

        def reason() -> str | None:
            status = batch_of(kube, namespace, "away").get("status") or {}
            return condition(status, "Reconciling").get("reason")

        wait_for(lambda: reason() == "AccessDenied", timeout=30, message="AccessDenied")
        kube.patch(
            GptOssModelResource,
            "m",
            {"spec": {"access": None}},
            namespace=model_namespace,
            patch_type=PatchType.MERGE,
        )
        wait_for(lambda: reason() == "IdentityTaken", timeout=30, message="IdentityTaken")
        assert _shards_job(kube, namespace, "away") is None
        kube.delete(ServiceAccount, account, namespace=namespace)

        job = wait_for(lambda: _shards_job(kube, namespace, "away"), timeout=60, message="shards")
        pod = job.spec.template.spec
        assert pod.serviceAccountName == account
        binding = kube.get(RoleBinding, account, namespace=namespace)
        assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [
            ("ServiceAccount", account, namespace)
        ]
        plan = json.loads(
            next(e.value for e in pod.containers[0].env if e.name == "GPTOSS_BATCH_PLAN")
        )
        assert plan["engineUrl"] == naming.gateway_url("m", model_namespace)
        key = batch_of(kube, namespace, "away")["status"]["gatewayKey"]
        (key_env,) = [e for e in pod.containers[0].env if e.name == "GPTOSS_ENGINE_API_KEY"]
        assert key_env.valueFrom.secretKeyRef.name == key["secret"]
        secret = kube.get(Secret, key["secret"], namespace=namespace)
        assert secret.metadata.ownerReferences[0].name == "away"
        digest = hashlib.sha256(base64.b64decode(secret.data["key"])).hexdigest()
        assert digest == key["sha256"]
        listed = wait_for(
            lambda: status_of(kube, model_namespace, "m").get("batches"),
            timeout=30,
            message="the batch in the model's status",
        )
        assert listed == [
            {"namespace": namespace, "name": "away", "keySHA256": digest, "priority": -10}
        ]

        kube.delete(InferenceBatchResource, "away", namespace=namespace)
        wait_for(
            lambda: not status_of(kube, model_namespace, "m").get("batches"),
            timeout=30,
            message="the batch gone from the model's status",
        )
        wait_for(
            lambda: (
                account
                not in [b.metadata.name for b in kube.list(RoleBinding, namespace=namespace)]
            ),
            timeout=30,
            message="the identity's binding removed",
        )
    finally:
        kube.delete(Namespace, model_namespace)


def _shards_job(kube: Client, namespace: str, batch: str) -> Job | None:
    try:
        return kube.get(Job, naming.batch_shards_job_name(batch), namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def test_a_batch_starts_only_once_its_model_serves_and_says_why_it_waits(
    kube: Client, operator: OperatorProcess, namespace: str
) -> None:
    """#23, defect 6: a model that exists but does not serve (its pod not up) holds the
    batch Pending with WaitingForEngine, no Job made; the shards start once it serves."""
    del operator
    create_model(kube, namespace, "m", serving={"podAnnotations": MANUAL})
    server = wait_for(
        lambda: next(iter(pods(kube, namespace, naming.server_selector("m"))), None),
        timeout=60,
        message="the model's pod",
    )
    wait_for(
        lambda: status_of(kube, namespace, "m").get("servedModelName"),
        timeout=60,
        message="the model set up (but not serving)",
    )
    create_claim(kube, namespace, "data")
    volume_batch(kube, namespace, "early", "in.jsonl", shards=1)
    waiting = wait_for(
        lambda: (
            condition(status := batch_of(kube, namespace, "early").get("status") or {},
                      "Reconciling").get("reason") == "WaitingForEngine"
            and status
        ),
        timeout=30,
        message="WaitingForEngine",
    )  # fmt: skip
    assert waiting["phase"] == "Pending"
    assert "not serving" in waiting["message"]
    assert _shards_job(kube, namespace, "early") is None, "no shard started against no engine"
    wait_for(  # the Event follows the status that prompts it
        lambda: "WaitingForEngine" in batch_events(kube, namespace, "early"),
        timeout=30,
        message="WaitingForEngine Event",
    )

    running_pod(kube, namespace, server)
    job = wait_for(lambda: _shards_job(kube, namespace, "early"), timeout=60, message="shards")
    assert job.spec.completions == 1
    assert wait_phase(kube, namespace, "early", ("Running",))["phase"] == "Running"


def test_a_model_deleted_under_a_running_batch_is_reported(
    kube: Client, operator: OperatorProcess, namespace: str
) -> None:
    """#23, defect 6: the batch's shards wait for an engine that will not come back; the
    batch says so (ModelNotFound) instead of "answering"."""
    del operator
    create_model(kube, namespace, "m")
    wait_for(lambda: status_of(kube, namespace, "m").get("phase") == "Ready", timeout=60)
    create_claim(kube, namespace, "data")
    volume_batch(kube, namespace, "orphan", "in.jsonl", shards=1)
    wait_phase(kube, namespace, "orphan", ("Running",))
    kube.delete(GptOssModelResource, "m", namespace=namespace)
    status = wait_for(
        lambda: (
            condition(status := batch_of(kube, namespace, "orphan").get("status") or {},
                      "Reconciling").get("reason") == "ModelNotFound"
            and status
        ),
        timeout=60,
        message="ModelNotFound while running",
    )  # fmt: skip
    assert status["phase"] == "Running"
    assert "does not exist" in status["message"]
