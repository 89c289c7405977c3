"""The generated CRDs on a real apiserver: established, defaulting, refusing bad input."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, Client, codecs
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.types import PatchType

from gptoss_operator.api.batch import InferenceBatchSpec
from gptoss_operator.api.job import InferenceJobSpec
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.api.resources import (
    GptOssModelResource,
    InferenceBatchResource,
    InferenceJobResource,
)

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _examples() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def _model(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "GptOssModel",
        "metadata": {"name": "m"},
        "spec": spec,
    }


def _job(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "modelRef": {"name": "m"},
        "messages": [{"role": "user", "content": "hi"}],
    }
    spec.update(overrides)
    return {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "InferenceJob",
        "metadata": {"name": "j"},
        "spec": spec,
    }


def _without(document: dict[str, Any], path: str) -> dict[str, Any]:
    result = copy.deepcopy(document)
    *parents, leaf = path.split(".")
    node = result
    for key in parents:
        node = node[key]
    del node[leaf]
    return result


def _named(document: dict[str, Any], name: str) -> dict[str, Any]:
    return {**document, "metadata": {"name": name}}


# (case id, object, substrings the apiserver's message must contain)
INVALID: list[tuple[str, dict[str, Any], list[str]]] = [
    ("empty-messages", _job(messages=[]), ["spec.messages"]),
    ("unknown-role", _job(messages=[{"role": "robot", "content": "x"}]), ["spec.messages[0].role"]),
    (
        "empty-content",
        _job(messages=[{"role": "user", "content": ""}]),
        ["spec.messages[0].content"],
    ),
    (
        "last-not-user",
        _job(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
        ["spec.messages", "last message must have role 'user' or 'tool'"],
    ),
    (
        "tool-message-without-call-id",
        _job(messages=[{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]),
        ["spec.messages[1].toolCallId", "names the call it answers"],
    ),
    (
        "call-id-on-a-user-message",
        _job(messages=[{"role": "user", "content": "a", "toolCallId": "c1"}]),
        ["spec.messages[0].toolCallId"],
    ),
    (
        "tool-calls-on-a-user-message",
        _job(
            messages=[
                {
                    "role": "user",
                    "content": "a",
                    "toolCalls": [{"id": "c", "name": "f", "arguments": "{}"}],
                }
            ]
        ),
        ["spec.messages[0].toolCalls", "only an assistant message"],
    ),
    (
        "assistant-without-content-or-calls",
        _job(messages=[{"role": "assistant"}, {"role": "user", "content": "a"}]),
        ["spec.messages[0].content"],
    ),
    (
        "tool-choice-names-an-unknown-tool",
        _job(tools=[{"name": "get_time"}], toolChoice="get_weather"),
        ["spec.toolChoice", "name of a function in tools"],
    ),
    (
        "tool-choice-required-without-tools",
        _job(toolChoice="required"),
        ["spec.toolChoice"],
    ),
    ("tool-named-like-a-choice", _job(tools=[{"name": "auto"}]), ["spec.tools[0].name"]),
    ("tool-name-with-a-space", _job(tools=[{"name": "get time"}]), ["spec.tools[0].name"]),
    ("tool-twice", _job(tools=[{"name": "f"}, {"name": "f"}]), ["spec.tools[1]", "Duplicate"]),
    (
        "schema-format-without-a-schema",
        _job(responseFormat={"type": "json_schema"}),
        ["spec.responseFormat.jsonSchema"],
    ),
    (
        "schema-that-is-not-an-object",
        _job(responseFormat={"type": "json_schema", "jsonSchema": {"name": "r", "schema": "x"}}),
        ["spec.responseFormat.jsonSchema.schema"],
    ),
    ("analysis-visibility", _job(analysis="hide"), ["spec.analysis"]),
    ("max-tokens-zero", _job(maxTokens=0), ["spec.maxTokens"]),
    ("max-tokens-too-large", _job(maxTokens=131073), ["spec.maxTokens"]),
    ("temperature-negative", _job(temperature=-1), ["spec.temperature"]),
    ("temperature-too-high", _job(temperature=3), ["spec.temperature"]),
    ("top-p-zero", _job(topP=0), ["spec.topP"]),
    ("top-p-above-one", _job(topP=1.5), ["spec.topP"]),
    ("reasoning-extreme", _job(reasoningLevel="extreme"), ["spec.reasoningLevel"]),
    ("missing-model-ref", _without(_job(), "spec.modelRef"), ["spec.modelRef"]),
    ("empty-model-ref-name", _job(modelRef={"name": ""}), ["spec.modelRef.name"]),
    ("negative-backoff", _job(backoffLimit=-1), ["spec.backoffLimit"]),
    ("zero-deadline", _job(activeDeadlineSeconds=0), ["spec.activeDeadlineSeconds"]),
    ("negative-ttl", _job(ttlSecondsAfterFinished=-5), ["spec.ttlSecondsAfterFinished"]),
    ("job-missing-spec", _without(_job(), "spec"), ["spec"]),
    ("job-name-too-long", _named(_job(), "j" * 64), ["metadata.name", "at most 63"]),
    ("repo-without-owner", _model(source={"repo": "gpt-oss-120b"}), ["spec.source.repo"]),
    ("repo-with-spaces", _model(source={"repo": "openai/gpt oss"}), ["spec.source.repo"]),
    (
        "revision-with-dotdot",
        _model(source={"revision": "main/../x"}),
        ["spec.source.revision", "no '..'"],
    ),
    ("revision-with-space", _model(source={"revision": "my branch"}), ["spec.source.revision"]),
    ("endpoint-not-a-url", _model(source={"endpoint": "mirror.local"}), ["spec.source.endpoint"]),
    (
        "token-ref-without-name",
        _model(source={"tokenSecretRef": {"key": "token"}}),
        ["spec.source.tokenSecretRef.name"],
    ),
    ("replicas-negative", _model(serving={"replicas": -1}), ["spec.serving.replicas"]),
    ("gpus-zero", _model(serving={"gpusPerReplica": 0}), ["spec.serving.gpusPerReplica"]),
    (
        "tp-does-not-fit",
        _model(serving={"gpusPerReplica": 2, "tensorParallelSize": 4}),
        ["spec.serving.tensorParallelSize", "must divide gpusPerReplica"],
    ),
    (
        "tp-does-not-divide",
        _model(serving={"gpusPerReplica": 6, "tensorParallelSize": 4}),
        ["spec.serving.tensorParallelSize"],
    ),
    (
        "gpu-memory-zero",
        _model(serving={"gpuMemoryUtilization": 0}),
        ["spec.serving.gpuMemoryUtilization"],
    ),
    (
        "gpu-memory-above-one",
        _model(serving={"gpuMemoryUtilization": 1.2}),
        ["spec.serving.gpuMemoryUtilization"],
    ),
    (
        "startup-timeout-too-short",
        _model(serving={"startupTimeoutSeconds": 5}),
        ["spec.serving.startupTimeoutSeconds"],
    ),
    ("bad-storage-size", _model(storage={"size": "lots"}), ["spec.storage.size"]),
    (
        "bad-access-mode",
        _model(storage={"accessModes": ["ReadWriteSometimes"]}),
        ["spec.storage.accessModes[0]"],
    ),
    (
        "bad-deletion-policy",
        _model(storage={"deletionPolicy": "Shred"}),
        ["spec.storage.deletionPolicy"],
    ),
    (
        "existing-claim-with-size",
        _model(storage={"existingClaim": "w", "size": "10Gi"}),
        ["spec.storage.existingClaim", "cannot be combined"],
    ),
    ("concurrency-zero", _model(sidecar={"concurrency": 0}), ["spec.sidecar.concurrency"]),
    (
        "namespace-in-two-tenants",
        _model(
            access={
                "tenants": [
                    {"name": "x", "namespaces": ["team-a"]},
                    {"name": "y", "namespaces": ["team-b", "team-a"]},
                ]
            }
        ),
        ["spec.access.tenants", "one tenant only"],
    ),
    (
        "tenant-weight-zero",
        _model(access={"tenants": [{"name": "x", "namespaces": ["a"], "weight": 0}]}),
        ["spec.access.tenants[0].weight"],
    ),
    (
        "tenant-without-namespaces",
        _model(access={"tenants": [{"name": "x", "namespaces": []}]}),
        ["spec.access.tenants[0].namespaces"],
    ),
    ("model-name-too-long", _named(_model(), "m" * 51), ["metadata.name", "at most 50 characters"]),
    ("model-name-not-dns-1035", _named(_model(), "1model"), ["metadata.name", "DNS-1035"]),
]


@pytest.fixture(scope="module")
def api(kube: Client, crds: list[str]) -> Client:
    del crds
    return kube


def test_crds_are_established_and_structural(api: Client) -> None:
    for name in ("gptossmodels.gptoss.ai", "inferencejobs.gptoss.ai"):
        crd = api.get(CustomResourceDefinition, name)
        conditions = {c.type: c for c in crd.status.conditions}
        assert conditions["Established"].status == "True"
        assert "NonStructuralSchema" not in conditions
        assert crd.status.acceptedNames.categories == ["gptoss"]


def test_examples_are_accepted_and_defaulted(api: Client, namespace: str) -> None:
    documents = _examples()
    kinds = [doc["kind"] for doc in documents]
    assert (
        kinds.count("GptOssModel"),
        kinds.count("InferenceJob"),
        kinds.count("InferenceBatch"),
    ) == (4, 3, 1)
    for document in documents:
        if document["kind"] not in ("GptOssModel", "InferenceJob", "InferenceBatch"):
            continue  # the Secrets some examples come with
        stored = api.create(codecs.from_dict(document), namespace=namespace, dry_run=True)
        spec = stored.to_dict()["spec"]
        if document["kind"] == "InferenceBatch":
            batch = InferenceBatchSpec.model_validate(spec)
            assert (spec["maxLineAttempts"], spec["backoffLimitPerIndex"]) == (3, 3)
            assert batch.input.s3 is not None
            assert batch.input.s3.region == "us-east-1"
        elif document["kind"] == "InferenceJob":
            parsed = InferenceJobSpec.model_validate(spec)
            assert spec["backoffLimit"] == 3
            assert {"temperature", "maxTokens", "reasoningLevel"} <= set(spec)
            assert parsed.messages[-1].role == "user"
        else:
            parsed_model = GptOssModelSpec.model_validate(spec)
            assert spec["download"]["stallTimeoutSeconds"] == 300
            assert spec["sidecar"]["concurrency"] in (64, 128)
            assert parsed_model.serving.gpusPerReplica >= 1


def _batch(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "modelRef": {"name": "m"},
        "input": {"volume": {"claimName": "data", "path": "in.jsonl"}},
        "output": {"volume": {"claimName": "data", "path": "out"}},
    }
    body.update(spec)
    return {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "InferenceBatch",
        "metadata": {"name": "b"},
        "spec": body,
    }


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        (
            {"input": {"volume": {"claimName": "d", "path": "a"}, "configMap": {"name": "c"}}},
            "spec.input",
            "set exactly one of volume, s3 and configMap",
        ),
        ({"output": {}}, "spec.output", "set exactly one of volume and s3"),
        (
            {"input": {"volume": {"claimName": "d", "path": "a/../../etc"}}},
            "spec.input.volume.path",
            "path must stay inside the volume",
        ),
        ({"shards": 4, "parallelism": 5}, "spec.parallelism", "must not exceed shards"),
        ({"shards": 0}, "spec.shards", "should be greater than or equal to 1"),
        ({"defaults": {"maxTokens": 0}}, "spec.defaults.maxTokens", "greater than or equal"),
        (
            {"output": {"s3": {"bucket": "bucket", "key": "k", "endpoint": "ftp://x"}}},
            "spec.output.s3.endpoint",
            "should match",
        ),
        (
            {"output": {"s3": {"bucket": "bucket", "key": "k"}}},
            "spec.output.s3.credentials",
            "set credentialsSecretRef, or credentials: ambient",
        ),
        (
            {
                "input": {
                    "s3": {
                        "bucket": "bucket",
                        "key": "k",
                        "credentials": "ambient",
                        "credentialsSecretRef": {"name": "keys"},
                    }
                }
            },
            "spec.input.s3.credentials",
            "(not both)",
        ),
    ],
)
def test_a_bad_batch_is_refused_naming_the_field(
    api: Client, namespace: str, spec: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(ApiError) as refused:
        api.create(codecs.from_dict(_batch(**spec)), namespace=namespace, dry_run=True)
    message = refused.value.status.message or ""
    assert field in message, message
    assert says in message, message


def test_a_batch_spec_is_immutable(api: Client, namespace: str) -> None:
    created = api.create(codecs.from_dict(_batch()), namespace=namespace)
    with pytest.raises(ApiError) as refused:
        api.patch(
            InferenceBatchResource,
            created.metadata.name,
            {"spec": {"shards": 9}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    assert "spec is immutable" in (refused.value.status.message or "")


def test_autoscaling_is_checked_and_defaulted_at_admission(api: Client, namespace: str) -> None:
    with pytest.raises(ApiError) as refused:
        api.create(
            GptOssModelResource.from_dict(
                _model(serving={"autoscaling": {"minReplicas": 3, "maxReplicas": 2}})
            ),
            namespace=namespace,
            dry_run=True,
        )
    assert refused.value.status.code == 422
    message = refused.value.status.message or ""
    assert "spec.serving.autoscaling.minReplicas" in message
    assert "minReplicas must not exceed maxReplicas" in message
    with pytest.raises(ApiError) as missing:
        api.create(
            GptOssModelResource.from_dict(_model(serving={"autoscaling": {"minReplicas": 0}})),
            namespace=namespace,
            dry_run=True,
        )
    assert "spec.serving.autoscaling.maxReplicas: Required value" in (
        missing.value.status.message or ""
    )
    stored = api.create(
        GptOssModelResource.from_dict(_model(serving={"autoscaling": {"maxReplicas": 2}})),
        namespace=namespace,
        dry_run=True,
    ).to_dict()
    assert stored["spec"]["serving"]["autoscaling"] == {
        "minReplicas": 1,
        "maxReplicas": 2,
        "scaleUpStabilizationSeconds": 0,
        "scaleDownStabilizationSeconds": 300,
        "scaleToZeroAfterSeconds": 900,
    }


def test_an_empty_model_gets_every_default(api: Client, namespace: str) -> None:
    stored = api.create(
        GptOssModelResource.from_dict(_model()), namespace=namespace, dry_run=True
    ).to_dict()
    assert GptOssModelSpec.model_validate(stored["spec"]) == GptOssModelSpec()
    assert stored["spec"]["source"] == {
        "repo": "openai/gpt-oss-120b",
        "revision": "main",
        "excludePatterns": ["original/*", "metal/*"],
    }


def test_a_tool_loop_job_is_admitted_as_written(api: Client, namespace: str) -> None:
    """#26: a job carrying the model's tool call and the tool's result, with a schema."""
    weather = {"type": "object", "properties": {"city": {"type": "string"}}}
    spec = {
        "tools": [{"name": "get_weather", "description": "Weather now.", "parameters": weather}],
        "toolChoice": "auto",
        "responseFormat": {
            "type": "json_schema",
            "jsonSchema": {"name": "report", "schema": {"type": "object"}, "strict": True},
        },
        "analysis": "drop",
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "analysis": "Need it.",
                "toolCalls": [{"id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'}],
            },
            {"role": "tool", "toolCallId": "c1", "name": "get_weather", "content": ""},
        ],
    }
    stored = api.create(
        InferenceJobResource.from_dict(_job(**spec)), namespace=namespace, dry_run=True
    ).to_dict()["spec"]
    assert stored["tools"][0]["parameters"] == weather, "the schema is kept whole"
    assert stored["messages"] == spec["messages"]
    assert stored["responseFormat"]["jsonSchema"]["schema"] == {"type": "object"}
    assert InferenceJobSpec.model_validate(stored).messages[1].toolCalls is not None


