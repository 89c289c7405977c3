"""Helm and identities for the chart's tests: render or install the chart, and act as
one of its ServiceAccounts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from lightkube import ApiError, Client
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccount

from gptoss_sandbox import binaries
from gptoss_sandbox.chart import CHART, helm
from tests.conftest import ClusterUnderTest


def tools() -> binaries.Binaries:
    found = binaries.ensure_binaries()
    return found


def token_kubeconfig(
    cluster: ClusterUnderTest, kube: Client, namespace: str, account: str, path: Path
) -> Path:
    request = kube.create(
        ServiceAccount.Token(
            metadata=ObjectMeta(name=account, namespace=namespace),
            spec=TokenRequestSpec(audiences=[], expirationSeconds=3600),
        ),
        account,
        namespace=namespace,
    )
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": request.status.token}}],
        "contexts": [
            {
                "name": "sa",
                "context": {
                    "cluster": admin["clusters"][0]["name"],
                    "user": account,
                    "namespace": namespace,
                },
            }
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def install(
    cluster: ClusterUnderTest,
    release: str,
    namespace: str,
    *watch: str,
    values: tuple[str, ...] = (),
) -> str:
    """``helm install`` the chart into ``namespace`` (namespaced mode when ``watch`` names
    namespaces; ``values`` are --set arguments), without waiting; the name of its
    operator's objects."""
    settings = ["watchNamespaces={" + ",".join(watch) + "}"] if watch else []
    values = tuple(arg for value in (*settings, *values) for arg in ("--set", value))
    helm(
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--wait=false",
        *values,
        kubeconfig=cluster.kubeconfig,
    )
    return f"{release}-gptoss-operator"


def apiserver_refusal(call: Callable[[], object]) -> str | None:
    """The apiserver's refusal of a request (``code message``), None when it is admitted."""
    try:
        call()
    except ApiError as error:
        return f"{error.status.code} {error.status.message}"
    return None


def dry_run_refusal(client: Client, obj: Any, namespace: str | None = None) -> str | None:
    """The apiserver's refusal of a dry-run create, admission included."""
    return apiserver_refusal(lambda: client.create(obj, namespace=namespace, dry_run=True))
