"""The vLLM Deployment (with the InferenceJob sidecar) and its Service."""

from __future__ import annotations

import math
from typing import Any

from gptoss_operator import naming
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.builders import RESTRICTED_CONTAINER_SECURITY, ModelContext

PROBE_PERIOD_SECONDS = 10


def is_120b(spec: GptOssModelSpec) -> bool:
    return spec.source.repo.lower().endswith("gpt-oss-120b")


def vllm_args(ctx: ModelContext, digest: str) -> list[str]:
    """``vllm serve`` arguments, following the gpt-oss recipe for Hopper GPUs.

    120b on a single 80 GB GPU needs --gpu-memory-utilization 0.95 and
    --max-num-batched-tokens 1024 to leave room for the KV cache; with more memory per
    replica the recipe's 8192 batched tokens apply.
    """
    serving = ctx.spec.serving
    tp = serving.effective_tensor_parallel_size()
    tight = is_120b(ctx.spec) and tp == 1
    memory = serving.gpuMemoryUtilization or (0.95 if tight else None)
    batched = serving.maxNumBatchedTokens or (1024 if tight else 8192)
    args = [
        "serve",
        naming.served_path(digest),
        "--served-model-name",
        ctx.name,
        "--host",
        "0.0.0.0",
        "--port",
        str(naming.ENGINE_PORT),
        "--tensor-parallel-size",
        str(tp),
        "--max-num-batched-tokens",
        str(batched),
        "--no-enable-prefix-caching",
    ]
    if memory is not None:
        args += ["--gpu-memory-utilization", f"{memory:g}"]
    if serving.maxModelLen:
        args += ["--max-model-len", str(serving.maxModelLen)]
    return args + list(serving.extraArgs)


def _engine_container(ctx: ModelContext, digest: str) -> dict[str, Any]:
    serving = ctx.spec.serving
    resources = serving.resources.to_wire() if serving.resources else {}
    gpus = str(serving.gpusPerReplica)
    resources.setdefault("limits", {})[serving.gpuResourceName] = gpus
    resources.setdefault("requests", {})[serving.gpuResourceName] = gpus
    health = {"path": "/health", "port": "http"}
    env = [
        {"name": "TIKTOKEN_ENCODINGS_BASE", "value": naming.VOCAB_DIR},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
        *serving.env,
    ]
    return {
        "name": "vllm",
        "image": serving.image or ctx.settings.vllm_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vllm"],
        "args": vllm_args(ctx, digest),
        "env": env,
        "ports": [{"name": "http", "containerPort": naming.ENGINE_PORT, "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": [
            {"name": "weights", "mountPath": naming.VOLUME_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
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
        "securityContext": {"allowPrivilegeEscalation": False},
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
            {"name": "GPTOSS_CONCURRENCY", "value": str(sidecar.concurrency)},
        ],
        # The harmony vocab comes baked into the sidecar image (TIKTOKEN_ENCODINGS_BASE
        # set there); /tmp is the only writable place.
        "volumeMounts": [{"name": "sidecar-tmp", "mountPath": "/tmp"}],
        "securityContext": {
            **RESTRICTED_CONTAINER_SECURITY,
            "runAsUser": 10001,
            "runAsGroup": 10001,
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if sidecar.resources:
        container["resources"] = sidecar.resources.to_wire()
    return container


def deployment(ctx: ModelContext, digest: str) -> dict[str, Any]:
    serving = ctx.spec.serving
    selector = naming.server_selector(ctx.name)
    labels = naming.labels(ctx.name, naming.COMPONENT_SERVER)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": naming.worker_account_name(ctx.name),
        "securityContext": {
            "fsGroup": 10001,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
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
            {"name": "sidecar-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
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
            "replicas": serving.replicas,
            "selector": {"matchLabels": selector},
            # GPUs are scarce: replace pods one at a time instead of surging.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "progressDeadlineSeconds": serving.startupTimeoutSeconds + 600,
            "template": {
                "metadata": {
                    "labels": {**serving.podLabels, **labels},
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
                }
            ],
        },
    }
