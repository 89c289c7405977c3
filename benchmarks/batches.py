"""InferenceBatch figures on the local control plane: a large batch through the instant
stand-in (lines/s, memory of every process, apiserver writes for the whole batch), and
engine efficiency: batch output tokens/s over the same requests sent straight to the same
server at the same concurrency, on the stand-in at an H100's decode rate and on the real
vLLM CPU server.

The batch's pods are run by a kubelet stand-in (``batch_processes.BatchPods``, used by no
test): the real ``gptoss-batch`` workers, with the model's batch identity, against the
given engine. The tests run batch pods on the real node."""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from batch_processes import BatchPods
from engines import H100_SECONDS_PER_TOKEN, completion_tokens
from jobs import STREAM_INTERVAL, writes
from plane import Plane, rss_mb
from tests.cluster.chart_helpers import token_kubeconfig
from tests.cluster.test_inference_batches import create_claim

from gptoss_operator.api.resources import InferenceBatchResource
from gptoss_operator.engine.harmony import ChatMessage, Harmony
from gptoss_sandbox.standin_engine import StandinEngine

FINISHED = ("Succeeded", "Failed")


def _question(index: int) -> str:
    return f"Batch question {index}: tell me about the number {index * 7919}"


def _write_input(path: Path, lines: int, max_tokens: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for index in range(1, lines + 1):
            body: dict[str, Any] = {"messages": [{"role": "user", "content": _question(index)}]}
            if max_tokens is not None:
                body["max_completion_tokens"] = max_tokens
            out.write(json.dumps({"custom_id": f"r{index}", "method": "POST",
                                  "url": "/v1/chat/completions", "body": body}) + "\n")


class _Sampler:
    """Peak RSS of the plane's processes and of every batch worker, sampled twice a second."""

    def __init__(self, world: Plane, kubelet: BatchPods) -> None:
        self.world, self.kubelet = world, kubelet
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            pids = dict(self.world.pids())
            for name, (process, _, _) in list(self.kubelet.processes.items()):
                kind = "merge_worker" if "-merge-" in name else "shard_worker"
                pids[f"{kind}:{name}"] = process.pid
            for name, pid in pids.items():
                try:
                    value = rss_mb(pid)
                except OSError:
                    continue
                key = name.split(":", 1)[0]
                self.peaks[key] = max(self.peaks.get(key, 0.0), value)


def _run_batch(world: Plane, namespace: str, engine_url: str, lines: int, shards: int,
               requests_per_shard: int, max_tokens: int | None = None,
               ) -> tuple[dict[str, Any], float, dict[str, float], dict[str, float]]:
    """One batch, start to finish: (status, seconds, write delta, peak RSS MB)."""
    work = Path(tempfile.mkdtemp(prefix="gptoss-bench-batch-"))
    _write_input(work / "data" / "in.jsonl", lines, max_tokens)
    create_claim(world.kube, namespace, "data")
    account = "m-batch"
    kubeconfig = token_kubeconfig(SimpleNamespace(kubeconfig=world.cluster.kubeconfig),
                                  world.kube, namespace, account, work / "batch.kubeconfig")
    (work / "logs").mkdir()
    before = writes(world)
    with BatchPods(world.kube, namespace, kubeconfig, engine_url, {"data": work / "data"},
                   work / "logs") as kubelet, _Sampler(world, kubelet) as sampler:
        started = time.monotonic()
        world.kube.create(InferenceBatchResource.from_dict({
            "apiVersion": "gptoss.ai/v1alpha1", "kind": "InferenceBatch",
            "metadata": {"name": "bench"},
            "spec": {"modelRef": {"name": "m"}, "shards": shards,
                     "requestsPerShard": requests_per_shard,
                     "input": {"volume": {"claimName": "data", "path": "in.jsonl"}},
                     "output": {"volume": {"claimName": "data", "path": "out"}}}}),
            namespace=namespace)
        while True:
            status = world.kube.get(InferenceBatchResource, "bench",
                                    namespace=namespace).to_dict().get("status") or {}
            if status.get("phase") in FINISHED:
                break
            time.sleep(0.5)
        seconds = time.monotonic() - started
    after = writes(world)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after
             if after.get(k, 0.0) != before.get(k, 0.0)}
    if status.get("phase") != "Succeeded":
        raise RuntimeError(f"the batch failed: {status.get('message')}")
    return status, seconds, delta, sampler.peaks


