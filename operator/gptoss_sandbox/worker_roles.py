"""The workers' ClusterRoles for an operator run outside the chart (tests, benchmarks, the
local demo): rendered from the chart, the one place their rules are written, under the
names the operator's settings use by default."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from gptoss_sandbox import binaries

CHART = Path(__file__).resolve().parents[2] / "charts" / "gptoss-operator"

# With fullnameOverride=gptoss the chart names them as core.settings.Settings defaults.
WORKER_ROLES = ("gptoss-downloader", "gptoss-sidecar", "gptoss-batch-worker")


def worker_cluster_roles() -> list[dict[str, Any]]:
    """The downloader's, the sidecar's and the batch worker's ClusterRoles, in that order."""
    helm = binaries.ensure_binaries().helm
    result = subprocess.run(
        [
            str(helm),
            "template",
            "gptoss",
            str(CHART),
            "--set",
            "fullnameOverride=gptoss",
            "--show-only",
            "templates/rbac.yaml",
            "--kube-version",
            binaries.KUBERNETES_VERSION.removeprefix("v"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template of the workers' roles failed: {result.stderr}")
    by_name = {
        document["metadata"]["name"]: document
        for document in yaml.safe_load_all(result.stdout)
        if document and document["kind"] == "ClusterRole"
    }
    return [by_name[name] for name in WORKER_ROLES]
