"""The operator as one process: importing this module registers every kind's handlers and
the indexes with kopf; at startup it builds the controllers over one client and the
shared indexes, wires the autoscaler between the models and their queues, and starts the
loops; at cleanup it stops them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from gptoss_operator.api import job as job_api
from gptoss_operator.api import model as model_api
from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.controllers import indexes  # noqa: F401 - registers the indexes
from gptoss_operator.controllers.autoscale.engine_load import EngineLoads
from gptoss_operator.controllers.autoscale.scaler import Autoscaler
from gptoss_operator.controllers.batch import handlers as batch_handlers
from gptoss_operator.controllers.batch.reconciler import BatchReconciler
from gptoss_operator.controllers.job.janitor import JobJanitor
from gptoss_operator.controllers.model import handlers as model_handlers  # noqa: F401
from gptoss_operator.controllers.model.reconciler import ModelReconciler
from gptoss_operator.controllers.model.watched import Watched
from gptoss_operator.controllers.tenancy import TenantBindings, batch_identities, sidecar_bindings
from gptoss_operator.core.events import post_event
from gptoss_operator.core.kube import new_client
from gptoss_operator.core.metrics import start_server
from gptoss_operator.core.settings import Settings

log = logging.getLogger(__name__)
SETTINGS = Settings.from_env()
LOOPS = ("model_resync", "autoscaling", "engine_loads", "batch_resync", "job_housekeeping")


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
    # Set by the first handler call (kopf calls handlers once it has filled every index):
    # what reads the indexes waits for it.
    memo.indexed = asyncio.Event()
    client = new_client()

    async def emit(body: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        await post_event(client, body, event_type, reason, message)

    jobs, models = kwargs["inference_jobs"], kwargs["model_phases"]
    memo.autoscaler = Autoscaler(
        jobs, models, SETTINGS.autoscale_seconds, emit, batches=kwargs["open_batches"]
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
        _resync_models_forever(memo.models, models, SETTINGS.resync_seconds)
    )
    memo.autoscaling = asyncio.create_task(memo.autoscaler.run_forever())
    memo.batches = BatchReconciler(client, SETTINGS, emit)
    memo.batch_resync = asyncio.create_task(
        batch_handlers.resync_forever(memo, kwargs["open_batches"])
    )
    if SETTINGS.autoscale_engine_metrics:
        loads = EngineLoads(
            kwargs["server_pods"], lambda: list(memo.autoscaler.states), SETTINGS.autoscale_seconds
        )
        memo.autoscaler.engine_loads = loads
        memo.engine_loads = asyncio.create_task(loads.run_forever())
    tenants = TenantBindings(
        client, sidecar_bindings(SETTINGS.sidecar_tenant_cluster_role), kwargs["tenant_bindings"]
    )
    shard_identities = TenantBindings(
        client,
        batch_identities(SETTINGS.batch_worker_cluster_role),
        kwargs["tenant_batch_identities"],
        what="batch shards",
    )
    memo.janitor = JobJanitor(
        new_client(),
        jobs,
        models,
        SETTINGS.job_housekeeping_seconds,
        memo.indexed,
        tenants=tenants,
        batches=kwargs["open_batches"],
        batch_identities=shard_identities,
    )
    memo.job_housekeeping = asyncio.create_task(memo.janitor.run_forever())
    if SETTINGS.metrics_port:
        memo.metrics = await start_server(SETTINGS.metrics_port, lambda: (models, jobs))


async def _resync_models_forever(
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


@kopf.on.event(GROUP, VERSION, job_api.PLURAL)
@kopf.on.event(GROUP, VERSION, model_api.PLURAL)
async def indexes_filled(memo: Any, **_: Any) -> None:
    """kopf calls handlers only once every index holds its initial listing: the first
    call opens the loops that read them. Any change may matter to the job housekeeping
    (it looks at the jobs again) and to the autoscaler (a job for a model at zero wakes
    it)."""
    memo.indexed.set()
    memo.janitor.touch()
    memo.autoscaler.poke()


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    for name in LOOPS:
        task = memo.get(name)
        if task is not None:
            task.cancel()
    runner = memo.get("metrics")
    if runner is not None:
        await runner.cleanup()
