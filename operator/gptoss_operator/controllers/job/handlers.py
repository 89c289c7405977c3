"""kopf wiring for InferenceJobs: the housekeeping loop (see
``gptoss_operator.controllers.job.janitor``) that acts on the in-memory indexes, and the
metrics endpoint."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf

from gptoss_operator.api import job as job_api
from gptoss_operator.api import model as model_api
from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.controllers import indexes  # noqa: F401 - registers the indexes
from gptoss_operator.controllers.job.janitor import JobJanitor
from gptoss_operator.core.kube import new_client
from gptoss_operator.core.metrics import start_server
from gptoss_operator.core.settings import Settings

INTERVAL = float(os.environ.get("GPTOSS_JOB_HOUSEKEEPING_SECONDS", "1"))


@kopf.on.startup()
async def start_housekeeping(memo: Any, **kwargs: Any) -> None:
    jobs, models = kwargs["inference_jobs"], kwargs["model_phases"]
    memo.janitor = JobJanitor(new_client(), jobs, models, INTERVAL, memo.indexed)
    memo.job_housekeeping = asyncio.create_task(memo.janitor.run_forever())
    port = Settings.from_env().metrics_port
    if port:
        memo.metrics = await start_server(port, lambda: (models, jobs))


@kopf.on.event(GROUP, VERSION, job_api.PLURAL)
@kopf.on.event(GROUP, VERSION, model_api.PLURAL)
async def indexes_filled(memo: Any, **_: Any) -> None:
    """kopf calls handlers only once every index holds its initial listing: the first
    call opens the housekeeping loop. (With no object at all there is nothing to keep.)
    Any change may matter to the housekeeping (it looks at the jobs again) and to the
    autoscaler (a job for a model at zero wakes it)."""
    memo.indexed.set()
    janitor = memo.get("janitor")
    if janitor is not None:
        janitor.touch()
    autoscaler = memo.get("autoscaler")
    if autoscaler is not None:
        autoscaler.poke()


@kopf.on.cleanup()
async def stop_housekeeping(memo: Any, **_: Any) -> None:
    task = memo.get("job_housekeeping")
    if task is not None:
        task.cancel()
    runner = memo.get("metrics")
    if runner is not None:
        await runner.cleanup()
