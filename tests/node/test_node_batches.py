"""InferenceBatches run by the real pods of their Indexed Jobs on the real node, answered
by real vLLM: every line answered once and merged in the OpenAI batch format; a shard's pod
evicted while the operator's pod is killed, and the Job's next pod resuming without asking
a written line again; a pod the kubelet cannot start, reported; a batch submitted with the
CLI, written to an S3 bucket; an input that cannot be read, failing the batch.

Nothing here plays the kubelet: the pods get their token, volumes, env and Secrets from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import ApiError, Client
from lightkube.models.core_v1 import PersistentVolumeClaimSpec, VolumeResourceRequirements
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Event, PersistentVolumeClaim, Pod, Secret
from lightkube.resources.rbac_authorization_v1 import RoleBinding
from lightkube.types import CascadeType
from tests.cluster.model_helpers import patch_model, status_of
from tests.conftest import ClusterUnderTest
from tests.node.conftest import (
    MAX_MODEL_LEN,
    MODEL,
    RELEASE,
    SERVING,
    ChartRelease,
    ServedModel,
    claim_folder,
    engine_api_key,
    engine_successes,
    engine_url,
    kubectl,
    pod_ready,
    server_pods,
)
from tests.node.test_node_engine import prompt_tokens, question_of_length
from tests.support import wait_for

from gptoss_operator.api.resources import InferenceBatchResource
from gptoss_operator.core import naming
from gptoss_sandbox.node import HOST_IP, NODE_NAME, NODE_STORAGE_CLASS
from gptoss_sandbox.s3_server import S3Server
from gptoss_sandbox.tiny_gptoss import REPLY_FILE, SCRIPTED_ANALYSIS, SCRIPTED_ANSWER

pytestmark = [pytest.mark.cluster, pytest.mark.node]


def request_line(i: int, **body: Any) -> str:
    messages = [{"role": "user", "content": f"What is {i}?"}]
    return json.dumps(
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": messages, **body},
        }
    )


def create_claim(kube: Client, name: str, namespace: str = SERVING) -> None:
    kube.create(
        PersistentVolumeClaim(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=PersistentVolumeClaimSpec(
                accessModes=["ReadWriteOnce"],
                storageClassName=NODE_STORAGE_CLASS,
                resources=VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        )
    )


def create_batch(
    kube: Client,
    name: str,
    lines: list[str] | None,
    *,
    namespace: str = SERVING,
    model: str = MODEL,
    **spec: Any,
) -> None:
    """A batch of ``model`` (the served model); given ``lines``, its input is a ConfigMap
    of them and its output the folder out/ of a claim of its own, ``<name>-out``."""
    if lines is not None:
        kube.create(
            ConfigMap(
                metadata=ObjectMeta(name=f"{name}-input", namespace=namespace),
                data={"input.jsonl": "\n".join(lines) + "\n"},
            )
        )
        create_claim(kube, f"{name}-out", namespace)
        spec = {
            "input": {"configMap": {"name": f"{name}-input"}},
            "output": {"volume": {"claimName": f"{name}-out", "path": "out"}},
            **spec,
        }
    kube.create(
        InferenceBatchResource(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec={"modelRef": {"name": model}, **spec},
        )
    )


def batch_status(kube: Client, name: str, namespace: str = SERVING) -> dict[str, Any]:
    found = kube.get(InferenceBatchResource, name, namespace=namespace).to_dict()
    return dict(found.get("status") or {})


def wait_batch_finished(
    kube: Client, name: str, timeout: float = 600, namespace: str = SERVING
) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (s := batch_status(kube, name, namespace)).get("phase") in ("Succeeded", "Failed") and s
        ),
        timeout=timeout,
        interval=1,
        message=f"batch {name} finished",
    )


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def batch_events(kube: Client, name: str) -> list[str]:
    selector = {"involvedObject.kind": "InferenceBatch", "involvedObject.name": name}
    return [str(e.reason) for e in kube.list(Event, namespace=SERVING, fields=selector)]


def wait_batch_event(kube: Client, name: str, reason: str) -> None:
    """Wait for an Event of ``reason`` about batch ``name``: the operator posts it after it
    writes the status that prompts it, so the status may be read first."""
    wait_for(
        lambda: reason in batch_events(kube, name),
        timeout=30,
        message=f"a {reason} Event about InferenceBatch {name}",
    )


def shard_pods(kube: Client, name: str) -> list[Pod]:
    job = naming.batch_shards_job_name(name)
    return list(kube.list(Pod, namespace=SERVING, labels={"job-name": job}))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_a_batch_runs_in_the_indexed_jobs_pods_and_merges_real_answers(
    kube: Client, cluster: ClusterUnderTest, served_model: ServedModel, tiny_checkpoint: Any
) -> None:
    """The workers' requests, rendering and parsing against real vLLM: every line answered
    once with the scripted text and true usage, a cut line marked ``length``, a line that
    is not JSON and a prompt over the context in the error file."""
    del served_model
    reply = json.loads(tiny_checkpoint[REPLY_FILE])["token_ids"]
    lines = [request_line(i) for i in range(1, 25)]
    lines[4] = "{not json"  # line 5
    lines.append(request_line(25, max_completion_tokens=12))
    too_long = question_of_length(MAX_MODEL_LEN + 10)
    lines.append(request_line(26, messages=[{"role": "user", "content": too_long}]))
    before = engine_successes(kube)
    create_batch(kube, "b1", lines, shards=3, requestsPerShard=2, defaults={"maxTokens": 200})
    status = wait_batch_finished(kube, "b1")
    assert status["phase"] == "Succeeded", status
    assert status["counts"] == {"total": 26, "succeeded": 24, "failed": 2, "inFlight": 0}
    assert status["percent"] == 100
    assert status["usage"]["completionTokens"] == 23 * len(reply) + 12
    assert status["output"] == {
        "results": "pvc://b1-out/out/output.jsonl",
        "errors": "pvc://b1-out/out/errors.jsonl",
    }
    for type_, value in (("Complete", "True"), ("Ready", "True"), ("Reconciling", "False")):
        assert condition(status, type_)["status"] == value, type_
    assert set(status["shards"]) == {"0", "1", "2"}
    assert all(shard["done"] for shard in status["shards"].values())
    assert engine_successes(kube) - before == 24, "each line asked once"

    shards = kube.get(Job, naming.batch_shards_job_name("b1"), namespace=SERVING)
    assert shards.spec.completionMode == "Indexed"
    assert shards.spec.template.spec.serviceAccountName == naming.batch_account_name(MODEL)
    pods = shard_pods(kube, "b1")
    index = "batch.kubernetes.io/job-completion-index"
    assert sorted(p.metadata.annotations[index] for p in pods) == ["0", "1", "2"]
    for pod in pods:
        assert pod.spec.nodeName == NODE_NAME
        (state,) = pod.status.containerStatuses
        assert state.state.terminated.exitCode == 0

    folder = claim_folder(kube, SERVING, "b1-out") / "out"
    answers = {a["custom_id"]: a for a in read_jsonl(folder / "output.jsonl")}
    assert set(answers) == {f"req-{i}" for i in range(1, 26) if i != 5}
    for i in (*range(1, 5), *range(6, 25)):
        body = answers[f"req-{i}"]["response"]["body"]
        assert body["model"] == MODEL
        (choice,) = body["choices"]
        assert choice["message"]["content"] == SCRIPTED_ANSWER
        assert choice["message"]["reasoning"] == SCRIPTED_ANALYSIS
        assert choice["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == len(reply)
        assert body["usage"]["prompt_tokens"] == prompt_tokens(f"What is {i}?")
    cut = answers["req-25"]["response"]["body"]
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 12
    errors = read_jsonl(folder / "errors.jsonl")
    assert len(errors) == 2, errors
    (invalid,) = [e for e in errors if e["error"] is not None]
    assert (invalid["error"]["line"], invalid["error"]["code"]) == (5, "invalid_json")
    (refused_line,) = [e for e in errors if e["custom_id"] == "req-26"]
    refused = refused_line["response"]
    assert refused["status_code"] == 400
    assert refused["body"]["error"]["code"] == "PromptTooLong"

    for reason in ("Running", "Merging", "Completed"):
        wait_batch_event(kube, "b1", reason)
    table = kubectl(cluster, "get", "ib", "b1", "-n", SERVING).stdout
    header, row = table.splitlines()
    assert header.split() == [
        "NAME", "MODEL", "PHASE", "PERCENT", "SUCCEEDED", "FAILED", "TOTAL", "LEFT", "AGE",
    ]  # fmt: skip
    assert row.split()[:7] == ["b1", MODEL, "Succeeded", "100", "24", "2", "26"], table
    waited = kubectl(
        cluster, "wait", "--for=condition=Complete", "ib/b1", "-n", SERVING, "--timeout=5s"
    )
    assert waited.returncode == 0, waited.stderr


def test_a_second_batch_into_the_same_folder_is_refused_and_the_first_answers_stay(
    kube: Client, served_model: ServedModel
) -> None:
    """Running the same submit twice: the second batch fails with OutputInUse, naming the
    folder and the first batch, and the first batch's files are byte for byte as they were."""
    del served_model
    create_batch(kube, "own1", [request_line(i) for i in range(1, 4)], shards=1)
    assert wait_batch_finished(kube, "own1")["phase"] == "Succeeded"
    folder = claim_folder(kube, SERVING, "own1-out") / "out"
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert set(before) >= {"output.jsonl", "errors.jsonl", "summary.json", "owner.json"}
    kube.create(
        ConfigMap(
            metadata=ObjectMeta(name="own2-input", namespace=SERVING),
            data={"input.jsonl": request_line(9) + "\n"},
        )
    )
    create_batch(
        kube,
        "own2",
        None,
        input={"configMap": {"name": "own2-input"}},
        output={"volume": {"claimName": "own1-out", "path": "out"}},
        shards=1,
    )
    status = wait_batch_finished(kube, "own2")
    assert status["phase"] == "Failed", status
    failed = condition(status, "Failed")
    assert failed["reason"] == "OutputInUse", failed
    assert "pvc://own1-out/out" in failed["message"]
    assert f"InferenceBatch {SERVING}/own1" in failed["message"]
    wait_batch_event(kube, "own2", "OutputInUse")
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before
    assert not (folder / "parts").exists() or not any((folder / "parts").rglob("*.jsonl"))


