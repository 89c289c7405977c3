"""A CRD upgrade that adds defaulted fields while the running operator and sidecars
predate them.

The installed CRDs gain a defaulted field in the spec and the status of both kinds, as a
newer release's CRDs would. The running components (today's code, which has never heard
of the fields) must keep working: the operator brings a new model to Ready, a sidecar
runs a new job, and nothing is refused or failed because of the unknown fields.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, codecs

from gptoss_operator.api.crdgen import all_crds
from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.job_helpers import (
    SidecarProcess,
    create_job,
    job_manifest,
    job_status,
    wait_finished,
)
from tests.cluster.model_helpers import create_model, model_manifest, wait_for_phase
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.faults]


def _newer(crd: dict[str, Any]) -> dict[str, Any]:
    upgraded = copy.deepcopy(crd)
    schema = upgraded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    schema["spec"]["properties"]["futureKnob"] = {"type": "string", "default": "on"}
    schema["status"]["properties"]["futureReport"] = {"type": "integer", "default": 7}
    return upgraded


def _knob_served(kube: Client) -> bool | None:
    """Does the apiserver default ``futureKnob`` in a new object of each kind now (a
    dry-run create of each: the positive sign that its handlers serve a schema)?"""
    documents = [
        (GptOssModelResource, model_manifest("probe", source={"repo": "openai/gpt-oss-20b"})),
        (InferenceJobResource, job_manifest("probe", "probe", "hello")),
    ]
    served = {
        "futureKnob"
        in kube.create(kind.from_dict(document), namespace="default", dry_run=True).to_dict()[
            "spec"
        ]
        for kind, document in documents
    }
    return served.pop() if len(served) == 1 else None


@pytest.fixture
def upgraded_crds(kube: Client, crds: list[str]) -> Iterator[None]:
    del crds
    originals = list(all_crds().values())
    for crd in originals:
        kube.apply(codecs.from_dict(_newer(crd)), force=True)
    wait_for(lambda: _knob_served(kube) is True, timeout=30, message="the new schema served")
    try:
        yield
    finally:
        for crd in originals:
            kube.apply(codecs.from_dict(crd), force=True)
        wait_for(lambda: _knob_served(kube) is False, timeout=30, message="the schema back")


def test_old_components_keep_working_after_a_crd_upgrade(
    kube: Client,
    namespace: str,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    upgraded_crds: None,
    tmp_path: Path,
) -> None:
    del operator, upgraded_crds
    create_model(kube, namespace, "later", source={"repo": "openai/gpt-oss-20b"})
    status = wait_for_phase(kube, namespace, "later", "Ready")
    with StandinEngine(model="later") as engine:
        sidecar = SidecarProcess(
            cluster.kubeconfig, namespace, "later", "old-sidecar", engine.url, tmp_path
        ).start()
        try:
            create_job(kube, namespace, "after-upgrade", "later")
            done = wait_finished(kube, namespace, "after-upgrade")
        finally:
            sidecar.stop()
    assert done["phase"] == "Succeeded", done.get("message")
    assert done["response"] == "Stand-in answer to: What is recursion?"
    # The new fields were really there, defaulted by the apiserver.
    model = kube.get(GptOssModelResource, "later", namespace=namespace).to_dict()
    job = kube.get(InferenceJobResource, "after-upgrade", namespace=namespace).to_dict()
    assert model["spec"]["futureKnob"] == "on"
    assert job["spec"]["futureKnob"] == "on"
    assert status["phase"] == "Ready"
    assert job_status(kube, namespace, "after-upgrade")["phase"] == "Succeeded"
