"""What each tenant of each model used, as Prometheus counters: the tokens and jobs of
the InferenceJobs that finish while the operator runs (each counted once; the jobs that
had finished before it started are not, as a counter starts at zero), and the tokens of
the InferenceBatches it sees finish."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any

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
            if key in self._counted:
                continue
            self._counted.add(key)  # looked at once, counted or not
            finished = parse_time(job.completion_time)
            if finished is None or finished < self.started:
                continue
            counted += 1
            model_namespace, model = job.model_key
            labels = {
                "namespace": model_namespace,
                "model": model,
                "tenant": tenant_of(job),
                "job_namespace": job.namespace,
            }
            metrics.count("tenant_jobs", 1, phase=job.phase, **labels)
            count_tokens(labels, "job", job.prompt_tokens, job.completion_tokens)
        self._counted &= seen  # forget the jobs that are gone
        return counted


def count_tokens(labels: Mapping[str, str], source: str, prompt: int, completion: int) -> None:
    metrics.count("tenant_tokens", prompt, kind="prompt", source=source, **labels)
    metrics.count("tenant_tokens", completion, kind="completion", source=source, **labels)


def count_batch(
    model: tuple[str, str], tenant: str, namespace: str, usage: Mapping[str, Any]
) -> None:
    """The tokens of a batch that finished (its lines', as its status sums them)."""
    labels = {
        "namespace": model[0],
        "model": model[1],
        "tenant": tenant,
        "job_namespace": namespace,
    }
    prompt, completion = (int(usage.get(k) or 0) for k in ("promptTokens", "completionTokens"))
    count_tokens(labels, "batch", prompt, completion)
