"""vLLM's command line for a GptOssModel, from vLLM's gpt-oss recipe, per GPU profile.

Sources (vLLM 0.32.0, the pinned version, and the recipe it ships with):

- Recipe ``vllm-project/recipes`` ``OpenAI/GPT-OSS.md`` and ``GPT-OSS_Hopper.yaml``:
  ``max-num-batched-tokens: 8192``, ``max-cudagraph-capture-size: 2048`` and
  ``stream-interval: 20`` ("to maximize the throughput") on Hopper; TP 1 gives the best
  throughput per GPU, TP 2/4/8 lower latency per user. Known limitations: "On H100 using
  tensor parallel size 1 ... will cause CUDA Out-of-memory": run 120b with
  ``--gpu-memory-utilization 0.95 --max-num-batched-tokens 1024``; "When running TP2 on
  H100, set your gpu memory utilization below 0.95".
- The recipe disables prefix caching only "if running with synthetic dataset for consistent
  performance measurement". Every InferenceJob starts with the same harmony system
  message, so prefix caching stays on (``--enable-prefix-caching``).
- Async scheduling is on by default since it left the recipe's flags (vLLM's
  ``config/vllm.py``); ``--async-scheduling`` states it, and the contract test proves the
  pinned version still has the flag.
- ``--max-num-seqs``: vLLM's own default is 1024 on GPUs with 70 GiB or more, 256 below
  (``engine/arg_utils.py``, ``get_batch_defaults``); it must never be lower than the
  sidecar's concurrency, and vLLM refuses ``max-num-batched-tokens < max-num-seqs``
  (``config/scheduler.py``).
- In flight: vLLM runs at most ``max-num-seqs`` requests at a time per replica and queues
  the rest, sending nothing while they wait. The sidecar keeps at most that many jobs in
  flight, and a batch's shards together at most the room the model's sidecars leave on its
  replicas, so work waits where it is visible (a Pending job, an unread
  line) rather than in the engine's queue. ``extraArgs`` may set ``--max-num-seqs``; vLLM
  takes the last value given, and so does :func:`engine_config`.
- ``--data-parallel-size``: GPUs of a replica beyond the tensor-parallel group run as data
  parallel ranks in the same pod (N x M GPUs for DP N, TP M; vLLM's data parallel docs).
- ``--max-model-len`` 131072: gpt-oss's native context window; KV blocks are allocated as
  sequences grow, so a long window costs nothing until it is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gptoss_operator.api.batch import InferenceBatchSpec
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.core import naming

NATIVE_CONTEXT = 131072
RECIPE_BATCHED_TOKENS = 8192
CUDAGRAPH_CAPTURE_SIZE = 2048
STREAM_INTERVAL = 20


class GpuProfile(StrEnum):
    H100_80GB = "H100-80GB"
    H200_141GB = "H200-141GB"
    GENERIC = "Generic"


@dataclass(frozen=True)
class EngineConfig:
    """The settings vLLM runs with for one model (what ``vllm_args`` renders)."""

    tensor_parallel: int
    data_parallel: int
    max_num_batched_tokens: int
    max_num_seqs: int
    gpu_memory_utilization: float | None
    max_model_len: int
    hopper_recipe: bool  # cudagraph capture size and stream interval from the recipe


def is_120b(spec: GptOssModelSpec) -> bool:
    return spec.source.repo.lower().endswith("gpt-oss-120b")


def _recipe_memory(profile: GpuProfile, spec: GptOssModelSpec, tp: int) -> tuple[float | None, int]:
    """(gpu-memory-utilization, max-num-batched-tokens) the recipe gives this profile."""
    if profile == GpuProfile.H100_80GB and is_120b(spec):
        if tp == 1:
            return 0.95, 1024  # the recipe's out-of-memory workaround
        if tp == 2:
            return 0.9, RECIPE_BATCHED_TOKENS  # "below 0.95" at TP 2
    return None, RECIPE_BATCHED_TOKENS


def engine_config(spec: GptOssModelSpec) -> EngineConfig:
    serving = spec.serving
    profile = GpuProfile(serving.gpuProfile)
    tp = serving.effective_tensor_parallel_size()
    recipe_memory, recipe_batched = _recipe_memory(profile, spec, tp)
    default_seqs = 256 if profile == GpuProfile.GENERIC else 1024
    max_num_seqs = _int_flag(serving.extraArgs, "--max-num-seqs") or max(
        default_seqs, spec.sidecar.concurrency
    )
    batched = serving.maxNumBatchedTokens or recipe_batched
    return EngineConfig(
        tensor_parallel=tp,
        data_parallel=serving.gpusPerReplica // tp,
        max_num_batched_tokens=max(batched, max_num_seqs),
        max_num_seqs=max_num_seqs,
        gpu_memory_utilization=serving.gpuMemoryUtilization or recipe_memory,
        max_model_len=serving.maxModelLen or NATIVE_CONTEXT,
        hopper_recipe=profile != GpuProfile.GENERIC,
    )


def _int_flag(args: Sequence[str], flag: str) -> int | None:
    """The last value ``flag N`` or ``flag=N`` gives in ``args`` (vLLM's parser takes the
    last); None when absent or not a positive integer (vLLM then refuses to start)."""
    value: str | None = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    if value is None or not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def sidecar_in_flight(spec: GptOssModelSpec) -> int:
    """Jobs one pod's sidecar keeps at the engine: its concurrency, within max-num-seqs."""
    return min(spec.sidecar.concurrency, engine_config(spec).max_num_seqs)


