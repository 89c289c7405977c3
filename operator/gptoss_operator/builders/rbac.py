"""The identities of a model's workers: one ServiceAccount for the download Job, one for
the sidecar, one for the workers of its InferenceBatches, each bound in the model's
namespace to a ClusterRole the chart ships.

The operator binds those ClusterRoles (the ``bind`` verb, on them alone) instead of
writing Roles: Kubernetes lets a subject grant only what it holds, so a Role written by
the operator would need the operator to hold every permission of its workers (the
ConfigMap writes of the sidecar among them). Their rules live in the chart alone
(``templates/rbac.yaml``).

The vLLM container gets no token at all (see ``builders.serving``).
"""

from __future__ import annotations

from typing import Any

from gptoss_operator.builders import ModelContext
from gptoss_operator.core import naming


def legacy_binding_name(model: str) -> str:
    """The RoleBinding that versions before the split gave both workers: its Role granted
    the union of their rules, so it is removed when the model is next reconciled."""
    return f"{model}-worker"


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


def tenant_binding_name(model_namespace: str, model: str) -> str:
    """The RoleBinding of a model's sidecar in a tenant's namespace (namespaces hold no
    dots, so two models' names never meet)."""
    return f"{model_namespace}.{model}-sidecar"


def tenant_binding(
    model: str, model_namespace: str, tenant: str, sidecar_role: str
) -> dict[str, Any]:
    """Binds the sidecar's ClusterRole in ``tenant`` to the sidecar of ``model``."""
    labels = {**naming.labels(model), naming.MODEL_NAMESPACE_LABEL: model_namespace}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {
            "name": tenant_binding_name(model_namespace, model),
            "namespace": tenant,
            "labels": labels,
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": sidecar_role,
        },
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": naming.sidecar_account_name(model),
                "namespace": model_namespace,
            }
        ],
    }


def tenant_batch_identity(
    model: str, model_namespace: str, tenant: str, batch_role: str
) -> list[dict[str, Any]]:
    """The ServiceAccount, in ``tenant``, of the shards of its InferenceBatches for
    ``model``, and its RoleBinding of the batch workers' ClusterRole there (they report
    their progress into their batch's status)."""
    name = naming.tenant_batch_account_name(model_namespace, model)
    labels = {
        **naming.labels(model, naming.COMPONENT_TENANT_BATCH),
        naming.MODEL_NAMESPACE_LABEL: model_namespace,
    }
    metadata = {"name": name, "namespace": tenant, "labels": labels}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata,
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": batch_role,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": tenant}],
        },
    ]
