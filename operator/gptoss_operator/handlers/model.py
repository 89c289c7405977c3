"""kopf handlers for GptOssModel: every trigger funnels into one reconcile."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from lightkube import ApiError

from gptoss_operator import naming
from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.api.model import PLURAL
from gptoss_operator.kube import new_client
from gptoss_operator.model_reconciler import ModelReconciler
from gptoss_operator.settings import Settings

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()
MANAGED = {"app.kubernetes.io/managed-by": naming.MANAGED_BY}


def post_event(body: dict[str, Any], event_type: str, reason: str, message: str) -> None:
    kopf.event(cast(Any, body), type=event_type, reason=reason, message=message[:1024])


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "gptoss.ai/finalizer"
    settings.persistence.progress_storage = kopf.SmartProgressStorage(prefix="gptoss.ai")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="gptoss.ai", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.models = ModelReconciler(new_client(), SETTINGS, post_event)


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


@kopf.timer(GROUP, VERSION, PLURAL, interval=SETTINGS.resync_seconds, initial_delay=5)
async def model_resync(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    await _reconcile(memo, namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("", "v1", "pods", labels=MANAGED)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=MANAGED)
async def child_changed(
    labels: Mapping[str, str], namespace: str | None, memo: Any, **_: Any
) -> None:
    model = labels.get(naming.MODEL_LABEL)
    if not model or namespace is None:
        return
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
