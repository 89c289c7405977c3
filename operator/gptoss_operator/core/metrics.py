"""Prometheus metrics of the operator, served at ``/metrics`` (text exposition format)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

COUNTERS: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
GAUGES: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}


def count(name: str, amount: int = 1, **labels: str) -> None:
    """Add to a counter (``name`` without the ``_total`` suffix)."""
    COUNTERS[(name, tuple(sorted(labels.items())))] += amount


def set_gauge(name: str, value: float | None, **labels: str) -> None:
    """Set a gauge (None removes the series)."""
    key = (name, tuple(sorted(labels.items())))
    if value is None:
        GAUGES.pop(key, None)
    else:
        GAUGES[key] = value


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    items = [f'{key}="{value}"' for key, value in pairs]
    return "{" + ",".join(items) + "}" if items else ""


def render(models: Mapping[Any, Iterable[Any]], jobs: Mapping[Any, Iterable[Any]]) -> str:
    lines = [
        "# HELP gptoss_models GptOssModels by phase.",
        "# TYPE gptoss_models gauge",
    ]
    phases: Counter[str] = Counter()
    for values in list(models.values()):
        for facts in values:
            phases[getattr(facts, "phase", "Unknown")] += 1
    lines += [f'gptoss_models{{phase="{phase}"}} {n}' for phase, n in sorted(phases.items())]
    lines += [
        "# HELP gptoss_inference_jobs InferenceJobs by phase.",
        "# TYPE gptoss_inference_jobs gauge",
    ]
    job_phases: Counter[str] = Counter()
    for values in list(jobs.values()):
        for facts in values:
            job_phases[getattr(facts, "phase", "Unknown")] += 1
    lines += [
        f'gptoss_inference_jobs{{phase="{phase}"}} {n}' for phase, n in sorted(job_phases.items())
    ]
    lines += _per_model(models, jobs)
    for name in sorted({name for name, _ in GAUGES}):
        lines += [f"# TYPE gptoss_{name} gauge"]
        for (gauge, labels), number in sorted(GAUGES.items()):
            if gauge == name:
                lines.append(f"gptoss_{name}{_labels(labels)} {number:g}")
    names = sorted({name for name, _ in COUNTERS})
    for name in names:
        lines += [f"# TYPE gptoss_{name}_total counter"]
        for (counter, labels), value in sorted(COUNTERS.items()):
            if counter == name:
                lines.append(f"gptoss_{name}_total{_labels(labels)} {value}")
    return "\n".join(lines) + "\n"


def _per_model(models: Mapping[Any, Iterable[Any]], jobs: Mapping[Any, Iterable[Any]]) -> list[str]:
    """Queue depth and replicas per model: what an autoscaler of one's own would read."""
    queue: list[str] = []
    replicas: list[str] = []
    ready: list[str] = []
    for key, values in sorted(list(models.items())):
        facts = next(iter(values), None)
        if facts is None:
            continue
        namespace, model = key
        labels = f'model="{model}",namespace="{namespace}"'
        phases = Counter(getattr(job, "phase", "") for job in list(jobs.get(key, [])))
        for state in ("Pending", "Running"):
            queue.append(f'gptoss_model_queue{{{labels},phase="{state}"}} {phases[state]}')
        replicas.append(f"gptoss_model_replicas{{{labels}}} {facts.replicas or 0}")
        ready.append(f"gptoss_model_ready_replicas{{{labels}}} {facts.ready_replicas}")
    return [
        "# HELP gptoss_model_queue InferenceJobs of each model waiting or running.",
        "# TYPE gptoss_model_queue gauge",
        *queue,
        "# HELP gptoss_model_replicas vLLM pods the operator asks for per model.",
        "# TYPE gptoss_model_replicas gauge",
        *replicas,
        "# HELP gptoss_model_ready_replicas vLLM pods ready per model.",
        "# TYPE gptoss_model_ready_replicas gauge",
        *ready,
    ]


async def start_server(
    port: int, source: Callable[[], tuple[Mapping[Any, Any], Mapping[Any, Any]]]
) -> web.AppRunner:
    async def handle(_: web.Request) -> web.Response:
        models, jobs = source()
        return web.Response(text=render(models, jobs), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    log.info("metrics on :%d/metrics", port)
    return runner