def test_a_batch_created_again_under_its_name_runs_itself_not_the_old_jobs(
    kube: Client, served_model: ServedModel
) -> None:
    """#23, defect 3: the Jobs of a deleted batch that are still there (orphaned here, so
    they stay; usually the garbage collector has not got to them yet) are not read as the
    new batch's: it waits for them to go, then runs its own lines."""
    del served_model
    create_batch(kube, "again", [request_line(i) for i in range(1, 4)], shards=1)
    assert wait_batch_finished(kube, "again")["counts"]["total"] == 3
    kube.delete(InferenceBatchResource, "again", namespace=SERVING, cascade=CascadeType.ORPHAN)
    wait_for(lambda: not _exists(kube, "again"), timeout=60, message="the first batch gone")
    kube.create(
        ConfigMap(
            metadata=ObjectMeta(name="again2-input", namespace=SERVING),
            data={"input.jsonl": "\n".join(request_line(i) for i in range(11, 16)) + "\n"},
        )
    )
    create_claim(kube, "again2-out")
    create_batch(
        kube,
        "again",
        None,
        input={"configMap": {"name": "again2-input"}},
        output={"volume": {"claimName": "again2-out", "path": "out"}},
        shards=1,
    )
    waiting = wait_for(
        lambda: (
            condition(batch_status(kube, "again"), "Reconciling").get("reason")
            == "WaitingForOldJobs"
            and batch_status(kube, "again")
        ),
        timeout=60,
        message="the new batch waiting for the old Jobs",
    )
    assert waiting["phase"] == "Pending", waiting
    assert naming.batch_shards_job_name("again") in waiting["message"]
    for job in (naming.batch_shards_job_name("again"), naming.batch_merge_job_name("again")):
        kube.delete(Job, job, namespace=SERVING, cascade=CascadeType.BACKGROUND)
    status = wait_batch_finished(kube, "again")
    assert status["phase"] == "Succeeded", status
    assert status["counts"] == {"total": 5, "succeeded": 5, "failed": 0, "inFlight": 0}
    answers = read_jsonl(claim_folder(kube, SERVING, "again2-out") / "out" / "output.jsonl")
    assert sorted(a["custom_id"] for a in answers) == [f"req-{i}" for i in range(11, 16)]


