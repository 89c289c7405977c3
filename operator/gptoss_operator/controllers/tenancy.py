"""A model's tenants: the namespaces other than its own whose InferenceJobs it serves.

Its sidecar acts there through a RoleBinding of the sidecar's ClusterRole, made while
the namespace has unfinished jobs for the model (before the model's status lists it, so
the sidecars find the binding when they start watching) and removed once it has none
(after the status stops listing it). A binding lives in the tenant's namespace and so
cannot be owned by the model: its labels say whose it is, and a binding whose model is
gone is removed like any other unwanted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.rbac_authorization_v1 import RoleBinding

from gptoss_operator.builders import rbac
from gptoss_operator.core import kube

log = logging.getLogger(__name__)

ModelKey = tuple[str, str]  # (namespace, name)


class TenantBindings:
    """Keeps the tenants' RoleBindings as wanted. ``existing`` is the operator's index of
    them: (model namespace, model) -> the namespaces holding one. A binding missing from
    it is applied (again, until the index shows it: applying is idempotent); one it
    holds that is not wanted is deleted."""

    def __init__(
        self,
        client: AsyncClient,
        sidecar_role: str,
        existing: Mapping[Any, Iterable[str]],
    ) -> None:
        self.client = client
        self.sidecar_role = sidecar_role
        self.existing = existing

    def _held(self, key: ModelKey) -> set[str]:
        return set(self.existing.get(key, ()))

    async def bind(self, wanted: Mapping[ModelKey, set[str]]) -> set[tuple[ModelKey, str]]:
        """Make the bindings of each model's tenants that the index does not show; the
        (model, namespace) pairs that could not be bound."""
        failed = set()
        for key, namespaces in wanted.items():
            model_namespace, model = key
            for namespace in sorted(namespaces - {model_namespace} - self._held(key)):
                manifest = rbac.tenant_binding(model, model_namespace, namespace, self.sidecar_role)
                try:
                    await kube.apply(self.client, manifest)
                except (ApiError, kube.NotOurs) as error:
                    # One tenant's trouble (a namespace going away, a binding of that
                    # name someone else made) holds up no other: tried again next pass.
                    log.warning(
                        "could not bind %s/%s's sidecar in namespace %s: %s",
                        model_namespace,
                        model,
                        namespace,
                        error,
                    )
                    failed.add((key, namespace))
                    continue
                log.info("bound %s/%s's sidecar in namespace %s", model_namespace, model, namespace)
        return failed

    async def unbind(self, wanted: Mapping[ModelKey, set[str]]) -> None:
        """Remove the bindings of namespaces that are no longer a model's tenants (all of
        them, for a model that is gone)."""
        for key in list(self.existing.keys()):
            model_namespace, model = key
            for namespace in sorted(self._held(key) - wanted.get(key, set())):
                name = rbac.tenant_binding_name(model_namespace, model)
                try:
                    await self.client.delete(RoleBinding, name, namespace=namespace)
                except ApiError as error:
                    if error.status.code != 404:
                        log.warning(
                            "could not unbind %s/%s's sidecar in namespace %s: %s",
                            model_namespace,
                            model,
                            namespace,
                            error.status.message,
                        )
                    continue
                log.info(
                    "unbound %s/%s's sidecar in namespace %s", model_namespace, model, namespace
                )