def _replicas_to_fill(spec: GptOssModelSpec) -> int:
    """The replicas a batch may count on: ``replicas``, or under autoscaling the most it
    scales to (a batch's demand is what scales it up)."""
    scaling = spec.serving.autoscaling
    return max(1, scaling.maxReplicas if scaling is not None else spec.serving.replicas)


def gateway_slots(spec: GptOssModelSpec) -> int:
    """Batch lines one replica's gateway sends to its engine at once: the room the
    sidecar's jobs leave; one at least, so batches always advance."""
    return max(1, engine_config(spec).max_num_seqs - sidecar_in_flight(spec))


def batch_requests_per_shard(model: GptOssModelSpec, batch: InferenceBatchSpec) -> int:
    """Requests each running shard keeps in flight: ``requestsPerShard``, lowered so the
    shards running together stay within the room the model's sidecars leave on its
    replicas; one at least, so a batch always advances."""
    room = _replicas_to_fill(model) * (engine_config(model).max_num_seqs - sidecar_in_flight(model))
    running = batch.parallelism or batch.shards
    return max(1, min(batch.requestsPerShard, room // running))


def vllm_args(name: str, spec: GptOssModelSpec, digest: str) -> list[str]:
    """``vllm serve`` arguments for the model's weights at ``served_path(digest)``."""
    config = engine_config(spec)
    args = [
        "serve",
        naming.served_path(digest),
        "--served-model-name",
        name,
        "--host",
        "0.0.0.0",
        "--port",
        str(naming.ENGINE_PORT),
        "--tensor-parallel-size",
        str(config.tensor_parallel),
        "--max-model-len",
        str(config.max_model_len),
        "--max-num-batched-tokens",
        str(config.max_num_batched_tokens),
        "--max-num-seqs",
        str(config.max_num_seqs),
        "--enable-prefix-caching",
        "--async-scheduling",
        "--scheduling-policy",
        spec.serving.schedulingPolicy,
    ]
    if config.data_parallel > 1:
        args += ["--data-parallel-size", str(config.data_parallel)]
    if config.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", f"{config.gpu_memory_utilization:g}"]
    if config.hopper_recipe:
        args += [
            "--max-cudagraph-capture-size",
            str(CUDAGRAPH_CAPTURE_SIZE),
            "--stream-interval",
            str(STREAM_INTERVAL),
        ]
    return args + list(spec.serving.extraArgs)
