"""Deterministic names and labels of the objects the operator creates.

A restarted operator derives the same names again, so it never creates anything twice.
"""

from __future__ import annotations

import hashlib
import json

from gptoss_operator.api.model import GptOssModelSpec

MANAGED_BY = "gptoss-operator"
MODEL_LABEL = "gptoss.ai/model"
# The model's namespace, on what a model's workers make in a tenant's namespace.
MODEL_NAMESPACE_LABEL = "gptoss.ai/model-namespace"
COMPONENT_LABEL = "app.kubernetes.io/component"
# On the serving pods: the uid of the model whose Deployment made them.
MODEL_UID_LABEL = "gptoss.ai/model-uid"
# On a Job's pods, set by the Job controller.
JOB_CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# The selector of everything the operator made.
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY}
SOURCE_HASH_ANNOTATION = "gptoss.ai/source-hash"
COMPONENT_DOWNLOAD = "download"
COMPONENT_SERVER = "server"
COMPONENT_BATCH_SHARDS = "batch-shards"
COMPONENT_BATCH_MERGE = "batch-merge"
COMPONENT_TENANT_BATCH = "tenant-batch"  # a batch identity in a tenant namespace
BATCH_LABEL = "gptoss.ai/batch"

# Paths inside the weights volume.
VOLUME_MOUNT = "/data"
SERVED_DIR = f"{VOLUME_MOUNT}/served"
VOCAB_DIR = f"{VOLUME_MOUNT}/tiktoken"
ENGINE_PORT = 8000
SIDECAR_HEALTH_PORT = 8081
GATEWAY_PORT = 8001  # the sidecars' gateway: batch shards reach the engine through it
GATEWAY_KEY_SECRET_KEY = "key"  # in a batch's gateway key Secret


def source_hash(spec: GptOssModelSpec) -> str:
    """A short digest of what is downloaded: a new value means a new download."""
    source = spec.source
    identity = {
        "repo": source.repo,
        "revision": source.revision,
        "endpoint": source.endpoint or "",
        "exclude": sorted(source.excludePatterns),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


def claim_name(model: str, spec: GptOssModelSpec) -> str:
    return spec.storage.existingClaim or f"{model}-weights"


def download_job_name(model: str, digest: str, attempt: int = 0) -> str:
    """The download Job of a source; attempts after a failure get a suffix."""
    return f"{model}-dl-{digest}" + (f"-r{attempt}" if attempt else "")


def served_path(digest: str) -> str:
    """The folder vLLM serves: a link the downloader points at the downloaded snapshot."""
    return f"{SERVED_DIR}/{digest}"


def deployment_name(model: str) -> str:
    return f"{model}-vllm"


def service_name(model: str) -> str:
    return f"{model}-vllm"


def download_account_name(model: str) -> str:
    """ServiceAccount (and RoleBinding) of the model's download Jobs."""
    return f"{model}-download"


def sidecar_account_name(model: str) -> str:
    """ServiceAccount (and RoleBinding) of the model's vLLM pods, used by the sidecar."""
    return f"{model}-sidecar"


def batch_account_name(model: str) -> str:
    """ServiceAccount (and RoleBinding) of the workers of the model's InferenceBatches."""
    return f"{model}-batch"


def tenant_batch_account_name(model_namespace: str, model: str) -> str:
    """ServiceAccount (and RoleBinding) in another namespace of the shards of its
    InferenceBatches for the model."""
    return f"{model_namespace}.{model}-batch"


def batch_key_secret_name(batch: str, key_sha256: str) -> str:
    """The Secret holding a batch's gateway key (named after the key: a key the operator
    lost before it recorded its hash is never mistaken for the recorded one)."""
    return f"{batch}-gateway-{key_sha256[:10]}"


def gateway_url(model: str, namespace: str) -> str:
    return f"http://{service_name(model)}.{namespace}.svc:{GATEWAY_PORT}"


def api_key_secret_name(model: str) -> str:
    """The Secret the operator creates for a model's API key (unless the model names one)."""
    return f"{model}-api-key"


API_KEY_SECRET_KEY = "token"


def endpoint_url(model: str, namespace: str) -> str:
    return f"http://{service_name(model)}.{namespace}.svc:{ENGINE_PORT}/v1"


def labels(model: str, component: str | None = None) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": "gptoss",
        "app.kubernetes.io/instance": model,
        MANAGED_BY_LABEL: MANAGED_BY,
        MODEL_LABEL: model,
    }
    if component:
        result["app.kubernetes.io/component"] = component
    return result


def batch_labels(model: str, batch: str, component: str) -> dict[str, str]:
    return {**labels(model, component), BATCH_LABEL: batch}


def batch_shards_job_name(batch: str) -> str:
    return f"{batch}-shards"


def batch_merge_job_name(batch: str) -> str:
    return f"{batch}-merge"


def server_selector(model: str) -> dict[str, str]:
    """The Deployment's and the Service's selector (immutable on a Deployment)."""
    return {MODEL_LABEL: model, "app.kubernetes.io/component": COMPONENT_SERVER}


def server_pods_selector(model: str, uid: str) -> dict[str, str]:
    """The serving pods of the model with ``uid``, not of an earlier model of its name."""
    return {**server_selector(model), MODEL_UID_LABEL: uid}


def job_pods_selector(job_uid: str) -> dict[str, str]:
    """The pods of the Job with ``job_uid`` (the Job controller labels them)."""
    return {JOB_CONTROLLER_UID_LABEL: job_uid}


def download_selector(model: str) -> dict[str, str]:
    return {MODEL_LABEL: model, "app.kubernetes.io/component": COMPONENT_DOWNLOAD}


def selector_string(selector: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


# A download Job's records: its attempt, the model generation it was made for, and the
# annotation with which a user asks for another attempt.
RETRY_ANNOTATION = "gptoss.ai/retry-download"
GENERATION_ANNOTATION = "gptoss.ai/model-generation"
ATTEMPT_LABEL = "gptoss.ai/download-attempt"