def standin_scale(world: Plane, lines: int = 100_000, shards: int = 4,
                  requests_per_shard: int = 64) -> dict[str, Any]:
    namespace = world.namespace("batch-scale")
    world.ready_model(namespace)
    with StandinEngine(model="m", stream_interval=STREAM_INTERVAL) as engine:
        status, seconds, delta, peaks = _run_batch(world, namespace, engine.url, lines,
                                                   shards, requests_per_shard)
        asked = engine.requests_served
    counts = status["counts"]
    return {
        "lines": lines, "shards": shards, "requests_per_shard": requests_per_shard,
        "seconds": round(seconds, 1),
        "lines_per_second": round(lines / seconds, 1),
        "succeeded": counts["succeeded"], "failed": counts["failed"],
        "engine_requests": asked,
        "apiserver_writes": round(sum(delta.values())),
        "apiserver_writes_by_resource": {k: round(v) for k, v in sorted(delta.items())},
        "peak_rss_mb": {k: round(v, 1) for k, v in sorted(peaks.items())},
    }


async def _direct(url: str, count: int, concurrency: int, max_tokens: int,
                  headers: dict[str, str]) -> tuple[int, float]:
    """The same requests sent straight to the engine, ``concurrency`` at a time."""
    harmony = Harmony()
    prompts = [harmony.render([ChatMessage("user", _question(i))], "medium")
               for i in range(1, count + 1)]
    queue: asyncio.Queue[list[int]] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    limits = httpx.Limits(max_connections=concurrency)
    total = 0
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits,
                                 headers=headers) as client:
        async def worker() -> None:
            nonlocal total
            while not queue.empty():
                prompt = queue.get_nowait()
                # Awaited first: `total += await ...` reads total before the await, and
                # the workers would overwrite each other's counts.
                tokens = await completion_tokens(client, harmony, prompt, max_tokens)
                total += tokens

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total, time.monotonic() - started


def _efficiency(world: Plane, prefix: str, engine_url: str, lines: int, shards: int,
                requests_per_shard: int, max_tokens: int,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    namespace = world.namespace(prefix)
    world.ready_model(namespace)
    concurrency = shards * requests_per_shard
    asyncio.run(_direct(engine_url, concurrency, concurrency, max_tokens, headers or {}))
    d_tokens, d_seconds = asyncio.run(
        _direct(engine_url, lines, concurrency, max_tokens, headers or {}))
    status, seconds, _, _ = _run_batch(world, namespace, engine_url, lines, shards,
                                       requests_per_shard, max_tokens)
    b_tokens = int(status["usage"]["completionTokens"])
    # The batch's time includes its pods starting, the count pass and the merge.
    return {
        "ratio": round((b_tokens / seconds) / (d_tokens / d_seconds), 3),
        "batch_tokens_per_second": round(b_tokens / seconds, 1),
        "direct_tokens_per_second": round(d_tokens / d_seconds, 1),
        "batch_seconds": round(seconds, 1), "direct_seconds": round(d_seconds, 1),
        "lines": lines, "concurrency": concurrency, "max_tokens": max_tokens,
    }


def standin_h100(world: Plane, lines: int = 2048) -> dict[str, Any]:
    with StandinEngine(model="m", token_delay=H100_SECONDS_PER_TOKEN,
                       stream_interval=STREAM_INTERVAL) as engine:
        engine.answer_repeat = 12  # about 200 output tokens per answer
        figures = _efficiency(world, "batch-eff-standin", engine.url, lines, shards=2,
                              requests_per_shard=64, max_tokens=400)
    figures["seconds_per_token"] = H100_SECONDS_PER_TOKEN
    return figures


def real_vllm(world: Plane, lines: int = 1000) -> dict[str, Any]:
    from gptoss_sandbox.engine_venv import ensure_engine
    from gptoss_sandbox.real_engine import VllmServer, build_tiny_checkpoint

    engine = ensure_engine(progress=lambda line: None)
    work = Path(tempfile.mkdtemp(prefix="gptoss-batch-vllm-"))
    checkpoint = build_tiny_checkpoint(work / "checkpoint", "random")
    server = VllmServer(checkpoint, served_model_name="m", max_model_len=4096,
                        extra_args=["--max-num-seqs", "64"],
                        log_path=work / "vllm.log", engine=engine)
    server.start()
    try:
        server.wait_healthy(900)
        return _efficiency(world, "batch-eff-vllm", server.url, lines, shards=2,
                           requests_per_shard=32, max_tokens=64)
    finally:
        server.stop()
