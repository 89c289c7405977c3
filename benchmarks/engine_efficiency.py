"""Engine efficiency on the real vLLM: output tokens/s through InferenceJobs (operator,
apiserver, sidecar) divided by output tokens/s of the same requests sent straight to the
same vLLM server at the same concurrency, measured in one run, rounds alternating.

The engine is vLLM's CPU build serving the tiny random-weights gpt-oss checkpoint (it
rambles on to maxTokens, so every request generates a comparable number of tokens).
Prints the figures; nothing here passes or fails.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from common import plane_with_operator  # noqa: E402
from lightkube import Client  # noqa: E402

from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource  # noqa: E402
from gptoss_operator.harmony import ChatMessage, Harmony  # noqa: E402
from gptoss_sandbox.real_engine import VllmServer, build_tiny_checkpoint  # noqa: E402

NAMESPACE = "bench"
MODEL = "m"
CONCURRENCY = 64
MAX_TOKENS = 128
ROUNDS = 3


def _question(round_: int, index: int) -> str:
    return f"Round {round_} question {index}: tell me about the number {index * 7919}"


def job(name: str, question: str) -> Any:
    return InferenceJobResource.from_dict({
        "apiVersion": "gptoss.ai/v1alpha1", "kind": "InferenceJob", "metadata": {"name": name},
        "spec": {"modelRef": {"name": MODEL}, "maxTokens": MAX_TOKENS,
                 "messages": [{"role": "user", "content": question}]},
    })


def through_jobs(kube: Client, round_: int) -> tuple[int, float]:
    """(output tokens, seconds) for CONCURRENCY jobs created at once."""
    names = {f"r{round_}-{index:03d}": _question(round_, index) for index in range(CONCURRENCY)}
    finished: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        watcher = Client(kube.config, field_manager="bench")
        for _, obj in watcher.watch(InferenceJobResource, namespace=NAMESPACE):
            data = obj.to_dict()
            name = data["metadata"]["name"]
            status = data.get("status") or {}
            if name in names and status.get("phase") in ("Succeeded", "Failed"):
                finished.setdefault(name, int((status.get("usage") or {}).get(
                    "completionTokens", 0)))
                if len(finished) == len(names):
                    done.set()
                    return

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(1.0)  # the watch is established
    started = time.monotonic()
    for name, question in names.items():
        kube.create(job(name, question), namespace=NAMESPACE)
    if not done.wait(900):
        raise TimeoutError(f"only {len(finished)} of {len(names)} jobs finished")
    return sum(finished.values()), time.monotonic() - started


async def _direct(url: str, prompts: list[list[int]], harmony: Harmony) -> int:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one(prompt: list[int]) -> int:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS,
                    "temperature": 0.7, "stop_token_ids": harmony.stop_token_ids,
                    "return_token_ids": True, "skip_special_tokens": False}
            answer = (await client.post("/v1/completions", json=body)).json()
            return int(answer["usage"]["completion_tokens"])

        counts = await asyncio.gather(*(one(prompt) for prompt in prompts))
    return sum(counts)


def direct(url: str, round_: int, harmony: Harmony) -> tuple[int, float]:
    prompts = [harmony.render([ChatMessage("user", _question(round_, index))], "medium")
               for index in range(CONCURRENCY)]
    started = time.monotonic()
    tokens = asyncio.run(_direct(url, prompts, harmony))
    return tokens, time.monotonic() - started


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="gptoss-efficiency-"))
    checkpoint = build_tiny_checkpoint(work / "checkpoint", "random")
    harmony = Harmony()
    with plane_with_operator(NAMESPACE) as (cluster, kube):
        kube.create(GptOssModelResource.from_dict({
            "apiVersion": "gptoss.ai/v1alpha1", "kind": "GptOssModel",
            "metadata": {"name": MODEL}, "spec": {"source": {"repo": "openai/gpt-oss-20b"}}}),
            namespace=NAMESPACE)
        server = VllmServer(checkpoint, served_model_name=MODEL, max_model_len=4096,
                            extra_args=["--max-num-seqs", str(CONCURRENCY)],
                            log_path=work / "vllm.log")
        server.start()
        sidecar: subprocess.Popen[bytes] | None = None
        try:
            print(f"vLLM (CPU build) healthy after {server.wait_healthy(900):.1f}s")
            log = open(work / "sidecar.log", "ab")  # noqa: SIM115
            sidecar = subprocess.Popen(
                [sys.executable, "-m", "gptoss_operator.cli.sidecar_main"],
                env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
                     "GPTOSS_MODEL": MODEL, "GPTOSS_NAMESPACE": NAMESPACE,
                     "GPTOSS_POD_NAME": "bench-sidecar", "GPTOSS_ENGINE_URL": server.url,
                     "GPTOSS_CONCURRENCY": str(CONCURRENCY)},
                stdout=log, stderr=subprocess.STDOUT,
            )
            direct(server.url, -1, harmony)  # warm-up: the sidecar and vLLM come up
            ratios = []
            for round_ in range(ROUNDS):
                d_tokens, d_seconds = direct(server.url, round_, harmony)
                j_tokens, j_seconds = through_jobs(kube, round_)
                direct_rate, jobs_rate = d_tokens / d_seconds, j_tokens / j_seconds
                ratios.append(jobs_rate / direct_rate)
                print(f"round {round_}: direct {d_tokens} tokens in {d_seconds:.2f}s = "
                      f"{direct_rate:.0f} tok/s; through InferenceJobs {j_tokens} tokens in "
                      f"{j_seconds:.2f}s = {jobs_rate:.0f} tok/s; ratio {ratios[-1]:.3f}")
            print(f"engine efficiency (InferenceJobs / direct, {CONCURRENCY} in flight, "
                  f"{MAX_TOKENS} max tokens): median {statistics.median(ratios):.3f}, "
                  f"min {min(ratios):.3f}, max {max(ratios):.3f} over {ROUNDS} rounds")
        finally:
            if sidecar is not None:
                sidecar.terminate()
                sidecar.wait(timeout=20)
            server.stop()


if __name__ == "__main__":
    main()
