"""The Jobs of an InferenceBatch: an Indexed Job with one index per shard, then a
one-pod Job that merges the shards' parts into the output files.

Both run ``gptoss-batch`` from the product image, in the batch's namespace, with the plan
(``batch.plan``) in their environment: as the model's batch identity (``<model>-batch``)
when the model is in the same namespace, else as the identity the operator makes there
for the model (``<model namespace>.<model>-batch``). The shards reach the engine through
the model's gateway (its sidecars) with the batch's own key, never the engine's. A
shard's pod that crashes is retried for that index alone (``backoffLimitPerIndex``);
evictions and preemptions are not counted; exit code 2 (the input cannot be read or the
output cannot be written) fails the whole Job at once, since no retry can help.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from gptoss_operator.api.batch import InferenceBatchSpec, S3Location, VolumePath
from gptoss_operator.api.batch_plan import EXIT_CANNOT_RUN, BatchPlan, Place
from gptoss_operator.api.common import API_VERSION
from gptoss_operator.builders import (
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    TOKEN_MOUNT,
    TOKEN_VOLUME,
    ModelContext,
    token_volume,
)
from gptoss_operator.builders.engine_config import batch_requests_per_shard
from gptoss_operator.core import naming

VOLUMES_ROOT = "/batch/volumes"
CONFIGMAP_ROOT = "/batch/configmap"
CONTAINER = "worker"
BATCH_MODEL_LABEL = "gptoss.ai/batch-model"  # on worker pods: the model they may call
WORKER_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}
# Exit code 2 (no retry can help) fails the Job at once; evictions and preemptions are
# the platform's doing and cost no retry.
FAILURE_POLICY: dict[str, Any] = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": CONTAINER,
                "operator": "In",
                "values": [EXIT_CANNOT_RUN],
            },
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
}
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class BatchContext:
    name: str
    namespace: str
    uid: str
    spec: InferenceBatchSpec
    model: ModelContext
    key_secret: str = ""  # the Secret holding the batch's gateway key (shards only)

    @property
    def account(self) -> str:
        """The ServiceAccount the batch's pods run as."""
        if self.model.namespace == self.namespace:
            return naming.batch_account_name(self.model.name)
        return naming.tenant_batch_account_name(self.model.namespace, self.model.name)

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "InferenceBatch",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self, component: str) -> dict[str, str]:
        return {
            **naming.batch_labels(self.model.name, self.name, component),
            naming.MODEL_NAMESPACE_LABEL: self.model.namespace,
        }


def gateway_key_secret(ctx: BatchContext, key: str, key_sha256: str) -> dict[str, Any]:
    """The Secret of the batch's gateway key, owned by the batch (it goes with it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.batch_key_secret_name(ctx.name, key_sha256),
            "namespace": ctx.namespace,
            "labels": ctx.labels("gateway-key"),
            "ownerReferences": [ctx.owner_reference()],
        },
        "data": {naming.GATEWAY_KEY_SECRET_KEY: base64.b64encode(key.encode()).decode()},
    }


def _volume_name(claim: str, claims: list[str]) -> str:
    return f"volume-{claims.index(claim)}"


def _claims(spec: InferenceBatchSpec) -> list[str]:
    claims = []
    for place in (spec.input.volume, spec.output.volume):
        if place is not None and place.claimName not in claims:
            claims.append(place.claimName)
    return claims


def _volume_place(place: VolumePath) -> Place:
    return Place(
        path=f"{VOLUMES_ROOT}/{place.claimName}/{place.path}",
        url=f"pvc://{place.claimName}/{place.path}",
    )


def _s3_place(location: S3Location, env_prefix: str) -> Place:
    return Place(
        s3=location,
        url=f"s3://{location.bucket}/{location.key}",
        credentialsEnv=env_prefix if location.credentialsSecretRef else None,
    )


def model_names(model: ModelContext) -> list[str]:
    """What a line's ``body.model`` may say to mean this model."""
    repo = model.spec.source.repo
    return sorted({model.name, repo, repo.rsplit("/", 1)[-1]})


def plan(ctx: BatchContext) -> BatchPlan:
    spec = ctx.spec
    if spec.input.volume is not None:
        source = _volume_place(spec.input.volume)
    elif spec.input.s3 is not None:
        source = _s3_place(spec.input.s3, "GPTOSS_INPUT_")
    else:
        assert spec.input.configMap is not None
        config_map = spec.input.configMap
        source = Place(
            path=f"{CONFIGMAP_ROOT}/input.jsonl",
            url=f"configmap://{config_map.name}/{config_map.key}",
        )
    if spec.output.volume is not None:
        output = _volume_place(spec.output.volume)
    else:
        assert spec.output.s3 is not None
        output = _s3_place(spec.output.s3, "GPTOSS_OUTPUT_")
    return BatchPlan(
        batch=ctx.name,
        namespace=ctx.namespace,
        uid=ctx.uid,
        shards=spec.shards,
        requestsPerShard=batch_requests_per_shard(ctx.model.spec, spec),
        maxLineAttempts=spec.maxLineAttempts,
        defaults=spec.defaults,
        priority=spec.priority,
        priorityScheduling=ctx.model.spec.serving.schedulingPolicy == "priority",
        engineUrl=naming.gateway_url(ctx.model.name, ctx.model.namespace),
        servedModelName=ctx.model.name,
        modelNames=model_names(ctx.model),
        input=source,
        output=output,
        overwrite=spec.output.overwrite,
        # Every shard reports; together they write at most about 4 times a second.
        progressSeconds=max(5.0, spec.shards / 4),
    )


