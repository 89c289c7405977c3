"""Which existing objects the operator treats as its own child (never adopting others)."""

from __future__ import annotations

from typing import Any

import pytest

from gptoss_operator.core import naming
from gptoss_operator.core.kube import NotOurs, is_ours

OWNER = {
    "apiVersion": "gptoss.ai/v1alpha1",
    "kind": "GptOssModel",
    "name": "m",
    "uid": "u1",
    "controller": True,
}


def manifest(kind: str = "Service", owned: bool = True) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "m-vllm",
        "namespace": "ns",
        "labels": naming.labels("m", "server"),
    }
    if owned:
        metadata["ownerReferences"] = [OWNER]
    return {"apiVersion": "v1", "kind": kind, "metadata": metadata}


def existing(owners: list[dict[str, Any]] | None = None, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": "m-vllm", "ownerReferences": owners, "labels": labels}}


def test_an_owned_child_is_ours_only_with_the_models_uid() -> None:
    assert is_ours(manifest(), existing([OWNER]))
    other = {**OWNER, "uid": "other", "controller": False}
    assert is_ours(manifest(), existing([other, OWNER]))
    # The model's uid, but not as the controller: someone else controls it.
    assert not is_ours(manifest(), existing([{**OWNER, "controller": False}]))
    assert not is_ours(manifest(), existing())
    # Same name and kind of owner, another incarnation (a deleted model's child).
    assert not is_ours(manifest(), existing([{**OWNER, "uid": "u0"}]))
    # Labels alone do not make an owned child ours: anyone may write labels.
    assert not is_ours(manifest(), existing(**naming.labels("m", "server")))


def test_a_kept_claim_is_ours_by_the_models_labels() -> None:
    claim = manifest("PersistentVolumeClaim", owned=False)
    assert is_ours(claim, existing(**naming.labels("m", "weights")))
    assert not is_ours(claim, existing())
    assert not is_ours(claim, existing(**naming.labels("other", "weights")))
    unmanaged = {naming.MODEL_LABEL: "m"}
    assert not is_ours(claim, existing(**unmanaged))


@pytest.mark.parametrize(
    ("owners", "said"),
    [(None, "made by someone else"), ([{"kind": "Deployment", "name": "shop"}], "Deployment shop")],
)
def test_the_refusal_names_the_object_and_its_owner(
    owners: list[dict[str, Any]] | None, said: str
) -> None:
    message = str(NotOurs(manifest(), existing(owners)))
    assert message.startswith("Service ns/m-vllm exists and is not this model's")
    assert said in message
    assert "rename the model, or remove that object" in message
