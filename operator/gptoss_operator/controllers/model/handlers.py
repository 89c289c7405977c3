"""kopf handlers for GptOssModel: every trigger funnels into one reconcile (the
reconciler is built in ``gptoss_operator.controllers.operator``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import ApiError

from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.api.model import PLURAL
from gptoss_operator.core import naming

log = logging.getLogger(__name__)


async def _reconcile(memo: Any, namespace: str | None, name: str) -> None:
    if namespace is None:
        return
    try:
        await memo.models.reconcile(namespace, name)
    except ApiError as error:
        raise kopf.TemporaryError(f"apiserver: {error.status.message}", delay=5) from error


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def model_changed(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    await _reconcile(memo, namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=naming.MANAGED)
@kopf.on.event("apps", "v1", "deployments", labels=naming.MANAGED)
@kopf.on.event("", "v1", "pods", labels=naming.MANAGED)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=naming.MANAGED)
async def child_changed(
    labels: Mapping[str, str], namespace: str | None, memo: Any, type: str, **_: Any
) -> None:
    model = labels.get(naming.MODEL_LABEL)
    if not model or namespace is None or naming.BATCH_LABEL in labels:
        return  # not the model's own (a batch's Jobs and pods are the batch's)
    memo.indexed.set()  # kopf calls handlers once its indexes are filled
    if type == "DELETED":
        memo.models.forget(namespace, model)
    try:
        await memo.models.reconcile(namespace, model)
    except ApiError as error:
        if error.status.code == 404 or "being terminated" in (error.status.message or ""):
            return  # the model or its namespace is going away
        log.warning(
            "reconcile of %s/%s after a child's change failed: %s",
            namespace,
            model,
            error.status.message,
        )
