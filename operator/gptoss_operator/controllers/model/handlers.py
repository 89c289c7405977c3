"""kopf handlers for GptOssModel: every trigger funnels into one reconcile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import ApiError

from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.api.model import PLURAL
from gptoss_operator.controllers import indexes  # importing registers the indexes
from gptoss_operator.controllers.autoscale.engine_load import EngineLoads
from gptoss_operator.controllers.autoscale.scaler import Autoscaler
from gptoss_operator.controllers.batch import handlers as batch  # and the batch handlers
from gptoss_operator.controllers.batch.reconciler import BatchReconciler
from gptoss_operator.controllers.model.reconciler import ModelReconciler
from gptoss_operator.controllers.model.watched import Watched
from gptoss_operator.core import naming
from gptoss_operator.core.events import post_event
from gptoss_operator.core.kube import new_client
from gptoss_operator.core.settings import Settings

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    settings.persistence.finalizer = "gptoss.ai/finalizer"
    settings.persistence.progress_storage = kopf.SmartProgressStorage(prefix="gptoss.ai")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="gptoss.ai", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    client = new_client()

    async def emit(body: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        await post_event(client, body, event_type, reason, message)

    memo.autoscaler = Autoscaler(
        kwargs["inference_jobs"],
        kwargs["model_phases"],
        SETTINGS.autoscale_seconds,
        emit,
        batches=kwargs["open_batches"],
    )
    views = Watched(
        models=kwargs["model_bodies"],
        claims=kwargs["model_claims"],
        jobs=kwargs["model_jobs"],
        pods=kwargs["model_pods"],
        deployments=kwargs["model_deployments"],
    )
    memo.models = ModelReconciler(client, SETTINGS, emit, views, memo.autoscaler, memo.indexed)
    memo.autoscaler.apply = memo.models.reconcile
    memo.model_resync = asyncio.create_task(
        _resync_forever(memo.models, kwargs["model_phases"], SETTINGS.resync_seconds)
    )
    memo.autoscaling = asyncio.create_task(memo.autoscaler.run_forever())
    memo.batches = BatchReconciler(client, SETTINGS, emit)
    memo.batch_resync = asyncio.create_task(batch.resync_forever(memo, kwargs["open_batches"]))
    if SETTINGS.autoscale_engine_metrics:
        loads = EngineLoads(
            kwargs["server_pods"], lambda: list(memo.autoscaler.states), SETTINGS.autoscale_seconds
        )
        memo.autoscaler.engine_loads = loads
        memo.engine_loads = asyncio.create_task(loads.run_forever())


async def _resync_forever(
    models: ModelReconciler, known: Mapping[tuple[str, str], Any], interval: float
) -> None:
    """Reconcile every model periodically, besides the event-driven reconciles. (A loop
    of the operator's own rather than a kopf timer: timers put finalizers on objects,
    which would block deleting models while the operator is not running.)"""
    while True:
        await asyncio.sleep(interval)
        for namespace, name in list(known.keys()):
            try:
                await models.reconcile(namespace, name)
            except Exception as error:
                log.warning("resync of %s/%s failed: %s", namespace, name, error)


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    for name in ("model_resync", "autoscaling", "engine_loads", "batch_resync"):
        task = memo.get(name)
        if task is not None:
            task.cancel()


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


@kopf.on.event("batch", "v1", "jobs", labels=indexes.MANAGED)
@kopf.on.event("apps", "v1", "deployments", labels=indexes.MANAGED)
@kopf.on.event("", "v1", "pods", labels=indexes.MANAGED)
@kopf.on.event("", "v1", "persistentvolumeclaims", labels=indexes.MANAGED)
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
