"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from gptoss_operator import __version__
from gptoss_operator.api.versions import DEFAULT_VLLM_IMAGE

DEFAULT_PRODUCT_IMAGE = f"ghcr.io/gptoss-operator/gptoss-operator:{__version__}"


@dataclass(frozen=True)
class Settings:
    """Defaults the operator fills in where a GptOssModel leaves a field unset."""

    vllm_image: str = DEFAULT_VLLM_IMAGE
    downloader_image: str = DEFAULT_PRODUCT_IMAGE
    sidecar_image: str = DEFAULT_PRODUCT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    # How long a claim may stay unbound before it is reported as stuck.
    claim_pending_grace_seconds: int = 60
    # How often every model is reconciled even when nothing changed.
    resync_seconds: float = 30.0
    # How often the autoscaler samples each autoscaled model's load (a new job for a
    # model at zero wakes it at once).
    autoscale_seconds: float = 5.0
    # Also read vLLM's running and waiting requests from each pod's /metrics.
    autoscale_engine_metrics: bool = True
    # How often the InferenceJob housekeeping may look at the jobs (it looks only when
    # something changed or falls due).
    job_housekeeping_seconds: float = 1.0
    # A failed download runs again after this, doubling per attempt up to 30 minutes.
    download_retry_seconds: float = 60.0
    download_retry_cap_seconds: float = 1800.0
    namespaces: list[str] = field(default_factory=list)
    metrics_port: int = 8081
    # A NetworkPolicy per model admitting the engine port to the model's namespace
    # (network_policy_same_namespace) and to the listed NetworkPolicyPeers.
    network_policy: bool = False
    network_policy_same_namespace: bool = True
    network_policy_from: list[dict[str, Any]] = field(default_factory=list)
    # The ClusterRoles the workers are bound to in each model's namespace (the chart
    # ships them and lets the operator bind these and nothing else).
    downloader_cluster_role: str = "gptoss-downloader"
    sidecar_cluster_role: str = "gptoss-sidecar"
    batch_worker_cluster_role: str = "gptoss-batch-worker"
    # The sidecar's ClusterRole in its model's tenants' namespaces.
    sidecar_tenant_cluster_role: str = "gptoss-sidecar-tenant"

    @classmethod
    def from_env(cls) -> Settings:
        image = os.environ.get("GPTOSS_IMAGE", DEFAULT_PRODUCT_IMAGE)
        namespaces = [n for n in os.environ.get("GPTOSS_NAMESPACES", "").split(",") if n]
        return cls(
            vllm_image=os.environ.get("GPTOSS_VLLM_IMAGE") or DEFAULT_VLLM_IMAGE,
            downloader_image=os.environ.get("GPTOSS_DOWNLOADER_IMAGE", image),
            sidecar_image=os.environ.get("GPTOSS_SIDECAR_IMAGE", image),
            image_pull_policy=os.environ.get("GPTOSS_IMAGE_PULL_POLICY", "IfNotPresent"),
            claim_pending_grace_seconds=int(os.environ.get("GPTOSS_CLAIM_PENDING_GRACE", "60")),
            resync_seconds=float(os.environ.get("GPTOSS_RESYNC_SECONDS", "30")),
            autoscale_seconds=float(os.environ.get("GPTOSS_AUTOSCALE_SECONDS", "5")),
            autoscale_engine_metrics=(
                os.environ.get("GPTOSS_AUTOSCALE_ENGINE_METRICS", "true") == "true"
            ),
            job_housekeeping_seconds=float(os.environ.get("GPTOSS_JOB_HOUSEKEEPING_SECONDS", "1")),
            download_retry_seconds=float(os.environ.get("GPTOSS_DOWNLOAD_RETRY_SECONDS", "60")),
            namespaces=namespaces,
            metrics_port=int(os.environ.get("GPTOSS_METRICS_PORT", "8081")),
            downloader_cluster_role=os.environ.get(
                "GPTOSS_DOWNLOADER_CLUSTER_ROLE", "gptoss-downloader"
            ),
            sidecar_cluster_role=os.environ.get("GPTOSS_SIDECAR_CLUSTER_ROLE", "gptoss-sidecar"),
            sidecar_tenant_cluster_role=os.environ.get(
                "GPTOSS_SIDECAR_TENANT_CLUSTER_ROLE", "gptoss-sidecar-tenant"
            ),
            batch_worker_cluster_role=os.environ.get(
                "GPTOSS_BATCH_WORKER_CLUSTER_ROLE", "gptoss-batch-worker"
            ),
            network_policy=os.environ.get("GPTOSS_NETWORK_POLICY", "false") == "true",
            network_policy_same_namespace=(
                os.environ.get("GPTOSS_NETWORK_POLICY_SAME_NAMESPACE", "true") == "true"
            ),
            network_policy_from=json.loads(os.environ.get("GPTOSS_NETWORK_POLICY_FROM") or "[]"),
        )
