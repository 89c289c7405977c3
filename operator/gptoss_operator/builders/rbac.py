"""The ServiceAccount and Role of a model's workers (download Job and sidecars).

The Role grants only what they need: the downloader patches its model's status, the
sidecar claims and updates InferenceJobs, keeps oversized outputs in ConfigMaps and
records Events.
"""

from __future__ import annotations

from typing import Any

from gptoss_operator import naming
from gptoss_operator.api.common import GROUP
from gptoss_operator.builders import ModelContext

WORKER_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["gptossmodels"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": ["gptossmodels/status"], "verbs": ["get", "patch"]},
    {
        "apiGroups": [GROUP],
        "resources": ["inferencejobs"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": [GROUP],
        "resources": ["inferencejobs/status"],
        "verbs": ["get", "patch", "update"],
    },
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]


def service_account(ctx: ModelContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": ctx.metadata(naming.worker_account_name(ctx.name), naming.labels(ctx.name)),
    }


def role(ctx: ModelContext) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": ctx.metadata(naming.worker_account_name(ctx.name), naming.labels(ctx.name)),
        "rules": WORKER_RULES,
    }


def role_binding(ctx: ModelContext) -> dict[str, Any]:
    name = naming.worker_account_name(ctx.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": ctx.metadata(name, naming.labels(ctx.name)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ctx.namespace}],
    }
