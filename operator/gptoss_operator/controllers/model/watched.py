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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gptoss_operator.core import naming

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
    """Read-only views of every model and, by kind, of its children."""

    models: Index
    claims: Index
    jobs: Index
    pods: Index
    deployments: Index

    @staticmethod
    def _select(
        index: Index, namespace: str, model: str, selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return [dict(obj) for obj in index.get((namespace, model), ()) if _matches(obj, selector)]

    @staticmethod
    def _named(index: Index, namespace: str, model: str, name: str) -> dict[str, Any] | None:
        for obj in index.get((namespace, model), ()):
            if (obj.get("metadata") or {}).get("name") == name:
                return dict(obj)
        return None

    def model(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._named(self.models, namespace, name, name)

    def claim(self, namespace: str, model: str, name: str) -> dict[str, Any] | None:
        return self._named(self.claims, namespace, model, name)

    def deployment(self, namespace: str, model: str, name: str) -> dict[str, Any] | None:
        return self._named(self.deployments, namespace, model, name)

    def jobs_of(
        self, namespace: str, model: str, selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return self._select(self.jobs, namespace, model, selector)

    def pods_of(
        self, namespace: str, model: str, selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return self._select(self.pods, namespace, model, selector)
