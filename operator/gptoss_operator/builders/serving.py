"""The vLLM Deployment (with the InferenceJob sidecar) and its Service."""

from __future__ import annotations

import math
from typing import Any

from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.builders import (
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    TOKEN_MOUNT,
    TOKEN_VOLUME,
    ModelContext,
    api_key,
    token_volume,
)
from gptoss_operator.builders.engine_config import (
    gateway_slots,
    is_120b,
    sidecar_in_flight,
    vllm_args,
)
from gptoss_operator.core import naming

PROBE_PERIOD_SECONDS = 10
# Port names are unique within a pod, and a probe resolves its port's name among its own
# container's ports.
SIDECAR_HEALTH_PORT = "sidecar-health"
GATEWAY_PORT = "gateway"

# The engine's root filesystem is read-only and it runs as a user the image does not
# name: home, caches (vLLM, Triton, torch's compiler, Hugging Face) and scratch space go
# to an emptyDir, and a user name is given for libraries that look one up.
ENGINE_SCRATCH = "/tmp"
ENGINE_SCRATCH_ENV = [
    {"name": "HOME", "value": ENGINE_SCRATCH},
    {"name": "USER", "value": "vllm"},
    {"name": "XDG_CACHE_HOME", "value": f"{ENGINE_SCRATCH}/.cache"},
    {"name": "XDG_CONFIG_HOME", "value": f"{ENGINE_SCRATCH}/.config"},
    {"name": "VLLM_CACHE_ROOT", "value": f"{ENGINE_SCRATCH}/.cache/vllm"},
    {"name": "VLLM_CONFIG_ROOT", "value": f"{ENGINE_SCRATCH}/.config/vllm"},
    {"name": "TRITON_CACHE_DIR", "value": f"{ENGINE_SCRATCH}/.triton"},
    {"name": "TORCHINDUCTOR_CACHE_DIR", "value": f"{ENGINE_SCRATCH}/torchinductor"},
    {"name": "HF_HOME", "value": f"{ENGINE_SCRATCH}/.cache/huggingface"},
]

