"""The Helm chart from the sandbox's helm: running helm, rendering the chart, and the
workers' ClusterRoles for an operator run outside the chart (tests, benchmarks, the local
demo), rendered from the chart, the one place their rules are written."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from gptoss_sandbox import binaries

CHART = Path(__file__).resolve().parents[2] / "charts" / "gptoss-operator"
KUBE_VERSION = binaries.KUBERNETES_VERSION.removeprefix("v")

# With fullnameOverride=gptoss the chart names them as core.settings.Settings defaults.
WORKER_ROLES = (
    "gptoss-downloader",
    "gptoss-sidecar",
    "gptoss-batch-worker",
    "gptoss-sidecar-tenant",
)


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [str(binaries.ensure_binaries().helm), *args]
    if kubeconfig is not None:
        command += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def render(*values: str, show_only: str | None = None) -> list[dict[str, Any]]:
    """``helm template`` of the chart as release gptoss in gptoss-system, with ``--set``
    ``values``; only the template ``show_only`` when given."""
    args = ["template", "gptoss", str(CHART), "--namespace", "gptoss-system"]
    args += ["--kube-version", KUBE_VERSION]
    for value in values:
        args += ["--set", value]
    if show_only is not None:
        args += ["--show-only", show_only]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def worker_cluster_roles() -> list[dict[str, Any]]:
    """The downloader's, the sidecar's, the batch worker's and the sidecar's tenant
    ClusterRoles, in that order."""
    rendered = render("fullnameOverride=gptoss", show_only="templates/rbac.yaml")
    by_name = {doc["metadata"]["name"]: doc for doc in rendered if doc["kind"] == "ClusterRole"}
    return [by_name[name] for name in WORKER_ROLES]
