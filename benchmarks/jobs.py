"""InferenceJob figures on the local control plane with the stand-in engine: overhead per
job at an offered load, throughput by number of sidecars with where the CPU goes, and
apiserver writes per job."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from plane import Plane, cpu_seconds, job_manifest

from gptoss_operator.api.resources import InferenceJobResource
from gptoss_sandbox.cluster import stop_process
from gptoss_sandbox.standin_engine import StandinEngine

FINISHED = ("Succeeded", "Failed")
# Tokens per streamed chunk, as the Deployment runs vLLM on the GPU profiles
# (--stream-interval 20, the gpt-oss recipe).
STREAM_INTERVAL = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _watch_finished(client: AsyncClient, namespace: str, done: dict[str, float],
                          phases: dict[str, str]) -> None:
    """Records when each job was first seen finished (this process's monotonic clock)."""
    while True:
        async for _, obj in client.watch(InferenceJobResource, namespace=namespace):
            status = obj.to_dict().get("status") or {}
            name = obj.metadata.name
            if status.get("phase") in FINISHED and name not in done:
                done[name] = time.monotonic()
                phases[name] = status["phase"]


async def _offered_load(world: Plane, namespace: str, rate: float, count: int,
                        engine: StandinEngine) -> dict[str, Any]:
    client = AsyncClient(world.kube.config, field_manager="bench")
    done: dict[str, float] = {}
    phases: dict[str, str] = {}
    watcher = asyncio.create_task(_watch_finished(client, namespace, done, phases))
    await asyncio.sleep(1.0)
    sent: dict[str, float] = {}
    creates = []
    start = time.monotonic()
    for index in range(count):
        target = start + index / rate
        await asyncio.sleep(max(0.0, target - time.monotonic()))
        name = f"r{int(rate)}-{index:05d}"
        sent[name] = time.monotonic()
        creates.append(asyncio.create_task(
            client.create(job_manifest(name), namespace=namespace)))
    await asyncio.gather(*creates)
    offered = count / (time.monotonic() - start)
    deadline = time.monotonic() + 300
    while len(done) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    watcher.cancel()
    await client.close()
    engine_ms = statistics.median(engine.request_seconds) * 1000
    overhead = [(done[n] - sent[n]) * 1000 - engine_ms for n in sent if n in done]
    return {
        "p50": percentile(overhead, 50), "p95": percentile(overhead, 95),
        "p99": percentile(overhead, 99), "offered_rate": offered,
        "finished": len(done), "failed": sum(p == "Failed" for p in phases.values()),
        "engine_ms": engine_ms,
    }


def job_overhead(world: Plane, rate: int, count: int) -> dict[str, Any]:
    """create → Succeeded as the user's watch sees it, minus the engine's median time per
    request, at ``rate`` jobs/s; one sidecar, instant engine."""
    namespace = world.namespace(f"overhead-{rate}")
    world.ready_model(namespace)
    with StandinEngine(model="m", stream_interval=STREAM_INTERVAL) as engine:
        sidecars = world.start_sidecars(namespace, 1, engine.url)
        try:
            time.sleep(3)  # the sidecar's watch is up
            return asyncio.run(_offered_load(world, namespace, rate, count, engine))
        finally:
            world.stop_sidecars(sidecars)


async def _create_all(world: Plane, namespace: str, names: list[str]) -> None:
    async with AsyncClient(world.kube.config, field_manager="bench") as client:
        queue = list(names)

        async def worker() -> None:
            while queue:
                await client.create(job_manifest(queue.pop()), namespace=namespace)

        await asyncio.gather(*(worker() for _ in range(16)))


async def _drain(world: Plane, namespace: str, count: int,
                 timeout: float = 600) -> tuple[float, float, int]:
    """(first job seen running or done, last job done, jobs done) on this clock."""
    first: list[float] = []
    done: dict[str, float] = {}
    client = AsyncClient(world.kube.config, field_manager="bench")

    async def watch() -> None:
        async for _, obj in client.watch(InferenceJobResource, namespace=namespace):
            phase = (obj.to_dict().get("status") or {}).get("phase")
            if phase in ("Running", *FINISHED) and not first:
                first.append(time.monotonic())
            if phase in FINISHED:
                done.setdefault(obj.metadata.name, time.monotonic())

    watcher = asyncio.create_task(watch())
    deadline = time.monotonic() + timeout
    while len(done) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    watcher.cancel()
    await client.close()
    return first[0], max(done.values()), len(done)


def _queue(world: Plane, prefix: str, count: int) -> str:
    """A namespace with a Ready model and ``count`` jobs that wait for a worker."""
    namespace = world.namespace(prefix)
    world.ready_model(namespace)
    asyncio.run(_create_all(world, namespace, [f"q-{index:05d}" for index in range(count)]))
    time.sleep(8)  # the operator has marked them all Queued: a queue that waits
    return namespace


def _drained_by(world: Plane, namespace: str, count: int, what: str,
                start: Callable[[], list[subprocess.Popen[bytes]]],
                stop: Callable[[list[subprocess.Popen[bytes]]], None]) -> dict[str, Any]:
    """The queue drained by the processes ``start`` makes: jobs/s from the first claim to
    the last answer, and CPU seconds of every process per 1,000 jobs over that window
    (``what``: the drainers' own)."""
    before = {name: cpu_seconds(pid) for name, pid in world.pids().items()}
    processes = start()
    try:
        first, last, finished = asyncio.run(_drain(world, namespace, count))
        after = {name: cpu_seconds(pid) for name, pid in world.pids().items()}
        own = sum(cpu_seconds(p.pid) for p in processes)
    finally:
        stop(processes)
    cpu = {name: (after[name] - before[name]) / finished * 1000 for name in before}
    cpu[what] = own / finished * 1000
    return {"jobs_per_second": finished / (last - first), "finished": finished,
            "cpu_seconds_per_1000_jobs": cpu}


def throughput(world: Plane, sidecars: int, count: int) -> dict[str, Any]:
    """A queue of ``count`` jobs created first, then drained by ``sidecars`` sidecars
    against the instant stand-in engine."""
    namespace = _queue(world, f"throughput-{sidecars}", count)
    with StandinEngine(model="m", stream_interval=STREAM_INTERVAL) as engine:
        return _drained_by(world, namespace, count, "sidecars",
                           lambda: world.start_sidecars(namespace, sidecars, engine.url),
                           world.stop_sidecars)


def apiserver_ceiling(world: Plane, workers: int, count: int) -> dict[str, Any]:
    """The throughput benchmark with bare workers (benchmarks/ceiling_worker.py) in place
    of the sidecars: the same queue, the same writes and watches per job, no product
    logic. What the apiserver and the box allow; throughput reads as a fraction of it."""
    namespace = _queue(world, f"ceiling-{workers}", count)
    script = str(Path(__file__).resolve().parent / "ceiling_worker.py")
    env = {**os.environ, "KUBECONFIG": str(world.cluster.kubeconfig)}

    def start() -> list[subprocess.Popen[bytes]]:
        return [subprocess.Popen([sys.executable, script, namespace, "m", str(i), str(workers)],
                                 env=env)
                for i in range(workers)]

    def stop(processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            stop_process(process, grace=5)

    return _drained_by(world, namespace, count, "workers", start, stop)


WRITE = re.compile(
    r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$', re.MULTILINE)


def writes(world: Plane) -> dict[str, float]:
    """Write requests the apiserver has served so far, by resource."""
    totals: dict[str, float] = {}
    for match in WRITE.finditer(world.apiserver_metrics()):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") in ("POST", "PUT", "PATCH", "DELETE", "APPLY"):
            key = labels.get("resource", "?")
            totals[key] = totals.get(key, 0.0) + float(match["value"])
    return totals


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after
            if after.get(k, 0.0) != before.get(k, 0.0)}


def apiserver_writes(world: Plane, jobs: int = 20, long_seconds: float = 30) -> dict[str, Any]:
    """Writes per short job (one at a time, ends before its first heartbeat) besides the
    user's create, and per minute of a long job; the control plane's own writes over an
    idle window of the same length are subtracted."""
    namespace = world.namespace("writes")
    world.ready_model(namespace)
    with StandinEngine(model="m", stream_interval=STREAM_INTERVAL) as engine:
        sidecars = world.start_sidecars(namespace, 1, engine.url)
        try:
            time.sleep(3)
            idle_before = writes(world)
            time.sleep(10)
            idle = _delta(idle_before, writes(world))
            idle_per_second = sum(v for k, v in idle.items() if k != "inferencejobs") / 10

            async def one_at_a_time() -> None:
                async with AsyncClient(world.kube.config, field_manager="bench") as client:
                    for index in range(jobs):
                        name = f"w-{index:03d}"
                        await client.create(job_manifest(name), namespace=namespace)
                        while True:
                            got = await client.get(InferenceJobResource, name,
                                                   namespace=namespace)
                            if (got.to_dict().get("status") or {}).get("phase") in FINISHED:
                                break
                            await asyncio.sleep(0.05)

            before, started = writes(world), time.monotonic()
            asyncio.run(one_at_a_time())
            elapsed = time.monotonic() - started
            short = _delta(before, writes(world))
            # A long job: the stand-in streams slowly for long_seconds.
            engine.token_delay = long_seconds / 40
            before, started = writes(world), time.monotonic()

            async def long_job() -> None:
                async with AsyncClient(world.kube.config, field_manager="bench") as client:
                    await client.create(job_manifest("long", max_tokens=40), namespace=namespace)
                    while True:
                        got = await client.get(InferenceJobResource, "long", namespace=namespace)
                        if (got.to_dict().get("status") or {}).get("phase") in FINISHED:
                            return
                        await asyncio.sleep(0.5)

            asyncio.run(long_job())
            long_elapsed = time.monotonic() - started
            long = _delta(before, writes(world))
        finally:
            world.stop_sidecars(sidecars)
    job_writes = short.get("inferencejobs", 0.0) / jobs - 1  # the user's create
    other = sum(v for k, v in short.items() if k != "inferencejobs")
    return {
        "short_job": job_writes,
        "short_job_other_resources": max(0.0, other - idle_per_second * elapsed) / jobs,
        "short_job_by_resource": {k: v / jobs for k, v in short.items()},
        "long_job_per_minute": (long.get("inferencejobs", 0.0) - 1) / long_elapsed * 60,
        "long_job_seconds": long_elapsed,
    }