# Requests keep the pods out of the BestEffort class (the first evicted). vLLM reads the
# weights through host memory while it loads them, and its API server, tokenizer and
# scheduler are CPU work; the sidecar renders and parses harmony.
SIDECAR_RESOURCES: dict[str, dict[str, str | int]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


def engine_requests(spec: GptOssModelSpec) -> dict[str, str | int]:
    memory = "96Gi" if is_120b(spec) else "32Gi"
    return {"cpu": str(4 * spec.serving.gpusPerReplica), "memory": memory}


def _merged(
    defaults: dict[str, dict[str, str | int]], given: dict[str, dict[str, str | int]]
) -> dict[str, dict[str, str | int]]:
    """Container resources: the user's values win, key by key."""
    merged = {kind: dict(values) for kind, values in defaults.items()}
    for kind, values in given.items():
        merged.setdefault(kind, {}).update(values)
    return merged


def _engine_container(ctx: ModelContext, digest: str) -> dict[str, Any]:
    serving = ctx.spec.serving
    gpus = str(serving.gpusPerReplica)
    resources = _merged(
        {"requests": engine_requests(ctx.spec)},
        serving.resources.to_wire() if serving.resources else {},
    )
    resources.setdefault("limits", {})[serving.gpuResourceName] = gpus
    resources.setdefault("requests", {})[serving.gpuResourceName] = gpus
    health = {"path": "/health", "port": "http"}
    env = [
        {"name": "TIKTOKEN_ENCODINGS_BASE", "value": naming.VOCAB_DIR},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        *ENGINE_SCRATCH_ENV,
        api_key.env("VLLM_API_KEY", ctx),
        *serving.env,
    ]
    return {
        "name": "vllm",
        "image": serving.image or ctx.settings.vllm_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vllm"],
        "args": vllm_args(ctx.name, ctx.spec, digest),
        "env": env,
        "ports": [{"name": "http", "containerPort": naming.ENGINE_PORT, "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": [
            {"name": "weights", "mountPath": naming.VOLUME_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "engine-scratch", "mountPath": ENGINE_SCRATCH},
        ],
        "startupProbe": {
            "httpGet": health,
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": math.ceil(serving.startupTimeoutSeconds / PROBE_PERIOD_SECONDS),
        },
        "readinessProbe": {
            "httpGet": health,
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": health,
            "periodSeconds": 20,
            "timeoutSeconds": 10,
            "failureThreshold": 6,
        },
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _sidecar_container(ctx: ModelContext) -> dict[str, Any]:
    sidecar = ctx.spec.sidecar
    container: dict[str, Any] = {
        "name": "sidecar",
        "image": sidecar.image or ctx.settings.sidecar_image,
        "imagePullPolicy": ctx.settings.image_pull_policy,
        "command": ["gptoss-sidecar"],
        "env": [
            {"name": "GPTOSS_MODEL", "value": ctx.name},
            {
                "name": "GPTOSS_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "GPTOSS_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GPTOSS_ENGINE_URL", "value": f"http://127.0.0.1:{naming.ENGINE_PORT}"},
            {"name": "GPTOSS_CONCURRENCY", "value": str(sidecar_in_flight(ctx.spec))},
            {
                "name": "GPTOSS_ENGINE_PRIORITY_SCHEDULING",
                "value": str(ctx.spec.serving.schedulingPolicy == "priority").lower(),
            },
            {"name": "GPTOSS_HEALTH_PORT", "value": str(naming.SIDECAR_HEALTH_PORT)},
            {"name": "GPTOSS_GATEWAY_PORT", "value": str(naming.GATEWAY_PORT)},
            {"name": "GPTOSS_GATEWAY_SLOTS", "value": str(gateway_slots(ctx.spec))},
            api_key.env("GPTOSS_ENGINE_API_KEY", ctx),
        ],
        "ports": [
            {
                "name": SIDECAR_HEALTH_PORT,
                "containerPort": naming.SIDECAR_HEALTH_PORT,
                "protocol": "TCP",
            },
            {"name": GATEWAY_PORT, "containerPort": naming.GATEWAY_PORT, "protocol": "TCP"},
        ],
        # Fails only when the sidecar's event loop stops answering: everything else it
        # recovers from without a restart, which would cut the generations in flight.
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": SIDECAR_HEALTH_PORT},
            "periodSeconds": 20,
            "timeoutSeconds": 10,
            "failureThreshold": 6,
        },
        # The harmony vocab comes baked into the sidecar image (TIKTOKEN_ENCODINGS_BASE
        # set there); /tmp is the only writable place.
        "volumeMounts": [
            {"name": "sidecar-tmp", "mountPath": "/tmp"},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True},
        ],
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    container["resources"] = _merged(
        SIDECAR_RESOURCES, sidecar.resources.to_wire() if sidecar.resources else {}
    )
    return container


def deployment(ctx: ModelContext, digest: str, replicas: int | None = None) -> dict[str, Any]:
    serving = ctx.spec.serving
    selector = naming.server_selector(ctx.name)
    labels = naming.labels(ctx.name, naming.COMPONENT_SERVER)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": naming.sidecar_account_name(ctx.name),
        "automountServiceAccountToken": False,
        "securityContext": RESTRICTED_POD_SECURITY,
        "containers": [_engine_container(ctx, digest), _sidecar_container(ctx)],
        "volumes": [
            {
                "name": "weights",
                "persistentVolumeClaim": {
                    "claimName": naming.claim_name(ctx.name, ctx.spec),
                    "readOnly": True,
                },
            },
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": serving.shmSize}},
            {"name": "engine-scratch", "emptyDir": {"sizeLimit": serving.scratchSize}},
            {"name": "sidecar-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            token_volume(),
        ],
        "terminationGracePeriodSeconds": 60,
    }
    if serving.nodeSelector:
        pod_spec["nodeSelector"] = dict(serving.nodeSelector)
    if serving.tolerations:
        pod_spec["tolerations"] = list(serving.tolerations)
    if serving.affinity:
        pod_spec["affinity"] = dict(serving.affinity)
    if serving.priorityClassName:
        pod_spec["priorityClassName"] = serving.priorityClassName
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": ctx.metadata(
            naming.deployment_name(ctx.name),
            labels,
            annotations={naming.SOURCE_HASH_ANNOTATION: digest},
        ),
        "spec": {
            "replicas": serving.replicas if replicas is None else replicas,
            "selector": {"matchLabels": selector},
            # GPUs are scarce: replace pods one at a time instead of surging.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "progressDeadlineSeconds": serving.startupTimeoutSeconds + 600,
            "template": {
                "metadata": {
                    "labels": {
                        **serving.podLabels,
                        **labels,
                        naming.MODEL_UID_LABEL: ctx.uid,
                    },
                    "annotations": {
                        **serving.podAnnotations,
                        naming.SOURCE_HASH_ANNOTATION: digest,
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def service(ctx: ModelContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": ctx.metadata(
            naming.service_name(ctx.name), naming.labels(ctx.name, naming.COMPONENT_SERVER)
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.server_selector(ctx.name),
            "ports": [
                {
                    "name": "http",
                    "port": naming.ENGINE_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                },
                {
                    "name": GATEWAY_PORT,
                    "port": naming.GATEWAY_PORT,
                    "targetPort": GATEWAY_PORT,
                    "protocol": "TCP",
                },
            ],
        },
    }
