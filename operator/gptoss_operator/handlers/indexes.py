"""In-memory indexes kopf keeps from its watches: no API reads to look things up."""

from __future__ import annotations

from typing import Any

import kopf

from gptoss_operator.api import job as job_api
from gptoss_operator.api import model as model_api
from gptoss_operator.api.common import GROUP, VERSION
from gptoss_operator.job_janitor import JobFacts, ModelFacts


@kopf.index(GROUP, VERSION, job_api.PLURAL)
def inference_jobs(body: kopf.Body, **_: Any) -> dict[tuple[str, str], JobFacts]:
    """(namespace, model) -> facts of each InferenceJob for that model."""
    facts = JobFacts.from_body(body)
    return {(facts.namespace, facts.model): facts}


@kopf.index(GROUP, VERSION, model_api.PLURAL)
def model_phases(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], ModelFacts]:
    """(namespace, name) -> phase, replicas and autoscaling policy of each GptOssModel."""
    return {(namespace or "", name): ModelFacts.from_body(body)}
