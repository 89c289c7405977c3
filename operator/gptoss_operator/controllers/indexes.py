"""In-memory indexes kopf keeps from its watches: no API reads to look things up.

The indexers are coroutines: kopf runs plain functions in a thread pool, a hop per watch
event that costs more than the indexing itself."""

from __future__ import annotations

from typing import Any

import kopf

from gptoss_operator.api import job as job_api
from gptoss_operator.api import model as model_api
from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.controllers.autoscale.engine_load import ready_pod
from gptoss_operator.controllers.facts import JobFacts, ModelFacts
from gptoss_operator.controllers.model import watched
from gptoss_operator.core import naming

SERVER_PODS = {**naming.MANAGED, "app.kubernetes.io/component": naming.COMPONENT_SERVER}


@kopf.index(GROUP, VERSION, job_api.PLURAL)
async def inference_jobs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], JobFacts]:
    """(namespace, name) of a model -> facts of each InferenceJob for it (in any
    namespace)."""
    facts = JobFacts.from_body(body)
    return {facts.model_key: facts}


@kopf.index(GROUP, VERSION, model_api.PLURAL)
async def model_phases(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], ModelFacts]:
    """(namespace, name) -> phase, replicas and autoscaling policy of each GptOssModel."""
    return {(namespace or "", name): ModelFacts.from_body(body)}


def _is_ready(body: kopf.Body, **_: Any) -> bool:
    return ready_pod(body) is not None


@kopf.index("", "v1", "pods", labels=SERVER_PODS, when=_is_ready)
async def server_pods(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], str]:
    """(namespace, model) -> IP of each ready vLLM pod (a pod that stops being ready
    leaves the index: it no longer matches the filter)."""
    return {(namespace or "", labels.get(naming.MODEL_LABEL, "")): ready_pod(body) or ""}


async def tenant_binding(
    namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], str]:
    """(model namespace, model) -> the namespace of a RoleBinding the operator made there
    for the model (its labels name the model)."""
    model = (labels[naming.MODEL_NAMESPACE_LABEL], labels.get(naming.MODEL_LABEL, ""))
    return {model: namespace or ""}


# The model's sidecar bound in each tenant's namespace (no component label), and its
# batches' shards' identity there.
for index_id, component in (
    ("tenant_bindings", kopf.ABSENT),
    ("tenant_batch_identities", naming.COMPONENT_TENANT_BATCH),
):
    kopf.index(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        labels={
            naming.MANAGED_BY_LABEL: naming.MANAGED_BY,
            naming.MODEL_NAMESPACE_LABEL: kopf.PRESENT,
            naming.COMPONENT_LABEL: component,
        },
        id=index_id,
    )(tenant_binding)


# The models and their children, as the model's reconcile reads them (see
# gptoss_operator.controllers.model.watched): one index per kind, named as the model's
# handlers ask for them.


@kopf.index(GROUP, VERSION, model_api.PLURAL)
async def model_bodies(body: kopf.Body, **_: Any) -> dict[watched.Key, dict[str, Any]]:
    return watched.model_entry(body)


CHILD_KINDS = {
    "model_claims": ("", "v1", "persistentvolumeclaims"),
    "model_jobs": ("batch", "v1", "jobs"),
    "model_pods": ("", "v1", "pods"),
    "model_deployments": ("apps", "v1", "deployments"),
}


async def model_child(body: kopf.Body, **_: Any) -> dict[watched.Key, dict[str, Any]] | None:
    return watched.child_entry(body)


for index_id, (group, version, plural) in CHILD_KINDS.items():
    kopf.index(group, version, plural, labels=naming.MANAGED, id=index_id)(model_child)
