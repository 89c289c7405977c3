"""The identities of a model's workers: one ServiceAccount for the download Job, one for
the sidecar, one for the workers of its InferenceBatches, each bound in the model's
namespace to a ClusterRole the chart ships.

The operator binds those ClusterRoles (the ``bind`` verb, on them alone) instead of
writing Roles: Kubernetes lets a subject grant only what it holds, so a Role written by
the operator would need the operator to hold every permission of its workers (the
ConfigMap writes of the sidecar among them). The rules live here, once; the chart's
ClusterRoles are checked against them by a test.

The vLLM container gets no token at all (see ``builders.serving``).
"""

from __future__ import annotations

from typing import Any

from gptoss_operator.api.common import GROUP
from gptoss_operator.builders import ModelContext
from gptoss_operator.core import naming

# The downloader reports progress into its model's status; it reads nothing else.
DOWNLOADER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["gptossmodels"], "verbs": ["get"]},
    {"apiGroups": [GROUP], "resources": ["gptossmodels/status"], "verbs": ["get", "patch"]},
]

# The sidecar claims and updates InferenceJobs, keeps oversized outputs in ConfigMaps
# (and removes those of attempts that lost their lease; it never reads one) and records
# Events.
SIDECAR_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["inferencejobs"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": ["inferencejobs/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "update", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]


# A batch worker reports its shard's progress into its batch's status; it reads nothing
# else (its input and output are files, its credentials come from the pod's env).
BATCH_WORKER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["inferencebatches"], "verbs": ["get"]},
    {"apiGroups": [GROUP], "resources": ["inferencebatches/status"], "verbs": ["get", "patch"]},
]


def legacy_binding_name(model: str) -> str:
    """The RoleBinding that versions before the split gave both workers: its Role granted
    the union of their rules, so it is removed when the model is next reconciled."""
    return f"{model}-worker"


def cluster_role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """A workers' ClusterRole, as the chart ships it (and local clusters apply it)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "gptoss-operator"}},
        "rules": rules,
    }


def worker_cluster_roles(downloader: str, sidecar: str, batch: str) -> list[dict[str, Any]]:
    return [
        cluster_role(downloader, DOWNLOADER_RULES),
        cluster_role(sidecar, SIDECAR_RULES),
        cluster_role(batch, BATCH_WORKER_RULES),
    ]


def _service_account(ctx: ModelContext, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ctx.metadata(name, naming.labels(ctx.name)),
        # Pods mount a token only where a container asks for one (the sidecar's
        # projected volume); the download Job's pod sets its own.
        "automountServiceAccountToken": False,
    }


def _role_binding(ctx: ModelContext, account: str, cluster_role_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": ctx.metadata(account, naming.labels(ctx.name)),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role_name,
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ctx.namespace}],
    }


def worker_identities(ctx: ModelContext) -> list[dict[str, Any]]:
    """The workers' ServiceAccounts and RoleBindings, accounts first."""
    download = naming.download_account_name(ctx.name)
    sidecar = naming.sidecar_account_name(ctx.name)
    batch = naming.batch_account_name(ctx.name)
    return [
        _service_account(ctx, download),
        _service_account(ctx, sidecar),
        _service_account(ctx, batch),
        _role_binding(ctx, download, ctx.settings.downloader_cluster_role),
        _role_binding(ctx, sidecar, ctx.settings.sidecar_cluster_role),
        _role_binding(ctx, batch, ctx.settings.batch_worker_cluster_role),
    ]
