"""kopf wiring for InferenceJobs: in-memory indexes of jobs and models, and the
housekeeping loop that acts on them (see ``gptoss_operator.job_janitor``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf

from gptoss_operator.api import job as job_api
from gptoss_operator.api import model as model_api
from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.job_janitor import JobFacts, JobJanitor
from gptoss_operator.kube import new_client

INTERVAL = float(os.environ.get("GPTOSS_JOB_HOUSEKEEPING_SECONDS", "1"))


@kopf.index(GROUP, VERSION, job_api.PLURAL)
def inference_jobs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], JobFacts]:
    facts = JobFacts.from_body(body)
    return {(facts.namespace, facts.model): facts}


@kopf.index(GROUP, VERSION, model_api.PLURAL)
def model_phases(
    namespace: str | None, name: str, status: kopf.Status, **_: Any
) -> dict[tuple[str, str], str]:
    return {(namespace or "", name): str(status.get("phase") or model_api.Phase.PENDING.value)}


@kopf.on.startup()
async def start_housekeeping(memo: Any, **kwargs: Any) -> None:
    janitor = JobJanitor(new_client(), kwargs["inference_jobs"], kwargs["model_phases"], INTERVAL)
    memo.job_housekeeping = asyncio.create_task(janitor.run_forever())


@kopf.on.cleanup()
async def stop_housekeeping(memo: Any, **_: Any) -> None:
    task = memo.get("job_housekeeping")
    if task is not None:
        task.cancel()
