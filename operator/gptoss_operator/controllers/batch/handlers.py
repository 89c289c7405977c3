"""kopf handlers for InferenceBatch: every trigger funnels into one reconcile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import ApiError

from gptoss_operator.api.batch import FINISHED_PHASES, PLURAL
from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.api.job import model_key_of
from gptoss_operator.controllers.batch.status import batch_demand
from gptoss_operator.controllers.facts import BatchFacts
from gptoss_operator.core import naming

log = logging.getLogger(__name__)
# Shards' progress reports are folded into one status update per this many seconds.
PROGRESS_FOLD_SECONDS = 2.0
RESYNC_SECONDS = 30.0


@kopf.index(GROUP, VERSION, PLURAL)
async def open_batches(
    namespace: str | None,
    body: kopf.Body,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    **_: Any,
) -> dict[tuple[str, str], BatchFacts]:
    """Unfinished batches by (namespace, name) of their model: for the resync (a model
    appearing starts its batches), what they ask of the engine (the autoscaler), and
    their gateway keys (the model's status). A finished batch maps to nothing: an empty
    mapping, since kopf keeps an object's earlier entries when the function returns
    None."""
    if namespace is None or status.get("phase") in FINISHED_PHASES:
        return {}
    facts = BatchFacts.from_body(body, batch_demand(dict(spec), dict(status)))
    return {model_key_of(body): facts}


async def _reconcile(memo: Any, namespace: str | None, name: str) -> None:
    if namespace is None:
        return
    try:
        await memo.batches.reconcile(namespace, name)
    except ApiError as error:
        raise kopf.TemporaryError(f"apiserver: {error.status.message}", delay=5) from error


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
async def batch_created(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    memo.autoscaler.poke()  # a model at zero wakes for a batch as for a job
    await _reconcile(memo, namespace, name)


@kopf.on.field(GROUP, VERSION, PLURAL, field="status.gatewayKey")
@kopf.on.field(GROUP, VERSION, PLURAL, field="status.phase")
async def batch_keyed_or_finished(memo: Any, **_: Any) -> None:
    """The model's status lists its unfinished batches' keys: the housekeeping pass
    publishes a new key or drops a finished batch's."""
    memo.janitor.touch()


@kopf.on.field(GROUP, VERSION, PLURAL, field="status.shards")
async def batch_progressed(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    if namespace is not None:
        memo.batches.poke(namespace, name, PROGRESS_FOLD_SECONDS)


@kopf.on.event("batch", "v1", "jobs", labels={naming.BATCH_LABEL: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={naming.BATCH_LABEL: kopf.PRESENT})
async def batch_child_changed(
    labels: Mapping[str, str], namespace: str | None, memo: Any, **_: Any
) -> None:
    batch = labels.get(naming.BATCH_LABEL)
    if batch and namespace is not None:
        memo.batches.poke(namespace, batch, 0.2)


async def resync_forever(memo: Any, known: Mapping[tuple[str, str], Any]) -> None:
    """Reconcile every unfinished batch now and then: a batch waiting for its model has
    no child to wake it."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        for batches in list(known.values()):
            for batch in list(batches):
                memo.batches.poke(batch.namespace, batch.name, 0.0)