def _exists(kube: Client, batch: str) -> bool:
    try:
        kube.get(InferenceBatchResource, batch, namespace=SERVING)
    except ApiError as error:
        if error.status.code == 404:
            return False
        raise
    return True


def operator_pod(kube: Client, chart: ChartRelease) -> Pod | None:
    labels = {"app.kubernetes.io/instance": RELEASE}
    pods = kube.list(Pod, namespace=chart.namespace, labels=labels)
    return next((p for p in pods if p.metadata.deletionTimestamp is None), None)


def gone(kube: Client, pod: Pod) -> bool:
    try:
        kube.get(Pod, pod.metadata.name, namespace=pod.metadata.namespace)
    except ApiError as error:
        return error.status.code == 404
    return False


def test_a_pod_evicted_while_the_operator_is_killed_loses_and_repeats_no_line(
    kube: Client, chart_release: ChartRelease, served_model: ServedModel
) -> None:
    """The shard's pod is evicted (SIGTERM from the kubelet) and the operator's pod killed
    at once; the Job's next pod asks only what no part holds, and the batch completes."""
    del served_model
    total = 160
    lines = [request_line(i) for i in range(1, total + 1)]
    create_batch(kube, "b2", lines, shards=1, requestsPerShard=2)
    parts = claim_folder(kube, SERVING, "b2-out") / "out" / "parts" / "00000"
    wait_for(
        lambda: parts.is_dir() and any(parts.glob("*.jsonl")),
        timeout=300,
        interval=0.2,
        message="the shard's first part written",
    )
    (victim,) = [p for p in shard_pods(kube, "b2") if p.status.phase == "Running"]
    operator = operator_pod(kube, chart_release)
    assert operator is not None
    kube.delete(Pod, operator.metadata.name, namespace=chart_release.namespace, grace_period=0)
    kube.create(
        Pod.Eviction(metadata=ObjectMeta(name=victim.metadata.name, namespace=SERVING)),
        victim.metadata.name,
        namespace=SERVING,
    )
    wait_for(lambda: gone(kube, victim), timeout=120, message="the evicted pod gone")
    # What the next pod must still ask: the lines in no part.
    asked_before = engine_successes(kube)
    written = sum(len(path.read_text().splitlines()) for path in parts.glob("*.jsonl"))
    assert 0 < written < total, written
    status = wait_batch_finished(kube, "b2")
    assert status["phase"] == "Succeeded", status
    assert engine_successes(kube) - asked_before == total - written, "a written line asked again"
    assert status["counts"] == {"total": total, "succeeded": total, "failed": 0, "inFlight": 0}
    assert victim.metadata.uid not in {p.metadata.uid for p in shard_pods(kube, "b2")}
    assert status["shards"]["0"]["worker"] != victim.metadata.name
    answers = read_jsonl(claim_folder(kube, SERVING, "b2-out") / "out" / "output.jsonl")
    ids = [a["custom_id"] for a in answers]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(1, total + 1))
    assert len(ids) == len(set(ids)), "no line answered twice in the output"
    replaced = wait_for(
        lambda: (pod := operator_pod(kube, chart_release)) and pod_ready(pod) and pod,
        timeout=120,
        message="the operator's next pod Ready",
    )
    assert replaced.metadata.uid != operator.metadata.uid


