"""The operator never takes over an object it did not make. A model named so that one of
its children's names (``<model>-vllm``, ``<model>-sidecar``, ``<model>-weights``, …) is
already taken in the namespace waits, Stalled with reason ``NameInUse`` naming the object,
and a Warning Event says so; the other object keeps every field, gains no owner, and
outlives the model."""

from __future__ import annotations

import pytest
from lightkube import Client
from lightkube.models.core_v1 import (
    PersistentVolumeClaimSpec,
    ServicePort,
    ServiceSpec,
    VolumeResourceRequirements,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import PersistentVolumeClaim, Service, ServiceAccount

from gptoss_operator.api.resources import GptOssModelResource
from gptoss_operator.core import naming
from tests.cluster.model_helpers import (
    condition,
    create_model,
    status_of,
    wait_for_condition,
    wait_for_event,
    wait_for_phase,
)
from tests.conftest import OperatorProcess
from tests.support import wait_for

pytestmark = pytest.mark.cluster

CLOUD_IDENTITY = {"iam.gke.io/gcp-service-account": "team-b@example.iam.gserviceaccount.com"}


def stalled_on(kube: Client, namespace: str, model: str, kind: str, name: str) -> str:
    """The model's Stalled message, once it names ``kind namespace/name``."""
    status = wait_for_condition(kube, namespace, model, "Stalled", "NameInUse")
    message = condition(status, "Stalled")["message"]
    assert f"{kind} {namespace}/{name} exists and is not this model's" in message
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "NameInUse"
    event = wait_for_event(kube, namespace, model, "NameInUse")
    assert event["type"] == "Warning"
    assert event["message"] == message
    return message


def test_an_account_of_a_workers_name_is_not_used_and_the_model_waits_for_the_name(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    """Another team's ServiceAccount, with a cloud identity, named as the model's
    sidecar account: taking it over would run the model's pods as that identity."""
    del operator
    account = naming.sidecar_account_name("teamb")
    kube.create(
        ServiceAccount(
            metadata=ObjectMeta(name=account, namespace=namespace, annotations=CLOUD_IDENTITY)
        )
    )
    create_model(kube, namespace, "teamb")
    stalled_on(kube, namespace, "teamb", "ServiceAccount", account)

    kept = kube.get(ServiceAccount, account, namespace=namespace)
    assert kept.metadata.annotations == CLOUD_IDENTITY
    assert not kept.metadata.ownerReferences
    assert kept.metadata.labels is None, "the operator wrote no field of it"
    # Nothing was started in the model's name while it waits.
    selector = naming.download_selector("teamb")
    assert not list(kube.list(Job, namespace=namespace, labels=dict(selector)))
    assert status_of(kube, namespace, "teamb")["phase"] == "Pending"

    # The name freed, the model goes on by itself.
    kube.delete(ServiceAccount, account, namespace=namespace)
    wait_for_phase(kube, namespace, "teamb", "Ready", timeout=120)
    made = kube.get(ServiceAccount, account, namespace=namespace)
    assert [o.name for o in made.metadata.ownerReferences or []] == ["teamb"]
    assert not (made.metadata.annotations or {}).get(next(iter(CLOUD_IDENTITY)))


def test_a_service_of_the_models_name_keeps_its_selector_and_outlives_the_model(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    """Taking over ``<model>-vllm`` would point another team's Service at the model's
    pods; deleting the model would then delete that Service."""
    del operator
    name = naming.service_name("shop")
    kube.create(
        Service(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=ServiceSpec(selector={"app": "shop"}, ports=[ServicePort(port=80)]),
        )
    )
    create_model(kube, namespace, "shop")
    stalled_on(kube, namespace, "shop", "Service", name)

    kept = kube.get(Service, name, namespace=namespace)
    assert kept.spec.selector == {"app": "shop"}
    assert [p.port for p in kept.spec.ports] == [80]
    assert not kept.metadata.ownerReferences
    assert "endpoint" not in status_of(kube, namespace, "shop")

    kube.delete(GptOssModelResource, "shop", namespace=namespace)
    wait_for(
        lambda: not [m for m in kube.list(GptOssModelResource, namespace=namespace)],
        timeout=60,
        message="the model gone",
    )
    assert kube.get(Service, name, namespace=namespace).spec.selector == {"app": "shop"}


def test_a_claim_of_the_weights_name_is_never_written(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    """A claim named ``<model>-weights`` that the operator did not make (no model labels):
    the download Job would write into it. No Job is created."""
    del operator
    name = "data-weights"
    kube.create(
        PersistentVolumeClaim(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=PersistentVolumeClaimSpec(
                accessModes=["ReadWriteOnce"],
                resources=VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        )
    )
    create_model(kube, namespace, "data")
    stalled_on(kube, namespace, "data", "PersistentVolumeClaim", name)
    selector = naming.download_selector("data")
    assert not list(kube.list(Job, namespace=namespace, labels=dict(selector)))
    assert kube.get(PersistentVolumeClaim, name, namespace=namespace).metadata.labels is None
