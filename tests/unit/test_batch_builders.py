"""The Jobs of an InferenceBatch: an Indexed Job per shard with the right failure policy,
identity, volumes and credentials; the plan its workers read; the status it leads to."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

from gptoss_operator.api.batch import InferenceBatchSpec
from gptoss_operator.api.batch_plan import BatchPlan
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.builders import ModelContext, rbac
from gptoss_operator.builders.batch import (
    BatchContext,
    gateway_key_secret,
    merge_job,
    model_names,
    shards_job,
)
from gptoss_operator.controllers.batch.status import (
    Observed,
    batch_demand,
    pod_trouble,
    status_changed,
)
from gptoss_operator.core.settings import Settings
from tests.support import batch_status_patch


def context(
    model_spec: dict[str, Any] | None = None, model_namespace: str = "team", **spec: Any
) -> BatchContext:
    model = ModelContext(
        "gpt-oss-20b",
        model_namespace,
        "model-uid",
        GptOssModelSpec.model_validate(
            {"source": {"repo": "openai/gpt-oss-20b"}, **(model_spec or {})}
        ),
        Settings(),
    )
    body = {
        "modelRef": {"name": "gpt-oss-20b"},
        "input": {"volume": {"claimName": "datasets", "path": "in/r.jsonl"}},
        "output": {"volume": {"claimName": "results", "path": "out"}},
        **spec,
    }
    return BatchContext(
        "eval",
        "team",
        "batch-uid",
        InferenceBatchSpec.model_validate(body),
        model,
        key_secret="eval-gateway-0123456789",
    )


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {var["name"]: var.get("value", var.get("valueFrom")) for var in container["env"]}


def test_the_shards_run_as_an_indexed_job_of_the_models_batch_identity() -> None:
    job = shards_job(context(shards=8, parallelism=3, backoffLimitPerIndex=2))
    spec = job["spec"]
    assert job["metadata"]["name"] == "eval-shards"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "InferenceBatch"
    assert job["metadata"]["labels"]["gptoss.ai/batch"] == "eval"
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 3)
    assert spec["backoffLimitPerIndex"] == 2
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [2]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "gpt-oss-20b-batch"
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["command"] == ["gptoss-batch", "shard"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts["/batch/volumes/datasets"] is True  # the input is only read
    assert mounts["/batch/volumes/results"] is False
    # The batch's own gateway key, never the engine's.
    assert env_of(job)["GPTOSS_ENGINE_API_KEY"] == {
        "secretKeyRef": {"name": "eval-gateway-0123456789", "key": "key"}
    }
    assert "GPTOSS_ENGINE_API_KEY" not in env_of(merge_job(context()))


def test_a_batch_of_another_namespaces_model_runs_here_as_that_models_identity_here() -> None:
    ctx = context(model_namespace="platform")
    job = shards_job(ctx)
    assert job["metadata"]["namespace"] == "team"
    assert job["metadata"]["labels"]["gptoss.ai/model-namespace"] == "platform"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform.gpt-oss-20b-batch"
    plan = BatchPlan.model_validate_json(env_of(job)["GPTOSS_BATCH_PLAN"])
    assert plan.engineUrl == "http://gpt-oss-20b-vllm.platform.svc:8001"
    account, binding = rbac.tenant_batch_identity(
        "gpt-oss-20b", "platform", "team", "gptoss-batch-worker"
    )
    assert (account["kind"], account["metadata"]["namespace"]) == ("ServiceAccount", "team")
    assert account["metadata"]["name"] == "platform.gpt-oss-20b-batch"
    assert binding["roleRef"]["name"] == "gptoss-batch-worker"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "platform.gpt-oss-20b-batch", "namespace": "team"}
    ]


def test_the_gateway_key_secret_goes_with_the_batch_and_is_named_after_its_hash() -> None:
    secret = gateway_key_secret(context(), "the-key", "ab" * 32)
    assert secret["metadata"]["name"] == "eval-gateway-ababababab"
    assert secret["metadata"]["namespace"] == "team"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "batch-uid"
    assert base64.b64decode(secret["data"]["key"]) == b"the-key"


def test_the_plan_points_at_the_models_gateway_and_the_mounted_files() -> None:
    plan = BatchPlan.model_validate_json(env_of(shards_job(context()))["GPTOSS_BATCH_PLAN"])
    assert plan.engineUrl == "http://gpt-oss-20b-vllm.team.svc:8001"
    assert plan.servedModelName == "gpt-oss-20b"
    assert plan.input.path == "/batch/volumes/datasets/in/r.jsonl"
    assert plan.input.url == "pvc://datasets/in/r.jsonl"
    assert plan.output.path == "/batch/volumes/results/out"
    assert model_names(context().model) == ["gpt-oss-20b", "openai/gpt-oss-20b"]


def _in_flight(model_spec: dict[str, Any], **spec: Any) -> int:
    plan = shards_job(context(model_spec, **spec))
    return BatchPlan.model_validate_json(env_of(plan)["GPTOSS_BATCH_PLAN"]).requestsPerShard


def test_the_shards_keep_no_more_in_flight_than_the_engine_admits() -> None:
    generic = {"serving": {"gpuProfile": "Generic"}}  # max-num-seqs 256, sidecar 64
    # 4 x 32 fits in the 192 the sidecar leaves; 8 x 32 does not: 24 each.
    assert _in_flight(generic, shards=4) == 32
    assert _in_flight(generic, shards=8) == 24
    assert _in_flight(generic, shards=16, parallelism=8) == 24  # shards running at once count
    # Two replicas have twice the room; autoscaling counts the most it scales to.
    assert _in_flight({"serving": {"gpuProfile": "Generic", "replicas": 2}}, shards=8) == 32
    scaled = {"serving": {"gpuProfile": "Generic", "autoscaling": {"maxReplicas": 2}}}
    assert _in_flight(scaled, shards=8) == 32
    # An engine told to admit 4 at a time (extraArgs, the last value wins, as in vLLM):
    # the sidecar keeps 4, no room is left, and each shard still advances one line.
    small = {"serving": {"extraArgs": ["--max-num-seqs", "512", "--max-num-seqs=4"]}}
    assert _in_flight(small, shards=2) == 1
    # H100 (1024) leaves room for a large batch as asked.
    assert _in_flight({}, shards=8, requestsPerShard=64) == 64


def test_s3_keys_come_from_the_secret_by_reference_and_never_sit_in_the_plan() -> None:
    s3 = {
        "bucket": "data",
        "key": "in.jsonl",
        "endpoint": "https://s3.example.com",
        "credentialsSecretRef": {"name": "s3-keys"},
    }
    job = merge_job(
        context(
            input={"s3": s3}, output={"s3": {**s3, "key": "out/", "credentialsSecretRef": None}}
        )
    )
    env = env_of(job)
    assert env["GPTOSS_INPUT_AWS_ACCESS_KEY_ID"] == {
        "secretKeyRef": {"name": "s3-keys", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["GPTOSS_INPUT_AWS_SESSION_TOKEN"]["secretKeyRef"]["optional"] is True
    assert "GPTOSS_OUTPUT_AWS_ACCESS_KEY_ID" not in env  # the pod's own credentials
    assert "GPTOSS_ENGINE_API_KEY" not in env  # the merge calls no engine
    plan = json.loads(env["GPTOSS_BATCH_PLAN"])
    assert plan["input"]["credentialsEnv"] == "GPTOSS_INPUT_"
    assert "credentialsEnv" not in plan["output"]
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert not any("secret" in volume for volume in volumes)


def test_a_configmap_input_is_mounted_as_a_file() -> None:
    job = shards_job(context(input={"configMap": {"name": "small", "key": "r.jsonl"}}))
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["input"]["configMap"] == {
        "name": "small",
        "items": [{"key": "r.jsonl", "path": "input.jsonl"}],
    }


NOW = datetime.datetime(2026, 11, 26, 12, 0, 0, tzinfo=datetime.UTC)


def finished(type_: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "status": {
            "startTime": "2026-11-26T11:50:00Z",
            "conditions": [{"type": type_, "status": "True", "reason": reason, "message": message}],
        }
    }


def test_status_counts_shards_and_estimates_the_time_left() -> None:
    running = {"status": {"startTime": "2026-11-26T11:50:00Z"}}
    shards = {
        "0": {"total": 600, "succeeded": 290, "failed": 10, "inFlight": 4, "completionTokens": 900},
        "1": {"total": 600, "succeeded": 300, "failed": 0, "inFlight": 4, "completionTokens": 1000},
    }
    status = batch_status_patch(2, {"shards": shards}, 1, Observed(shards_job=running), NOW)
    assert status["phase"] == "Running"
    assert status["counts"] == {"total": 1200, "succeeded": 590, "failed": 10, "inFlight": 8}
    assert status["percent"] == 50
    assert status["linesPerSecond"] == 1.0  # 600 lines in 600 s
    assert status["estimatedTimeLeft"] == "10m00s"
    reconciling = next(c for c in status["conditions"] if c["type"] == "Reconciling")
    assert reconciling["status"] == "True"


def test_a_batch_without_progress_needs_no_status_write() -> None:
    """The rates and the time left follow the clock; they are written with progress, not
    on every pass (a running batch was patched every resync for them alone)."""
    running = {"status": {"startTime": "2026-11-26T11:50:00Z"}}
    shards = {"0": {"total": 600, "succeeded": 300, "failed": 0, "inFlight": 4}}
    first = batch_status_patch(1, {"shards": shards}, 1, Observed(shards_job=running), NOW)
    stored = {"shards": shards, **first}
    later = NOW + datetime.timedelta(seconds=30)
    again = batch_status_patch(1, stored, 1, Observed(shards_job=running), later)
    assert again["linesPerSecond"] != first["linesPerSecond"]
    assert not status_changed(stored, again)
    progressed = {"0": {**shards["0"], "succeeded": 310}}
    moved = batch_status_patch(
        1, {**stored, "shards": progressed}, 1, Observed(shards_job=running), later
    )
    assert status_changed(stored, moved)
    trouble = Observed(shards_job=running, trouble=("ImagePullBackOff", "the image is missing"))
    assert status_changed(stored, batch_status_patch(1, stored, 1, trouble, later))
    running_again = Observed(shards_job=running)
    assert status_changed(stored, batch_status_patch(1, stored, 2, running_again, later))


def test_a_batch_finishes_with_the_merges_figures_or_fails_with_the_shards_reason() -> None:
    summary = {
        "summary": {
            "succeeded": 1190,
            "failed": 10,
            "promptTokens": 5,
            "completionTokens": 7,
            "output": "s3://b/o/output.jsonl",
            "errors": "s3://b/o/errors.jsonl",
        }
    }
    done = batch_status_patch(
        2,
        {},
        1,
        Observed(shards_job=finished("Complete"), merge_job=finished("Complete"), merged=summary),
        NOW,
    )
    assert done["phase"] == "Succeeded"
    assert done["output"]["results"] == "s3://b/o/output.jsonl"
    assert done["estimatedTimeLeft"] is None
    complete = next(c for c in done["conditions"] if c["type"] == "Complete")
    assert (complete["status"], complete["reason"]) == ("True", "Completed")

    failure = {"reason": "StorageUnusable", "message": "output s3://b/o is not writable"}
    merging = batch_status_patch(
        2,
        {},
        1,
        Observed(shards_job=finished("Failed", "PodFailurePolicy"), shard_failure=failure),
        NOW,
    )
    assert merging["phase"] == "Merging"  # what was answered is kept
    failed = batch_status_patch(
        2,
        {},
        1,
        Observed(
            shards_job=finished("Failed", "PodFailurePolicy"),
            merge_job=finished("Complete"),
            shard_failure=failure,
            merged=summary,
        ),
        NOW,
    )
    assert failed["phase"] == "Failed"
    stalled = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert (stalled["status"], stalled["reason"]) == ("True", "StorageUnusable")
    assert "not writable" in stalled["message"]


def test_a_merge_that_cannot_run_fails_the_batch_with_its_own_reason() -> None:
    """#23, defect 8: the merge's termination message names why (not a generic
    MergeFailed); a merge that left none falls back to the shards' reason."""
    unusable = {"reason": "StorageUnusable", "message": "output pvc://d/out is not writable"}
    failed = batch_status_patch(
        1,
        {},
        1,
        Observed(
            shards_job=finished("Complete"),
            merge_job=finished("Failed", "PodFailurePolicy"),
            merge_failure=unusable,
        ),
        NOW,
    )
    assert failed["phase"] == "Failed"
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert (condition["reason"], condition["message"]) == (
        "StorageUnusable",
        "output pvc://d/out is not writable",
    )
    in_use = {"reason": "OutputInUse", "message": "output folder pvc://d/out belongs to ..."}
    both = batch_status_patch(
        1,
        {},
        1,
        Observed(
            shards_job=finished("Failed", "PodFailurePolicy"),
            merge_job=finished("Failed", "BackoffLimitExceeded", "Job has reached the limit"),
            shard_failure=in_use,
        ),
        NOW,
    )
    condition = next(c for c in both["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "OutputInUse"
    assert condition["message"].startswith("output folder pvc://d/out belongs to")


def test_pods_that_cannot_start_name_the_reason() -> None:
    waiting = {
        "metadata": {"name": "eval-shards-0-x"},
        "status": {
            "containerStatuses": [
                {
                    "state": {
                        "waiting": {
                            "reason": "CreateContainerConfigError",
                            "message": 'secret "s3-keys" not found',
                        }
                    }
                }
            ]
        },
    }
    assert pod_trouble([waiting]) == (
        "CreateContainerConfigError",
        'pod eval-shards-0-x cannot start: secret "s3-keys" not found',
    )
    creating = {
        "metadata": {"name": "p"},
        "status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
    }
    assert pod_trouble([creating]) is None


def test_a_batch_asks_the_engine_for_its_shards_requests_or_what_is_left() -> None:
    spec = {"shards": 8, "parallelism": 2, "requestsPerShard": 32}
    assert batch_demand(spec, {}) == 64  # not counted yet: every running shard's share
    running = {"phase": "Running", "counts": {"total": 1000, "succeeded": 900, "failed": 80}}
    assert batch_demand(spec, running) == 20
    assert batch_demand({"shards": 3}, {"phase": "Pending"}) == 96  # the defaults
    assert batch_demand(spec, {"phase": "Merging"}) == 0
    assert batch_demand(spec, {"phase": "Succeeded"}) == 0


def test_a_batchs_lines_run_below_interactive_jobs_on_an_engine_that_schedules_so() -> None:
    def plan(model_spec: dict[str, Any] | None = None, **spec: Any) -> BatchPlan:
        env = env_of(shards_job(context(model_spec, **spec)))
        return BatchPlan.model_validate_json(env["GPTOSS_BATCH_PLAN"])

    assert (plan().priority, plan().priorityScheduling) == (-10, True)
    assert plan(priority=5).priority == 5
    fcfs = plan({"serving": {"schedulingPolicy": "fcfs"}})
    assert fcfs.priorityScheduling is False
