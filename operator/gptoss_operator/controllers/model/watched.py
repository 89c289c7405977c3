"""Models and their children as the operator's watches last saw them.

The model's reconcile runs on every event of every child (claim, download Job and its
pods, Deployment and its pods). Reading the model and its children back from the
apiserver each time cost about six requests per event; these views answer from the
watches kopf keeps anyway. A view may lag a moment behind what the operator just wrote:
the next event brings another reconcile, anything created is created by name (a second
create is refused), and the status the reconcile wrote last is remembered a while
(``ModelReconciler``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gptoss_operator.core import kube, naming

Key = tuple[str, str]  # (namespace, model)
Index = Mapping[Key, Iterable[Mapping[str, Any]]]


def model_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]]:
    metadata = body.get("metadata") or {}
    return {(metadata.get("namespace") or "", metadata.get("name") or ""): dict(body)}


def child_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]] | None:
    """The index entry of a watched child: under its model, unless it is a batch's (a
    batch's Jobs and pods are not the model's) or names no model."""
    metadata = body.get("metadata") or {}
    labels = metadata.get("labels") or {}
    model = labels.get(naming.MODEL_LABEL)
    if not model or naming.BATCH_LABEL in labels:
        return None
    return {(metadata.get("namespace") or "", model): dict(body)}


def _matches(obj: Mapping[str, Any], selector: Mapping[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class Watched:
    """Read-only views of every model and, by kind, of its children. The views file
    children under the model their labels name; a child is the model's when the model
    is its controller (pods: when they carry its uid, or their Job's), so the children
    an earlier model of the same name left behind are never read as this one's."""

    models: Index
    claims: Index
    jobs: Index
    pods: Index
    deployments: Index

    @staticmethod
    def _filed(
        index: Index, namespace: str, model: str, keep: Callable[[Mapping[str, Any]], bool]
    ) -> list[dict[str, Any]]:
        """Copies of the objects filed under the model that ``keep`` keeps (a caller's
        change to what it read never reaches the view)."""
        return [dict(obj) for obj in index.get((namespace, model), ()) if keep(obj)]

    @staticmethod
    def _name(obj: Mapping[str, Any]) -> str | None:
        return (obj.get("metadata") or {}).get("name")

    def model(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self._filed(self.models, namespace, name, lambda m: self._name(m) == name)
        return found[0] if found else None

    def claim(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        """The claim ``manifest`` describes, if the one of its name is ours."""
        metadata = manifest["metadata"]
        model = metadata["labels"][naming.MODEL_LABEL]
        named = self._filed(
            self.claims, metadata["namespace"], model, lambda c: self._name(c) == metadata["name"]
        )
        return named[0] if named and kube.is_ours(manifest, named[0]) else None

    def deployment(self, namespace: str, model: str, uid: str) -> dict[str, Any] | None:
        """The model's Deployment: named for it and controlled by it."""
        name = naming.deployment_name(model)
        found = self._filed(
            self.deployments,
            namespace,
            model,
            lambda d: self._name(d) == name and kube.controlled_by(d, uid),
        )
        return found[0] if found else None

    def jobs_of(self, namespace: str, model: str, uid: str) -> list[dict[str, Any]]:
        """The Jobs the model with ``uid`` controls."""
        return self._filed(self.jobs, namespace, model, lambda j: kube.controlled_by(j, uid))

    def pods_of(
        self, namespace: str, model: str, selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return self._filed(self.pods, namespace, model, lambda p: _matches(p, selector))
