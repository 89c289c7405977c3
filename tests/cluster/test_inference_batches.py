"""InferenceBatch on the control plane: a batch waits for its model, runs as an Indexed
Job (one index per shard) whose real workers answer through the stand-in engine with the
model's batch identity, merges into OpenAI-format files, and reports counts, conditions,
printer columns and Events. A worker killed mid-shard is replaced by the Job and resumes
without asking answered lines again; a worker that cannot start is reported and waits.

``BatchPods`` plays the kubelet of the batch's pods (kwok leaves them alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.generic_resource import GenericNamespacedResource
from lightkube.models.core_v1 import PersistentVolumeClaimSpec, VolumeResourceRequirements
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, PersistentVolumeClaim, Pod, Secret
from lightkube.resources.rbac_authorization_v1 import RoleBinding

from gptoss_operator import naming
from gptoss_operator.api.resources import InferenceBatchResource
from gptoss_sandbox.cluster import SANDBOX_STORAGE_CLASS, free_port
from gptoss_sandbox.s3_server import S3Server
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.batch_pods import BatchPods
from tests.cluster.chart_helpers import token_kubeconfig, tools
from tests.cluster.model_helpers import create_model
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


def test_a_batch_waits_for_its_model_runs_its_shards_and_merges_every_line_once(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    engine: StandinEngine,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    lines = [request_line(i) for i in range(1, 61)]
    lines[6] = "{not json"  # line 7
    (data / "in" / "requests.jsonl").write_text("\n".join(lines) + "\n")
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

    create_model(kube, namespace, "m")
    served = engine.requests_served
    kubeconfig = batch_identity(kube, cluster, namespace, tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    with BatchPods(kube, namespace, kubeconfig, engine.url, {"data": data}, logs) as kubelet:
        status = wait_phase(kube, namespace, "b1", ("Succeeded", "Failed"), timeout=120)
        assert not kubelet.errors, kubelet.errors
        assert status["phase"] == "Succeeded", (
            status,
            [kubelet.log_of(p) for p in kubelet.started],
        )

    job = kube.get(Job, naming.batch_shards_job_name("b1"), namespace=namespace)
    assert job.spec.completionMode == "Indexed"
    assert job.spec.completions == 3
    assert job.spec.template.spec.serviceAccountName == naming.batch_account_name("m")
    assert status["counts"] == {"total": 60, "succeeded": 59, "failed": 1, "inFlight": 0}
    assert status["percent"] == 100
    assert status["usage"]["completionTokens"] > 0
    assert status["output"] == {
        "results": "pvc://data/out/b1/output.jsonl",
        "errors": "pvc://data/out/b1/errors.jsonl",
    }
    assert condition(status, "Complete")["status"] == "True"
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Reconciling")["status"] == "False"
    assert set(status["shards"]) == {"0", "1", "2"}
    assert all(shard["done"] for shard in status["shards"].values())
    assert engine.requests_served - served == 59

    outputs = read_jsonl(data / "out" / "b1" / "output.jsonl")
    assert sorted(o["custom_id"] for o in outputs) == sorted(
        f"req-{i}" for i in range(1, 61) if i != 7
    )
    assert outputs[0]["response"]["body"]["choices"][0]["message"]["content"].startswith(
        "Stand-in answer to: question"
    )
    errors = read_jsonl(data / "out" / "b1" / "errors.jsonl")
    assert [(e["error"]["line"], e["error"]["code"]) for e in errors] == [(7, "invalid_json")]
    reasons = batch_events(kube, namespace, "b1")
    for reason in ("ModelNotFound", "Running", "Merging", "Completed"):
        assert reason in reasons, reasons

    config = f"--kubeconfig={cluster.kubeconfig}"
    table = kubectl(config, "get", "ib", "b1", "-n", namespace).stdout
    header, row = table.splitlines()
    assert header.split() == [
        "NAME",
        "MODEL",
        "PHASE",
        "PERCENT",
        "SUCCEEDED",
        "FAILED",
        "TOTAL",
        "LEFT",
        "AGE",
    ]
    assert row.split()[:7] == ["b1", "m", "Succeeded", "100", "59", "1", "60"], table
    waited = kubectl(
        config, "wait", "--for=condition=Complete", "ib/b1", "-n", namespace, "--timeout=5s"
    )
    assert waited.returncode == 0, waited.stderr


def test_a_killed_worker_is_replaced_and_its_shard_resumes_while_the_operator_restarts(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    engine: StandinEngine,
    tmp_path: Path,
) -> None:
    here = setting(kube, cluster, namespace, tmp_path)
    data = here.data
    (data / "r.jsonl").write_text("\n".join(request_line(i) for i in range(1, 121)))
    # Slow enough that the first pod is still answering after its first part (10 s).
    engine.token_delay = 0.02
    try:
        volume_batch(kube, namespace, "b2", "r.jsonl", shards=1, requestsPerShard=2)
        with BatchPods(
            kube, namespace, here.kubeconfig, engine.url, {"data": data}, here.logs
        ) as kubelet:
            parts = data / "out" / "parts" / "00000"
            wait_for(
                lambda: parts.is_dir() and len(list(parts.glob("*.jsonl"))) >= 1,
                timeout=60,
                message="a first part written",
            )
            first = kubelet.started[0]
            operator.stop(kill=True)  # the operator may go away at any moment too
            kube.delete(Pod, first, namespace=namespace)
            wait_for(lambda: first in kubelet.finished, timeout=30, message="the first pod gone")
            # What the next pod must still ask: the lines not in any part.
            asked_before = engine.requests_served
            written = sum(len(path.read_text().splitlines()) for path in parts.glob("*.jsonl"))
            operator.start()
            status = wait_phase(kube, namespace, "b2", ("Succeeded", "Failed"), timeout=120)
            assert status["phase"] == "Succeeded", status
            shard_pods = [pod for pod in kubelet.started if "-shards-" in pod]
            assert len(shard_pods) == 2, kubelet.started
            assert kubelet.finished[first] == 143
        asked_after = engine.requests_served - asked_before
    finally:
        engine.token_delay = 0.0
    assert 0 < written < 120
    assert asked_after == 120 - written  # nothing written was asked again
    outputs = read_jsonl(data / "out" / "output.jsonl")
    assert sorted(o["custom_id"] for o in outputs) == sorted(f"req-{i}" for i in range(1, 121))
    assert status["counts"]["succeeded"] == 120


def test_a_worker_that_cannot_start_is_reported_and_waits(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    engine: StandinEngine,
    tmp_path: Path,
) -> None:
    create_model(kube, namespace, "m")
    create_claim(kube, namespace, "data")
    create_batch(
        kube,
        namespace,
        "b3",
        input={
            "s3": {
                "bucket": "requests",
                "key": "in.jsonl",
                "endpoint": "http://127.0.0.1:9",
                "credentialsSecretRef": {"name": "s3-keys-" + uuid.uuid4().hex[:6]},
            }
        },
        output={"volume": {"claimName": "data", "path": "out"}},
        shards=1,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    kubeconfig = tmp_path / "unused"
    with BatchPods(kube, namespace, kubeconfig, engine.url, {"data": tmp_path}, logs):
        wait_for(
            lambda: (
                condition(batch_of(kube, namespace, "b3").get("status") or {}, "Reconciling").get(
                    "reason"
                )
                == "CreateContainerConfigError"
            ),
            timeout=60,
            message="the missing Secret reported",
        )
    status = batch_of(kube, namespace, "b3")["status"]
    assert status["phase"] == "Running"
    assert "secret" in status["message"]
    assert "not found" in status["message"]
    assert "CreateContainerConfigError" in batch_events(kube, namespace, "b3")


def gptoss(kubeconfig: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gptoss_operator.cli.user_main",
            *args,
            "--kubeconfig",
            str(kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_the_cli_submits_a_local_file_follows_it_and_reads_results_from_a_bucket(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    engine: StandinEngine,
    tmp_path: Path,
) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(request_line(i) for i in range(1, 21)) + "\n")
    create_model(kube, namespace, "m")
    kubeconfig = batch_identity(kube, cluster, namespace, tmp_path)
    with S3Server(tmp_path / "s3" / "buckets", tmp_path / "versitygw.log") as s3:
        s3.client().create_bucket(Bucket="answers")
        kube.create(
            Secret(
                metadata=ObjectMeta(name="s3-keys", namespace=namespace),
                stringData={
                    "AWS_ACCESS_KEY_ID": s3.access_key,
                    "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                },
            )
        )
        logs = tmp_path / "logs"
        logs.mkdir()
        with BatchPods(kube, namespace, kubeconfig, engine.url, {}, logs) as kubelet:
            submitted = gptoss(
                cluster.kubeconfig,
                "batch",
                "submit",
                str(requests),
                "--model",
                "m",
                "-n",
                namespace,
                "--name",
                "cli",
                "--shards",
                "2",
                "--output",
                "s3://answers/run1",
                "--s3-endpoint",
                s3.endpoint,
                "--s3-secret",
                "s3-keys",
                "--s3-path-style",
                "--wait",
            )
            assert not kubelet.errors, kubelet.errors
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "cli"
        assert "Succeeded [" in submitted.stderr
        assert "100%" in submitted.stderr
        assert "answers: s3://answers/run1/output.jsonl" in submitted.stderr
        shown = gptoss(cluster.kubeconfig, "batch", "status", "cli", "-n", namespace)
        assert shown.stdout.startswith("Succeeded [" + "#" * 30 + "] 100% 20/20 (20 ok, 0 failed)")
        results = gptoss(
            cluster.kubeconfig,
            "batch",
            "results",
            "cli",
            "-n",
            namespace,
            env={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
        )
        assert results.returncode == 0, results.stderr
        lines = [json.loads(line) for line in results.stdout.splitlines()]
        assert sorted(line["custom_id"] for line in lines) == sorted(
            f"req-{i}" for i in range(1, 21)
        )
    # The uploaded input belongs to the batch.
    inputs = [
        cm
        for cm in kube.list(ConfigMap, namespace=namespace)
        if cm.metadata.name.startswith("cli-input-")
    ]
    assert len(inputs) == 1
    assert inputs[0].metadata.ownerReferences[0].name == "cli"
    assert "s3-keys" not in json.dumps(batch_of(kube, namespace, "cli")["status"])
    assert s3.secret_key not in json.dumps(batch_of(kube, namespace, "cli"))


def test_an_input_that_cannot_be_read_fails_the_batch_with_the_reason(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    engine: StandinEngine,
    tmp_path: Path,
) -> None:
    here = setting(kube, cluster, namespace, tmp_path)
    volume_batch(kube, namespace, "b4", "in/missing.jsonl", shards=2, ttlSecondsAfterFinished=8)
    with BatchPods(
        kube, namespace, here.kubeconfig, engine.url, {"data": here.data}, here.logs
    ) as kubelet:
        status = wait_phase(kube, namespace, "b4", ("Succeeded", "Failed"), timeout=120)
        assert not kubelet.errors, kubelet.errors
    assert status["phase"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "StorageUnusable"
    assert "pvc://data/in/missing.jsonl does not exist" in failed["message"]
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Complete")["status"] == "False"
    # A shard that cannot run ends the Job (no retry can help): no pod ran twice.
    shard_pods = [pod for pod in kubelet.started if "-shards-" in pod]
    assert len(shard_pods) <= 2, kubelet.started
    assert "StorageUnusable" in batch_events(kube, namespace, "b4")
    waited = kubectl(
        f"--kubeconfig={cluster.kubeconfig}",
        "wait",
        "--for=condition=Failed",
        "ib/b4",
        "-n",
        namespace,
        "--timeout=5s",
    )
    assert waited.returncode == 0, waited.stderr
    # ttlSecondsAfterFinished: the batch goes (and its Jobs with it).
    wait_for(
        lambda: not list(kube.list(InferenceBatchResource, namespace=namespace)),
        timeout=40,
        message="the finished batch deleted after its TTL",
    )
