"""A model's children as the operator's watches last saw them.

The model's reconcile runs on every event of every child (claim, download Job and its
pods, Deployment and its pods). Reading the children back from the apiserver each time
cost about six requests per event; these views answer from the watches kopf keeps anyway.
A view may lag a moment behind what the operator just wrote: the next event brings
another reconcile, and anything created is created by name (a second create is refused).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gptoss_operator import naming

Key = tuple[str, str]  # (namespace, model)
ChildIndex = Mapping[Key, Iterable[Mapping[str, Any]]]


def index_entry(body: Mapping[str, Any]) -> dict[Key, dict[str, Any]] | None:
    """The index entry of one watched object: under its model, unless it is a batch's
    (a batch's Jobs and pods are not the model's) or names no model."""
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
class Children:
    """Read-only views, by kind, of every model's children."""

    claims: ChildIndex
    jobs: ChildIndex
    pods: ChildIndex
    deployments: ChildIndex

    @staticmethod
    def _select(
        index: ChildIndex, namespace: str, model: str, selector: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        return [dict(obj) for obj in index.get((namespace, model), ()) if _matches(obj, selector)]

    @staticmethod
    def _named(index: ChildIndex, namespace: str, model: str, name: str) -> dict[str, Any] | None:
        for obj in index.get((namespace, model), ()):
            if (obj.get("metadata") or {}).get("name") == name:
                return dict(obj)
        return None

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