def test_a_worker_the_kubelet_cannot_start_is_reported_and_waits(
    kube: Client, served_model: ServedModel
) -> None:
    """A Secret the pod needs is missing: the kubelet reports CreateContainerConfigError,
    the batch says so and waits (the Secret may yet come)."""
    del served_model
    create_claim(kube, "b3-out")
    create_batch(
        kube,
        "b3",
        None,
        input={
            "s3": {
                "bucket": "requests",
                "key": "in.jsonl",
                "endpoint": f"http://{HOST_IP}:9",
                "credentialsSecretRef": {"name": "s3-keys-" + uuid.uuid4().hex[:6]},
            }
        },
        output={"volume": {"claimName": "b3-out", "path": "out"}},
        shards=1,
    )
    try:
        wait_for(
            lambda: (
                condition(batch_status(kube, "b3"), "Reconciling").get("reason")
                == "CreateContainerConfigError"
            ),
            timeout=120,
            message="the missing Secret reported",
        )
        status = batch_status(kube, "b3")
        assert status["phase"] == "Running"
        assert "secret" in status["message"]
        assert "not found" in status["message"]
        wait_batch_event(kube, "b3", "CreateContainerConfigError")
    finally:
        # Its pod holds a share of the node's CPU the next tests' pods need.
        kube.delete(InferenceBatchResource, "b3", namespace=SERVING)


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
        timeout=600,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_the_cli_submits_a_local_file_follows_it_and_reads_results_from_a_bucket(
    kube: Client, cluster: ClusterUnderTest, served_model: ServedModel, tmp_path: Path
) -> None:
    """The S3 server runs on this machine, at an address both the pods and the CLI
    reach (the machine's end of the node's link)."""
    del served_model
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(request_line(i) for i in range(1, 21)) + "\n")
    with S3Server(tmp_path / "s3" / "buckets", tmp_path / "versitygw.log", host=HOST_IP) as s3:
        s3.client().create_bucket(Bucket="answers")
        kube.create(
            Secret(
                metadata=ObjectMeta(name="s3-keys", namespace=SERVING),
                stringData={
                    "AWS_ACCESS_KEY_ID": s3.access_key,
                    "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                },
            )
        )
        submitted = gptoss(
            cluster.kubeconfig,
            "batch", "submit", str(requests),
            "--model", MODEL, "-n", SERVING, "--name", "cli", "--shards", "2",
            "--output", "s3://answers/run1",
            "--s3-endpoint", s3.endpoint, "--s3-secret", "s3-keys", "--s3-path-style",
            "--wait",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "cli"
        assert "Succeeded [" in submitted.stderr
        assert "100%" in submitted.stderr
        assert "answers: s3://answers/run1/output.jsonl" in submitted.stderr
        shown = gptoss(cluster.kubeconfig, "batch", "status", "cli", "-n", SERVING)
        assert shown.stdout.startswith("Succeeded [" + "#" * 30 + "] 100% 20/20 (20 ok, 0 failed)")
        keys = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        results = gptoss(cluster.kubeconfig, "batch", "results", "cli", "-n", SERVING, env=keys)
        assert results.returncode == 0, results.stderr
        lines = [json.loads(line) for line in results.stdout.splitlines()]
        assert sorted(line["custom_id"] for line in lines) == sorted(
            f"req-{i}" for i in range(1, 21)
        )
        assert {line["response"]["body"]["choices"][0]["message"]["content"] for line in lines} == {
            SCRIPTED_ANSWER
        }
    # The uploaded input belongs to the batch.
    inputs = [
        cm
        for cm in kube.list(ConfigMap, namespace=SERVING)
        if cm.metadata.name.startswith("cli-input-")
    ]
    assert len(inputs) == 1
    assert inputs[0].metadata.ownerReferences[0].name == "cli"
    batch = kube.get(InferenceBatchResource, "cli", namespace=SERVING).to_dict()
    assert "s3-keys" not in json.dumps(batch["status"])
    assert s3.secret_key not in json.dumps(batch)


def test_an_input_that_cannot_be_read_fails_the_batch_with_the_reason(
    kube: Client, cluster: ClusterUnderTest, served_model: ServedModel
) -> None:
    del served_model
    create_claim(kube, "b4-data")
    create_batch(
        kube,
        "b4",
        None,
        input={"volume": {"claimName": "b4-data", "path": "in/missing.jsonl"}},
        output={"volume": {"claimName": "b4-data", "path": "out"}},
        shards=2,
        ttlSecondsAfterFinished=8,
    )
    status = wait_batch_finished(kube, "b4", timeout=300)
    assert status["phase"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "StorageUnusable"
    assert "pvc://b4-data/in/missing.jsonl does not exist" in failed["message"]
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Complete")["status"] == "False"
    # A shard that cannot run ends the Job (no retry can help): no index ran twice.
    indexes = [p.metadata.annotations["batch.kubernetes.io/job-completion-index"]
               for p in shard_pods(kube, "b4")]  # fmt: skip
    assert len(indexes) == len(set(indexes)), indexes
    wait_batch_event(kube, "b4", "StorageUnusable")
    waited = kubectl(
        cluster, "wait", "--for=condition=Failed", "ib/b4", "-n", SERVING, "--timeout=5s"
    )
    assert waited.returncode == 0, waited.stderr
    # ttlSecondsAfterFinished: the batch goes (and its Jobs with it).
    wait_for(
        lambda: not [b for b in kube.list(InferenceBatchResource, namespace=SERVING)
                     if b.metadata.name == "b4"],
        timeout=60,
        message="the finished batch deleted after its TTL",
    )  # fmt: skip


def test_a_team_runs_a_batch_of_another_namespaces_model_with_a_key_of_its_own(
    kube: Client, served_model: ServedModel, node_namespace: str
) -> None:
    """#27: a batch in a team's namespace names the model of the serving namespace. Its
    shards run in the team's namespace (its ConfigMap in, its claim out) as the model's
    batch identity there, and reach vLLM through the sidecars' gateway with the batch's
    own key: the engine's key is nowhere in the team's namespace, the key opens nothing
    once the batch is done, and the identity's RoleBinding goes with the last batch."""
    del served_model
    team = node_namespace
    engine_key = engine_api_key(kube)
    lines = [request_line(i) for i in range(1, 9)]
    reference = {"name": MODEL, "namespace": SERVING}
    create_batch(kube, "away", lines, namespace=team, modelRef=reference, shards=2)
    listed = wait_for(
        lambda: [
            b
            for b in status_of(kube, SERVING, MODEL).get("batches") or []
            if b["namespace"] == team
        ],
        timeout=120,
        message="the batch listed in the model's status",
    )
    status = wait_batch_finished(kube, "away", namespace=team)
    assert status["phase"] == "Succeeded", status
    assert status["counts"] == {"total": 8, "succeeded": 8, "failed": 0, "inFlight": 0}
    answers = read_jsonl(claim_folder(kube, team, "away-out") / "out" / "output.jsonl")
    assert sorted(a["custom_id"] for a in answers) == [f"req-{i}" for i in range(1, 9)]
    assert {a["response"]["body"]["choices"][0]["message"]["content"] for a in answers} == {
        SCRIPTED_ANSWER
    }

    account = naming.tenant_batch_account_name(SERVING, MODEL)
    shards = kube.get(Job, naming.batch_shards_job_name("away"), namespace=team)
    assert shards.spec.template.spec.serviceAccountName == account
    (key_env,) = [
        e for e in shards.spec.template.spec.containers[0].env if e.name == "GPTOSS_ENGINE_API_KEY"
    ]
    key_secret = status["gatewayKey"]["secret"]
    assert key_env.valueFrom.secretKeyRef.name == key_secret
    batch_key = base64.b64decode(kube.get(Secret, key_secret, namespace=team).data["key"]).decode()
    assert hashlib.sha256(batch_key.encode()).hexdigest() == listed[0]["keySHA256"]
    for secret in kube.list(Secret, namespace=team):
        values = {
            base64.b64decode(v).decode(errors="replace") for v in (secret.data or {}).values()
        }
        assert engine_key not in values, f"the engine's key in {team}/{secret.metadata.name}"

    # Done: the model no longer lists the batch, the gateway refuses its key, and the
    # shards' RoleBinding in the team's namespace is gone.
    wait_for(
        lambda: (
            not [
                b
                for b in status_of(kube, SERVING, MODEL).get("batches") or []
                if b["namespace"] == team
            ]
        ),
        timeout=120,
        message="the finished batch no longer listed",
    )
    wait_for(
        lambda: (
            not [b for b in kube.list(RoleBinding, namespace=team) if b.metadata.name == account]
        ),
        timeout=120,
        message="the shards' RoleBinding removed",
    )
    gateway = engine_url(kube).rsplit(":", 1)[0] + f":{naming.GATEWAY_PORT}"
    headers = {"Authorization": f"Bearer {batch_key}"}
    assert httpx.get(f"{gateway}/v1/models", headers=headers, timeout=10).status_code == 401


def test_a_replica_lost_under_a_batch_charges_no_line(
    kube: Client, served_model: ServedModel
) -> None:
    """#23, defect 4, on two real replicas: one vLLM pod is deleted mid-batch (vLLM
    aborts its streams as it stops, the Service keeps answering through the other). With
    one attempt per line, a line charged for that would fail; none does. Runs last in
    this module: the model is back to one replica after it."""
    del served_model
    status: dict[str, Any] = {}
    patch_model(kube, SERVING, MODEL, {"spec": {"serving": {"replicas": 2}}})
    try:
        wait_for(
            lambda: len([p for p in server_pods(kube) if pod_ready(p)]) == 2,
            timeout=600,
            interval=1,
            message="two vLLM replicas Ready",
        )
        total = 120
        lines = [request_line(i) for i in range(1, total + 1)]
        create_batch(kube, "roll", lines, shards=2, requestsPerShard=4, maxLineAttempts=1)
        wait_for(
            lambda: batch_status(kube, "roll").get("counts", {}).get("succeeded", 0) >= 10,
            timeout=300,
            interval=0.5,
            message="the batch under way",
        )
        victim = server_pods(kube)[0]
        kube.delete(Pod, victim.metadata.name, namespace=SERVING)
        status = wait_batch_finished(kube, "roll", timeout=900)
    finally:
        patch_model(kube, SERVING, MODEL, {"spec": {"serving": {"replicas": 1}}})
        if not status:  # failed on the way: its lines would load the engine of later tests
            kube.delete(InferenceBatchResource, "roll", namespace=SERVING)
    assert status["phase"] == "Succeeded", status
    assert status["counts"] == {"total": total, "succeeded": total, "failed": 0, "inFlight": 0}
    answers = read_jsonl(claim_folder(kube, SERVING, "roll-out") / "out" / "output.jsonl")
    assert sorted(a["custom_id"] for a in answers) == sorted(
        f"req-{i}" for i in range(1, total + 1)
    )
    wait_for(
        lambda: len(server_pods(kube)) == 1 and pod_ready(server_pods(kube)[0]),
        timeout=600,
        interval=1,
        message="back to one replica",
    )