def _credentials_env(location: S3Location | None, prefix: str) -> list[dict[str, Any]]:
    if location is None or location.credentialsSecretRef is None:
        return []
    secret = location.credentialsSecretRef.name
    return [
        {
            "name": f"{prefix}{key}",
            "valueFrom": {
                "secretKeyRef": {
                    "name": secret,
                    "key": key,
                    **({"optional": True} if key == "AWS_SESSION_TOKEN" else {}),
                }
            },
        }
        for key in S3_KEYS
    ]


def _pod_spec(ctx: BatchContext, command: list[str], *, engine: bool) -> dict[str, Any]:
    spec = ctx.spec
    claims = _claims(spec)
    env: list[dict[str, Any]] = [
        {"name": "GPTOSS_BATCH_PLAN", "value": plan(ctx).model_dump_json(exclude_none=True)},
        {"name": "GPTOSS_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HOME", "value": "/tmp"},
        *_credentials_env(spec.input.s3, "GPTOSS_INPUT_"),
        *_credentials_env(spec.output.s3, "GPTOSS_OUTPUT_"),
    ]
    if engine:
        key = {"name": ctx.key_secret, "key": naming.GATEWAY_KEY_SECRET_KEY}
        env.append({"name": "GPTOSS_ENGINE_API_KEY", "valueFrom": {"secretKeyRef": key}})
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, token_volume()]
    for claim in claims:
        volume = _volume_name(claim, claims)
        read_only = spec.output.volume is None or spec.output.volume.claimName != claim
        mounts.append(
            {"name": volume, "mountPath": f"{VOLUMES_ROOT}/{claim}", "readOnly": read_only}
        )
        volumes.append(
            {"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
        )
    if spec.input.configMap is not None:
        mounts.append({"name": "input", "mountPath": CONFIGMAP_ROOT, "readOnly": True})
        volumes.append(
            {
                "name": "input",
                "configMap": {
                    "name": spec.input.configMap.name,
                    "items": [{"key": spec.input.configMap.key, "path": "input.jsonl"}],
                },
            }
        )
    resources = (
        spec.workerResources.to_wire() if spec.workerResources is not None else WORKER_RESOURCES
    )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": ctx.model.spec.sidecar.image or ctx.model.settings.sidecar_image,
        "imagePullPolicy": ctx.model.settings.image_pull_policy,
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        "resources": resources,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "restartPolicy": "Never",
        "serviceAccountName": ctx.account,
        # The token only where the worker looks for one (its projected volume).
        "automountServiceAccountToken": False,
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [container],
        "volumes": volumes,
    }


def _job(
    ctx: BatchContext, name: str, component: str, spec: dict[str, Any], pod: dict[str, Any]
) -> dict[str, Any]:
    labels = ctx.labels(component)
    pod_labels = {**labels, BATCH_MODEL_LABEL: ctx.model.name}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": ctx.namespace,
            "labels": labels,
            "ownerReferences": [ctx.owner_reference()],
        },
        "spec": {**spec, "template": {"metadata": {"labels": pod_labels}, "spec": pod}},
    }


def shards_job(ctx: BatchContext) -> dict[str, Any]:
    spec = ctx.spec
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.shards,
        "parallelism": spec.parallelism or spec.shards,
        "backoffLimitPerIndex": spec.backoffLimitPerIndex,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": FAILURE_POLICY,
    }
    if spec.activeDeadlineSeconds:
        job_spec["activeDeadlineSeconds"] = spec.activeDeadlineSeconds
    return _job(
        ctx,
        naming.batch_shards_job_name(ctx.name),
        naming.COMPONENT_BATCH_SHARDS,
        job_spec,
        _pod_spec(ctx, ["gptoss-batch", "shard"], engine=True),
    )


def merge_job(ctx: BatchContext) -> dict[str, Any]:
    job_spec: dict[str, Any] = {
        "completions": 1,
        "backoffLimit": 6,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": FAILURE_POLICY,
    }
    return _job(
        ctx,
        naming.batch_merge_job_name(ctx.name),
        naming.COMPONENT_BATCH_MERGE,
        job_spec,
        _pod_spec(ctx, ["gptoss-batch", "merge"], engine=False),
    )
