"""The Job that downloads the weights into the claim."""

from __future__ import annotations

from typing import Any

from gptoss_operator.api.download_exits import PERMANENT_EXIT_CODES
from gptoss_operator.builders import (
    RESTRICTED_CONTAINER_SECURITY,
    RESTRICTED_POD_SECURITY,
    ModelContext,
)
from gptoss_operator.builders.storage import default_size
from gptoss_operator.core import naming
from gptoss_operator.core.naming import ATTEMPT_LABEL, GENERATION_ANNOTATION, RETRY_ANNOTATION
from gptoss_operator.core.quantity import to_bytes


def job(
    ctx: ModelContext,
    digest: str,
    attempt: int = 0,
    generation: int = 1,
    retry_token: str | None = None,
) -> dict[str, Any]:
    """Download Job ``attempt`` of the source ``digest``, recording what it was made
    for (see ``gptoss_operator.controllers.model.download_retry``)."""
    source = ctx.spec.source
    download = ctx.spec.download
    env: list[dict[str, Any]] = [
        {"name": "GPTOSS_MODEL", "value": ctx.name},
        {"name": "GPTOSS_NAMESPACE", "value": ctx.namespace},
        {"name": "GPTOSS_REPO", "value": source.repo},
        {"name": "GPTOSS_REVISION", "value": source.revision},
        {"name": "GPTOSS_EXCLUDE_PATTERNS", "value": ",".join(source.excludePatterns)},
        {"name": "GPTOSS_SOURCE_HASH", "value": digest},
        {"name": "GPTOSS_DATA_DIR", "value": naming.VOLUME_MOUNT},
        {"name": "GPTOSS_STALL_TIMEOUT_SECONDS", "value": str(download.stallTimeoutSeconds)},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        {"name": "HOME", "value": "/tmp"},
    ]
    if not ctx.spec.storage.existingClaim:
        size = ctx.spec.storage.size or default_size(ctx.spec)
        env.append({"name": "GPTOSS_VOLUME_CAPACITY_BYTES", "value": str(to_bytes(size))})
    if source.endpoint:
        env.append({"name": "HF_ENDPOINT", "value": source.endpoint})
    if source.tokenSecretRef:
        # Where the token is, not the token: the downloader reads it with its own
        # identity, only if the Secret's owner shared it (download/token.py).
        env += [
            {"name": "GPTOSS_TOKEN_SECRET", "value": source.tokenSecretRef.name},
            {"name": "GPTOSS_TOKEN_KEY", "value": source.tokenSecretRef.key},
        ]
    container: dict[str, Any] = {
        "name": "download",
        "image": download.image or ctx.settings.downloader_image,
        "imagePullPolicy": ctx.settings.image_pull_policy,
        "command": ["gptoss-download"],
        "env": env,
        "volumeMounts": [
            {"name": "weights", "mountPath": naming.VOLUME_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if download.resources:
        container["resources"] = download.resources.to_wire()
    labels = naming.labels(ctx.name, naming.COMPONENT_DOWNLOAD)
    spec: dict[str, Any] = {
        "backoffLimit": download.backoffLimit,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "download",
                        "operator": "In",
                        "values": PERMANENT_EXIT_CODES,
                    },
                },
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget"}],
                },
            ]
        },
        "template": {
            "metadata": {
                "labels": {**download.podLabels, **labels},
                "annotations": dict(download.podAnnotations),
            },
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": naming.download_account_name(ctx.name),
                "automountServiceAccountToken": True,
                "securityContext": RESTRICTED_POD_SECURITY,
                "containers": [container],
                "volumes": [
                    {
                        "name": "weights",
                        "persistentVolumeClaim": {
                            "claimName": naming.claim_name(ctx.name, ctx.spec)
                        },
                    },
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        },
    }
    if download.activeDeadlineSeconds:
        spec["activeDeadlineSeconds"] = download.activeDeadlineSeconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": ctx.metadata(
            naming.download_job_name(ctx.name, digest, attempt),
            {**labels, ATTEMPT_LABEL: str(attempt)},
            annotations={
                naming.SOURCE_HASH_ANNOTATION: digest,
                GENERATION_ANNOTATION: str(generation),
                **({RETRY_ANNOTATION: retry_token} if retry_token else {}),
            },
        ),
        "spec": spec,
    }
