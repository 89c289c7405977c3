"""What each tenant of each model used, as Prometheus counters: the tokens and jobs of
the InferenceJobs that finish while the operator runs (each counted once; the jobs that
had finished before it started are not, as a counter starts at zero)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable

from gptoss_operator.api.conditions import parse_time
from gptoss_operator.api.job import FINISHED_PHASES
from gptoss_operator.controllers.facts import JobFacts
from gptoss_operator.core import metrics


class UsageMeter:
    def __init__(self, started: datetime.datetime) -> None:
        self.started = started
        self._counted: set[tuple[str, str, str]] = set()

    def observe(self, jobs: Iterable[JobFacts], tenant_of: Callable[[JobFacts], str]) -> int:
        """Count the jobs that finished since the operator started and were not counted
        yet; returns how many it counted now."""
        seen: set[tuple[str, str, str]] = set()
        counted = 0
        for job in jobs:
            if job.phase not in FINISHED_PHASES or not job.completion_time:
                continue
            key = (job.namespace, job.name, job.completion_time)
            seen.add(key)
            finished = parse_time(job.completion_time)
            if key in self._counted or finished is None or finished < self.started:
                continue
            self._counted.add(key)
            counted += 1
            model_namespace, model = job.model_key
            labels = {
                "namespace": model_namespace,
                "model": model,
                "tenant": tenant_of(job),
                "job_namespace": job.namespace,
            }
            metrics.count("tenant_jobs", 1, phase=job.phase, **labels)
            metrics.count("tenant_tokens", job.prompt_tokens, kind="prompt", **labels)
            metrics.count("tenant_tokens", job.completion_tokens, kind="completion", **labels)
        self._counted &= seen  # forget the jobs that are gone
        return counted
