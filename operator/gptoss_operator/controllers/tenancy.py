"""A model's tenants: the namespaces other than its own whose InferenceJobs and
InferenceBatches it serves.

Its sidecar acts there through a RoleBinding of the sidecar's ClusterRole, made while
the namespace has unfinished jobs for the model (before the model's status lists it, so
the sidecars find the binding when they start watching) and removed once it has none
(after the status stops listing it). The shards of the namespace's batches for the model
run there as an identity of their own (a ServiceAccount and its RoleBinding of the batch
workers' ClusterRole), made while it has unfinished batches for the model. These live in
the tenant's namespace and so cannot be owned by the model: their labels say whose they
are, and those whose model is gone are removed like any other unwanted ones (the
RoleBinding, which holds the rights; the ServiceAccount stays, holding none).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.rbac_authorization_v1 import RoleBinding

from gptoss_operator.builders import rbac
from gptoss_operator.core import kube

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]  # (namespace, name)


# (model, model namespace, tenant namespace) -> the objects to apply there, RoleBinding
# last (its name is the one the index and the removal know).
Manifests = Callable[[str, str, str], list[dict[str, Any]]]


def sidecar_bindings(sidecar_role: str) -> Manifests:
    return lambda model, model_namespace, namespace: [
        rbac.tenant_binding(model, model_namespace, namespace, sidecar_role)
    ]


def batch_identities(batch_role: str) -> Manifests:
    return lambda model, model_namespace, namespace: rbac.tenant_batch_identity(
        model, model_namespace, namespace, batch_role
    )


class TenantBindings:
    """Keeps one kind of the tenants' RoleBindings as wanted. ``existing`` is the
    operator's index of them: (model namespace, model) -> the namespaces holding one. A
    binding missing from it is applied (again, until the index shows it: applying is
    idempotent); one it holds that is not wanted is deleted."""

    def __init__(
        self,
        client: AsyncClient,
        manifests: Manifests,
        existing: Mapping[Any, Iterable[str]],
        what: str = "sidecar",
    ) -> None:
        self.client = client
        self.manifests = manifests
        self.existing = existing
        self.what = what  # whose binding, for the log

    def _held(self, key: ModelKey) -> set[str]:
        return set(self.existing.get(key, ()))

    async def bind(self, wanted: Mapping[ModelKey, set[str]]) -> set[tuple[ModelKey, str]]:
        """Make the bindings of each model's tenants that the index does not show; the
        (model, namespace) pairs that could not be bound."""
        failed = set()
        for key, namespaces in wanted.items():
            model_namespace, model = key
            for namespace in sorted(namespaces - {model_namespace} - self._held(key)):
                try:
                    for manifest in self.manifests(model, model_namespace, namespace):
                        await kube.apply(self.client, manifest)
                except (ApiError, kube.NotOurs) as error:
                    # One tenant's trouble (a namespace going away, a binding of that
                    # name someone else made) holds up no other: tried again next pass.
                    log.warning(
                        "could not bind %s/%s's %s in namespace %s: %s",
                        model_namespace,
                        model,
                        self.what,
                        namespace,
                        error,
                    )
                    failed.add((key, namespace))
                    continue
                log.info(
                    "bound %s/%s's %s in namespace %s", model_namespace, model, self.what, namespace
                )
        return failed

    async def unbind(self, wanted: Mapping[ModelKey, set[str]]) -> None:
        """Remove the bindings of namespaces that are no longer a model's tenants (all of
        them, for a model that is gone)."""
        for key in list(self.existing.keys()):
            model_namespace, model = key
            for namespace in sorted(self._held(key) - wanted.get(key, set())):
                name = self.manifests(model, model_namespace, namespace)[-1]["metadata"]["name"]
                try:
                    await self.client.delete(RoleBinding, name, namespace=namespace)
                except ApiError as error:
                    if error.status.code != 404:
                        log.warning(
                            "could not unbind %s/%s's %s in namespace %s: %s",
                            model_namespace,
                            model,
                            self.what,
                            namespace,
                            error.status.message,
                        )
                    continue
                log.info(
                    "unbound %s/%s's %s in namespace %s",
                    model_namespace,
                    model,
                    self.what,
                    namespace,
                )