def test_job_defaults_match_the_runner(api: Client, namespace: str) -> None:
    stored = api.create(
        InferenceJobResource.from_dict(_job()), namespace=namespace, dry_run=True
    ).to_dict()
    spec = stored["spec"]
    assert (spec["maxTokens"], spec["temperature"], spec["reasoningLevel"]) == (256, 0.7, "medium")


@pytest.mark.parametrize(("case", "document", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_objects_are_refused_naming_the_field(
    api: Client, namespace: str, case: str, document: dict[str, Any], expected: list[str]
) -> None:
    resource = GptOssModelResource if document["kind"] == "GptOssModel" else InferenceJobResource
    with pytest.raises(ApiError) as refused:
        api.create(resource.from_dict(document), namespace=namespace, dry_run=True)
    assert refused.value.status.code == 422, refused.value.status.message
    message = refused.value.status.message
    for fragment in expected:
        assert fragment in message, f"{case}: {fragment!r} not in {message!r}"


def test_inference_job_spec_is_immutable(api: Client, namespace: str) -> None:
    created = api.create(InferenceJobResource.from_dict(_job()), namespace=namespace)
    changed: Callable[[dict[str, Any]], None]
    for changed in (
        lambda spec: spec.update(maxTokens=999),
        lambda spec: spec["messages"].append({"role": "user", "content": "more"}),
        lambda spec: spec.update(reasoningLevel="high"),
    ):
        document = copy.deepcopy(created.to_dict())
        changed(document["spec"])
        with pytest.raises(ApiError) as refused:
            api.replace(InferenceJobResource.from_dict(document), namespace=namespace)
        assert refused.value.status.code == 422
        assert "spec is immutable" in refused.value.status.message
    # Metadata stays editable.
    document = copy.deepcopy(created.to_dict())
    document["metadata"].setdefault("labels", {})["team"] = "a"
    api.replace(InferenceJobResource.from_dict(document), namespace=namespace)


def test_scale_subresource_sets_serving_replicas(api: Client, namespace: str) -> None:
    api.create(GptOssModelResource.from_dict(_model()), namespace=namespace)
    scale = api.get(GptOssModelResource.Scale, "m", namespace=namespace)
    assert scale.spec.replicas == 1
    scale.spec.replicas = 3
    api.replace(scale, "m", namespace=namespace)
    stored = api.get(GptOssModelResource, "m", namespace=namespace).to_dict()
    assert stored["spec"]["serving"]["replicas"] == 3
