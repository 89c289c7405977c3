"""A deep queue: memory of the operator and of a sidecar with thousands of InferenceJobs,
how long the operator takes to count them, and its CPU once they wait."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from jobs import STREAM_INTERVAL, _create_all, _delta, _drain, writes
from plane import Plane, cpu_seconds, rss_mb

from gptoss_operator.api.resources import GptOssModelResource
from gptoss_sandbox.standin_engine import StandinEngine


def _queued(world: Plane, namespace: str) -> int:
    model = world.kube.get(GptOssModelResource, "m", namespace=namespace).to_dict()
    return int(((model.get("status") or {}).get("queue") or {}).get("pending", 0))


def deep_queue(world: Plane, jobs: int, idle_seconds: float = 30) -> dict[str, Any]:
    """``jobs`` created at once for one Ready model with no sidecar; then one sidecar
    drains them (instant engine) while its memory is sampled."""
    world.restart_operator()  # a fresh process: its memory is this queue's
    time.sleep(5)
    namespace = world.namespace(f"queue-{jobs}")
    world.ready_model(namespace)
    operator = world.pids()["operator"]
    rss_before = rss_mb(operator)
    started = time.monotonic()
    asyncio.run(_create_all(world, namespace, [f"q-{i:05d}" for i in range(jobs)]))
    created = time.monotonic()
    after_create = writes(world)
    while _queued(world, namespace) < jobs and time.monotonic() - created < 600:
        time.sleep(0.2)
    counted = time.monotonic()
    # The jobs wait, which costs no write per job (the model's status.queue counts them).
    # Idle is measured from when the operator's CPU has settled.
    quiet_windows = 0
    deadline = time.monotonic() + 600
    while quiet_windows < 2 and time.monotonic() < deadline:
        before = cpu_seconds(operator)
        time.sleep(5)
        busy = (cpu_seconds(operator) - before) / 5
        quiet_windows = quiet_windows + 1 if busy < 0.05 else 0
    marked = time.monotonic()
    cpu_before = cpu_seconds(operator)
    time.sleep(idle_seconds)
    idle_cpu = (cpu_seconds(operator) - cpu_before) / idle_seconds * 100
    # Status writes to the waiting jobs from their creation until now (none is claimed).
    waiting_writes = _delta(after_create, writes(world)).get("inferencejobs", 0.0)
    operator_rss = rss_mb(operator)
    peak_sidecar = 0.0
    with StandinEngine(model="m", stream_interval=STREAM_INTERVAL) as engine:
        (sidecar,) = world.start_sidecars(namespace, 1, engine.url)
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak_sidecar
            while not sampling.is_set():
                try:
                    peak_sidecar = max(peak_sidecar, rss_mb(sidecar.pid))
                except FileNotFoundError:
                    return
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            first, last, finished = asyncio.run(_drain(world, namespace, jobs, timeout=1800))
        finally:
            sampling.set()
            sampler.join()
            world.stop_sidecars([sidecar])
    return {
        "operator_rss_mb": operator_rss,
        "operator_rss_mb_before": rss_before,
        "sidecar_rss_mb": peak_sidecar,
        "queue_create_seconds": created - started,
        "queue_settle_seconds": counted - created,
        "queue_settle_from_first_create_seconds": counted - started,
        "queue_marked_seconds": marked - created,
        "operator_idle_cpu_percent": idle_cpu,
        "status_writes_per_waiting_job": waiting_writes / jobs,
        "drain_jobs_per_second": finished / (last - first),
    }
