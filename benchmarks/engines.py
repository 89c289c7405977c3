"""Engine efficiency: output tokens/s through InferenceJobs (apiserver, operator, sidecar,
harmony) divided by output tokens/s of the same requests sent straight to the same server
at the same concurrency, rounds alternating within one run.

(a) the real vLLM (its CPU build, the tiny random-weights gpt-oss checkpoint, which
rambles on to max_tokens); (b) the stand-in with a fixed delay per token that mimics one
H100's decode rate for gpt-oss-120b at 64 concurrent streams (see BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from jobs import STREAM_INTERVAL
from lightkube import AsyncClient
from plane import Plane

from gptoss_operator.api.resources import InferenceJobResource
from gptoss_operator.engine.harmony import ChatMessage, Harmony
from gptoss_sandbox.standin_engine import StandinEngine

CONCURRENCY = 64
# One H100 80GB serving gpt-oss-120b at 64 concurrent streams decodes about 50 tokens/s per
# stream (about 3,200 tokens/s in all; BENCHMARKS.md gives the sources).
H100_SECONDS_PER_TOKEN = 0.02


def _question(round_: int, index: int) -> str:
    return f"Round {round_} question {index}: tell me about the number {index * 7919}"


def _job(name: str, question: str, max_tokens: int) -> Any:
    return InferenceJobResource.from_dict({
        "apiVersion": "gptoss.ai/v1alpha1", "kind": "InferenceJob", "metadata": {"name": name},
        "spec": {"modelRef": {"name": "m"}, "maxTokens": max_tokens,
                 "messages": [{"role": "user", "content": question}]},
    })


async def _through_jobs(world: Plane, namespace: str, round_: int,
                        max_tokens: int) -> tuple[int, float]:
    names = {f"r{round_}-{i:03d}": _question(round_, i) for i in range(CONCURRENCY)}
    finished: dict[str, int] = {}
    client = AsyncClient(world.kube.config, field_manager="bench")

    async def watch() -> None:
        async for _, obj in client.watch(InferenceJobResource, namespace=namespace):
            status = obj.to_dict().get("status") or {}
            if obj.metadata.name in names and status.get("phase") in ("Succeeded", "Failed"):
                usage = status.get("usage") or {}
                finished.setdefault(obj.metadata.name, int(usage.get("completionTokens", 0)))

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(1.0)
    started = time.monotonic()
    await asyncio.gather(*(client.create(_job(n, q, max_tokens), namespace=namespace)
                           for n, q in names.items()))
    while len(finished) < len(names) and time.monotonic() - started < 900:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    watcher.cancel()
    await client.close()
    return sum(finished.values()), elapsed


async def completion_tokens(client: httpx.AsyncClient, harmony: Harmony, prompt: list[int],
                            max_tokens: int) -> int:
    """One request straight to the engine, streamed as the sidecar streams it; the output
    tokens its usage reports."""
    body = {"model": "m", "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0.7, "stop_token_ids": harmony.stop_token_ids,
            "skip_special_tokens": False, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as reply:
        text = "".join([part async for part in reply.aiter_text()])
    # SSE lines end with "\n" only: the text may hold other line separators.
    for line in text.split("\n"):
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage")
            if usage:
                tokens = int(usage["completion_tokens"])
    return tokens


async def _direct(url: str, round_: int, harmony: Harmony, max_tokens: int,
                  headers: dict[str, str]) -> tuple[int, float]:
    prompts = [harmony.render([ChatMessage("user", _question(round_, i))], "medium")
               for i in range(CONCURRENCY)]
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits,
                                 headers=headers) as client:
        started = time.monotonic()
        counts = await asyncio.gather(
            *(completion_tokens(client, harmony, prompt, max_tokens) for prompt in prompts))
    return sum(counts), time.monotonic() - started


def _rounds(world: Plane, namespace: str, url: str, rounds: int, max_tokens: int,
            headers: dict[str, str] | None = None) -> dict[str, Any]:
    harmony = Harmony()
    asyncio.run(_direct(url, -1, harmony, max_tokens, headers or {}))  # warm-up
    ratios, direct_rates, job_rates = [], [], []
    for round_ in range(rounds):
        d_tokens, d_seconds = asyncio.run(_direct(url, round_, harmony, max_tokens,
                                                  headers or {}))
        j_tokens, j_seconds = asyncio.run(_through_jobs(world, namespace, round_, max_tokens))
        direct_rates.append(d_tokens / d_seconds)
        job_rates.append(j_tokens / j_seconds)
        ratios.append(job_rates[-1] / direct_rates[-1])
    return {"ratio": statistics.median(ratios), "ratios": ratios,
            "direct_tokens_per_second": statistics.median(direct_rates),
            "jobs_tokens_per_second": statistics.median(job_rates),
            "concurrency": CONCURRENCY, "max_tokens": max_tokens}


def standin_h100(world: Plane, rounds: int = 3) -> dict[str, Any]:
    namespace = world.namespace("eff-standin")
    world.ready_model(namespace)
    with StandinEngine(model="m", token_delay=H100_SECONDS_PER_TOKEN,
                       stream_interval=STREAM_INTERVAL) as engine:
        engine.answer_repeat = 12  # about 200 output tokens per answer
        sidecars = world.start_sidecars(namespace, 1, engine.url, concurrency=CONCURRENCY)
        try:
            time.sleep(3)
            figures = _rounds(world, namespace, engine.url, rounds, max_tokens=400)
        finally:
            world.stop_sidecars(sidecars)
    figures["seconds_per_token"] = H100_SECONDS_PER_TOKEN
    return figures


def real_vllm(world: Plane, rounds: int = 3) -> dict[str, Any]:
    from gptoss_sandbox.engine_venv import ensure_engine
    from gptoss_sandbox.real_engine import VllmServer, build_tiny_checkpoint

    engine = ensure_engine(progress=lambda line: None)
    work = Path(tempfile.mkdtemp(prefix="gptoss-efficiency-"))
    checkpoint = build_tiny_checkpoint(work / "checkpoint", "random")
    namespace = world.namespace("eff-vllm")
    world.ready_model(namespace)
    server = VllmServer(checkpoint, served_model_name="m", max_model_len=4096,
                        extra_args=["--max-num-seqs", str(CONCURRENCY)],
                        log_path=work / "vllm.log", engine=engine)
    server.start()
    try:
        server.wait_healthy(900)
        sidecars = world.start_sidecars(namespace, 1, server.url, concurrency=CONCURRENCY)
        try:
            time.sleep(3)
            return _rounds(world, namespace, server.url, rounds, max_tokens=128)
        finally:
            world.stop_sidecars(sidecars)
    finally:
        server.stop()


# What the structured-output cost is measured with: a small JSON answer.
VERDICT = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                            "level": {"enum": ["low", "high"]}},
           "required": ["ok", "level"], "additionalProperties": False}


async def _decode_rates(url: str, strict: bool, samples: int) -> dict[str, Any]:
    """``samples`` requests one at a time (temperature 1.0, 256 tokens at most), each with
    the VERDICT format, enforced or only described: seconds per output token after the
    first, time to the first token, and how many answers matched."""
    from gptoss_operator.engine.client import EngineClient
    from gptoss_operator.engine.generation import generate
    from gptoss_operator.engine.harmony import ResponseFormat
    from gptoss_operator.engine.render import render_request
    from gptoss_operator.engine.request import ChatRequest

    harmony = Harmony()
    client = EngineClient(url, "m")
    per_token: list[float] = []
    first: list[float] = []
    valid = 0
    try:
        for index in range(samples):
            request = ChatRequest((ChatMessage("user", f"Give a verdict ({index})."),), "low",
                                  max_tokens=256, temperature=1.0, strict=strict,
                                  response_format=ResponseFormat("json_schema", "verdict",
                                                                 None, VERDICT))
            result = await generate(client, harmony, render_request(harmony, request),
                                    request.sampling(harmony.stop_token_ids),
                                    clock=time.monotonic)
            assert result.first_token is not None
            first.append(result.first_token - result.started)
            if result.completion_tokens > 1:
                per_token.append((result.finished - result.first_token)
                                 / (result.completion_tokens - 1))
            valid += bool(result.outcome(request, 4096).answer_json)
    finally:
        await client.close()
    return {"ms_per_token": round(1000 * statistics.median(per_token), 2),
            "ms_to_first_token": round(1000 * statistics.median(first), 1),
            "valid_answers": valid, "samples": samples}


def structured_cost(samples: int = 20) -> dict[str, Any]:
    """The cost of enforcing a response format on the real vLLM (CPU build, the random
    checkpoint): decode time per token with the grammar and without it, alternating."""
    from gptoss_sandbox.engine_venv import ensure_engine
    from gptoss_sandbox.real_engine import VllmServer, build_tiny_checkpoint

    engine = ensure_engine(progress=lambda line: None)
    work = Path(tempfile.mkdtemp(prefix="gptoss-structured-"))
    checkpoint = build_tiny_checkpoint(work / "checkpoint", "random")
    server = VllmServer(checkpoint, served_model_name="m", max_model_len=4096,
                        log_path=work / "vllm.log", engine=engine)
    server.start()
    try:
        server.wait_healthy(900)
        rounds: dict[str, list[dict[str, Any]]] = {"constrained": [], "free": []}
        for _ in range(2):
            for label, strict in (("constrained", True), ("free", False)):
                rounds[label].append(asyncio.run(_decode_rates(server.url, strict,
                                                               samples // 2)))
    finally:
        server.stop()
    figures = {label: {"ms_per_token": statistics.mean(r["ms_per_token"] for r in runs),
                       "ms_to_first_token": statistics.mean(r["ms_to_first_token"]
                                                            for r in runs),
                       "valid_answers": sum(r["valid_answers"] for r in runs),
                       "samples": sum(r["samples"] for r in runs)}
               for label, runs in rounds.items()}
    figures["cost_per_token"] = round(figures["constrained"]["ms_per_token"]
                                      / figures["free"]["ms_per_token"], 3)
    return figures


PRIORITY_SEQS = 8  # vLLM --max-num-seqs: how many requests it runs at once
PRIORITY_BATCH_IN_FLIGHT = 32  # batch requests kept in flight: 24 wait in vLLM's queue
PRIORITY_BATCH_TOKENS = 256
PRIORITY_JOB_TOKENS = 32


async def _interactive_latencies(url: str, jobs: int, priority: int | None,
                                 batch_priority: int | None, saturate: bool) -> list[float]:
    """Seconds each of ``jobs`` interactive requests (one at a time, PRIORITY_JOB_TOKENS
    each) takes from sent to answered, while batch lines keep PRIORITY_BATCH_IN_FLIGHT
    requests in the engine (``saturate``). Priorities are the API's (None: not sent, as
    for an engine that does not schedule by priority)."""
    from gptoss_operator.engine.client import EngineClient
    from gptoss_operator.engine.generation import generate
    from gptoss_operator.engine.render import render_request
    from gptoss_operator.engine.request import ChatRequest

    harmony = Harmony()
    client = EngineClient(url, "m", max_connections=PRIORITY_BATCH_IN_FLIGHT + 4)
    stop = asyncio.Event()

    def request(text: str, tokens: int) -> ChatRequest:
        return ChatRequest((ChatMessage("user", text),), "low", max_tokens=tokens,
                           temperature=1.0)

    async def batch_line(index: int) -> None:
        line = request(f"Batch line {index}.", PRIORITY_BATCH_TOKENS)
        prompt = render_request(harmony, line)
        params = line.sampling(harmony.stop_token_ids, batch_priority)
        while not stop.is_set():
            await generate(client, harmony, prompt, params, clock=time.monotonic)

    lines = [asyncio.create_task(batch_line(i)) for i in range(PRIORITY_BATCH_IN_FLIGHT)] \
        if saturate else []
    latencies = []
    try:
        if saturate:
            await asyncio.sleep(20)  # the engine full and its queue long
        for index in range(jobs):
            job = request(f"An interactive question ({index}).", PRIORITY_JOB_TOKENS)
            prompt = render_request(harmony, job)
            started = time.monotonic()
            await generate(client, harmony, prompt,
                           job.sampling(harmony.stop_token_ids, priority),
                           clock=time.monotonic)
            latencies.append(time.monotonic() - started)
    finally:
        stop.set()
        for task in lines:
            task.cancel()
        await asyncio.gather(*lines, return_exceptions=True)
        await client.close()
    return latencies


def priority_latency(jobs: int = 20) -> dict[str, Any]:
    """An interactive job's latency on the real vLLM (CPU build, random checkpoint) while
    batch lines saturate it: vLLM started with --scheduling-policy priority and the
    requests carrying their priorities (a job 0, a batch line -10, what the product sends),
    against vLLM in arrival order (fcfs, no priorities sent), and against an idle engine."""
    from gptoss_operator.api.job import BATCH_PRIORITY
    from gptoss_sandbox.engine_venv import ensure_engine
    from gptoss_sandbox.real_engine import VllmServer, build_tiny_checkpoint

    engine = ensure_engine(progress=lambda line: None)
    work = Path(tempfile.mkdtemp(prefix="gptoss-priority-"))
    checkpoint = build_tiny_checkpoint(work / "checkpoint", "random")
    figures: dict[str, Any] = {}
    for policy in ("priority", "fcfs"):
        server = VllmServer(checkpoint, served_model_name="m", max_model_len=4096,
                            log_path=work / f"vllm-{policy}.log", engine=engine,
                            extra_args=("--scheduling-policy", policy,
                                        "--max-num-seqs", str(PRIORITY_SEQS)))
        server.start()
        try:
            server.wait_healthy(900)
            if policy == "fcfs":
                # What an engine in arrival order makes of a priority it was sent.
                answer = httpx.post(f"{server.url}/v1/completions", timeout=120, json={
                    "model": "m", "prompt": "hi", "max_tokens": 1, "priority": 5})
                figures["fcfs_engine_sent_a_priority"] = {
                    "status": answer.status_code, "body": answer.text[:300]}
            scenarios = {"priority": ("saturated_with_priority", 0, BATCH_PRIORITY, True),
                         "fcfs": ("saturated_without_priority", None, None, True)}
            runs = [scenarios[policy]] + ([("idle", None, None, False)]
                                          if policy == "fcfs" else [])
            for label, priority, batch_priority, saturate in runs:
                latencies = asyncio.run(_interactive_latencies(
                    server.url, jobs, priority, batch_priority, saturate))
                ordered = sorted(latencies)
                figures[label] = {
                    "p50_seconds": round(statistics.median(ordered), 3),
                    "p99_seconds": round(ordered[min(len(ordered) - 1,
                                                     math.ceil(0.99 * len(ordered)) - 1)], 3),
                    "jobs": len(ordered)}
        finally:
            server.stop()
    figures["setup"] = {"max_num_seqs": PRIORITY_SEQS,
                        "batch_in_flight": PRIORITY_BATCH_IN_FLIGHT,
                        "batch_tokens": PRIORITY_BATCH_TOKENS, "job_tokens": PRIORITY_JOB_TOKENS}
    return figures
