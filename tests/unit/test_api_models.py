"""The pydantic models: defaults, the same rules the CRDs enforce, and the generated YAML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gptoss_operator.api import crdgen
from gptoss_operator.api.job import InferenceJobSpec
from gptoss_operator.api.model import GptOssModelSpec


def test_job_defaults_are_the_runners() -> None:
    spec = InferenceJobSpec.model_validate(
        {"modelRef": {"name": "m"}, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert (spec.maxTokens, spec.temperature, spec.reasoningLevel) == (256, 0.7, "medium")
    assert spec.backoffLimit == 3


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"messages": []}, "messages"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "last message",
        ),
        ({"maxTokens": 0}, "maxTokens"),
        ({"temperature": 3}, "temperature"),
        ({"topP": 0}, "topP"),
        ({"reasoningLevel": "extreme"}, "reasoningLevel"),
    ],
)
def test_job_rules_match_the_crd(change: dict[str, Any], field: str) -> None:
    raw = {"modelRef": {"name": "m"}, "messages": [{"role": "user", "content": "hi"}], **change}
    with pytest.raises(ValidationError) as error:
        InferenceJobSpec.model_validate(raw)
    assert field in str(error.value)


def test_model_defaults() -> None:
    spec = GptOssModelSpec()
    assert spec.source.repo == "openai/gpt-oss-120b"
    assert spec.source.excludePatterns == ["original/*", "metal/*"]
    assert spec.serving.effective_tensor_parallel_size() == 1
    assert spec.serving.startupTimeoutSeconds == 2700
    assert spec.sidecar.concurrency == 64


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"serving": {"gpusPerReplica": 2, "tensorParallelSize": 4}}, "tensorParallelSize"),
        ({"storage": {"existingClaim": "c", "size": "1Gi"}}, "existingClaim"),
        ({"source": {"repo": "no-owner"}}, "repo"),
        ({"storage": {"size": "big"}}, "size"),
    ],
)
def test_model_rules_match_the_crd(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        GptOssModelSpec.model_validate(raw)
    assert field in str(error.value)


def _walk(node: Any, path: str = "") -> list[tuple[str, str, Any]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((path, key, value))
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _walk(value, f"{path}[{index}]")
    return found


@pytest.mark.parametrize("name", sorted(crdgen.all_crds()))
def test_generated_schema_is_structural(name: str) -> None:
    crd = crdgen.all_crds()[name]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, key, value in _walk(schema):
        assert key not in ("$ref", "$defs", "anyOf", "allOf", "oneOf", "title"), path
        if key == "additionalProperties":
            assert value is not False, path
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert value is True, path
        if key == "default":
            assert value is not None, path
    # Every object either declares its properties or is explicitly opaque.
    for path, key, value in _walk(schema):
        if key == "type" and value == "object":
            owner = json.loads(json.dumps(_lookup(schema, path)))
            assert (
                "properties" in owner
                or "additionalProperties" in owner
                or owner.get("x-kubernetes-preserve-unknown-fields")
                or path == ".properties.metadata"
            ), path


def _lookup(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node: Any = schema
    for part in [p for p in path.replace("[", ".[").split(".") if p]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    return dict(node)


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    for crd in crdgen.all_crds().values():
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        conditions = status["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        item = conditions["items"]
        assert set(item["required"]) == {"type", "status", "reason", "lastTransitionTime"}
        assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True


def test_committed_crds_match_the_models() -> None:
    stale = crdgen.drift()
    assert not stale, f"regenerate with `make crds`: {stale}"


def test_drift_is_detected(tmp_path: Path) -> None:
    crdgen.write([tmp_path])
    assert crdgen.drift([tmp_path]) == []
    victim = next(tmp_path.iterdir())
    victim.write_text(victim.read_text().replace("maxLength: 253", "maxLength: 254", 1))
    assert crdgen.drift([tmp_path]) == [str(victim)]


def test_readme_api_reference_matches_the_models() -> None:
    from gptoss_operator.api import docs

    text = docs.README.read_text()
    assert docs.updated_readme(text) == text, "run `make docs`"
    assert "| `spec.messages[].role` |" in text
    assert "| `status.download.percent` |" in text


def test_readers_tolerate_fields_a_newer_crd_adds() -> None:
    # After a CRD upgrade the apiserver defaults fields this version does not know; the
    # operator and the sidecars still running the old code must keep working.
    model = GptOssModelSpec.model_validate(
        {
            "serving": {"replicas": 2, "speculativeDecoding": {"draftModel": "x"}},
            "futureSection": {"enabled": True},
        }
    )
    assert model.serving.replicas == 2
    job = InferenceJobSpec.model_validate(
        {
            "modelRef": {"name": "m", "futureRef": "x"},
            "messages": [{"role": "user", "content": "hi", "audio": {"id": "a1"}}],
            "prediction": {"type": "content"},
        }
    )
    assert job.messages[0].content == "hi"
