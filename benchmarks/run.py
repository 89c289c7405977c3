"""`make bench`: every benchmark on one local control plane, repeated, written to
benchmarks/results.json, then BENCHMARKS.md and its plots (benchmarks/report.py).

Each figure is the median over the runs, with ``spread`` ([min, max]) beside it. Nothing
here passes or fails. ``--only`` runs some figures and keeps the others from the last
results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the tests' helpers (the batch benchmark's kubelet stand-in)

import batches  # noqa: E402
import deep_queue  # noqa: E402
import engines  # noqa: E402
import harmony_cost  # noqa: E402
import jobs  # noqa: E402
import models  # noqa: E402
import node  # noqa: E402
from plane import Plane, plane  # noqa: E402

RESULTS = HERE / "results.json"
RATES = {"10": 200, "50": 500, "200": 1000}  # offered jobs/s -> jobs sent
SIDECARS = ("1", "2", "4")
QUEUES = ("1000", "10000")
FIGURES = ("harmony", "overhead", "throughput", "ceiling", "writes", "models", "standin",
           "queue", "vllm", "structured", "priority", "batch", "batchvllm", "node")
CEILING_WORKERS = ("1", "2")


def aggregate(runs: list[Any]) -> Any:
    """Median of each number over the runs, with [min, max] in a sibling ``spread``."""
    first = runs[0]
    if isinstance(first, dict):
        merged: dict[str, Any] = {}
        spread: dict[str, list[float]] = {}
        for key in first:
            values = [run[key] for run in runs if key in run]
            merged[key] = aggregate(values)
            if all(isinstance(v, (int, float)) for v in values) and len(values) > 1:
                spread[key] = [min(values), max(values)]
        if spread:
            merged["spread"] = spread
            merged["runs"] = len(runs)
        return merged
    if isinstance(first, list):
        return [item for run in runs for item in run]
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return statistics.median(runs)
    return first


def repeated(times: int, measure: Callable[[], Any], label: str) -> Any:
    runs = []
    for index in range(times):
        started = time.monotonic()
        runs.append(measure())
        print(f"  {label} run {index + 1}/{times}: {time.monotonic() - started:.0f}s "
              f"{json.dumps(runs[-1], default=str)}", flush=True)
    return aggregate(runs)


def drop(world: Plane, namespace_prefix: str) -> None:
    """Delete the namespaces a measurement made (and wait), so the next one starts from
    an operator with nothing left over in its indexes."""
    from lightkube.resources.core_v1 import Namespace

    names = [n.metadata.name for n in world.kube.list(Namespace)
             if n.metadata.name.startswith(namespace_prefix)]
    for name in names:
        world.kube.delete(Namespace, name)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        left = [n for n in world.kube.list(Namespace) if n.metadata.name in names]
        if not left:
            return
        time.sleep(1)


def machine() -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent / "operator"))
    from gptoss_operator import __version__
    from gptoss_operator.api.versions import VLLM_VERSION
    from gptoss_sandbox import binaries

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                            capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cpu": cpu, "cores": len(__import__("os").sched_getaffinity(0)),
        "memory_gib": round(memory, 1), "python": platform.python_version(),
        "kubernetes": binaries.KUBERNETES_VERSION, "vllm": VLLM_VERSION,
        "operator": __version__, "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


Drain = tuple[str, tuple[str, ...], Callable[[int], dict[str, Any]], str]


def _alternating_drains(world: Plane, repeat: int,
                        drains: list[Drain]) -> dict[str, dict[str, list[Any]]]:
    """Queues drained by each number of processes of each kind (what, counts, drain, the
    namespace prefix to drop): {what: {count: runs}}. For a count that several kinds
    share, their runs alternate, the order switching every round, so that a plane that
    drifts (etcd growing, the box slowing) weighs on every kind alike and their ratio
    holds."""
    runs: dict[str, dict[str, list[Any]]] = {what: {} for what, *_ in drains}
    counts = sorted({count for _, counts, *_ in drains for count in counts}, key=int)
    for count in counts:
        kinds = [drain for drain in drains if count in drain[1]]
        for round_ in range(repeat):
            for what, _, drain, prefix in kinds if round_ % 2 == 0 else kinds[::-1]:
                started = time.monotonic()
                runs[what].setdefault(count, []).append(drain(int(count)))
                print(f"  {count} {what} run {round_ + 1}/{repeat}: "
                      f"{time.monotonic() - started:.0f}s {json.dumps(runs[what][count][-1])}",
                      flush=True)
                drop(world, prefix)
    return runs


def measure_on_plane(world: Plane, wanted: set[str], repeat: int, results: dict[str, Any]) -> None:
    if "overhead" in wanted:
        by_rate = {}
        for rate, count in RATES.items():
            by_rate[rate] = repeated(
                repeat, lambda r=int(rate), c=count: jobs.job_overhead(world, r, c),
                f"job overhead at {rate}/s")
            drop(world, "overhead-")
        results["job_overhead_ms"] = {"by_rate": by_rate}
    drains: list[Drain] = []
    if "throughput" in wanted:
        drains.append(("sidecars", SIDECARS, lambda n: jobs.throughput(world, n, 1000),
                       "throughput-"))
    if "ceiling" in wanted:
        drains.append(("bare workers", CEILING_WORKERS,
                       lambda n: jobs.apiserver_ceiling(world, n, 1000), "ceiling-"))
    runs = _alternating_drains(world, repeat, drains)
    for what, key in (("sidecars", "jobs_per_second_max"),
                      ("bare workers", "apiserver_ceiling_jobs_per_second")):
        if what not in runs:
            continue
        figures = {count: aggregate(count_runs) for count, count_runs in runs[what].items()}
        rates: dict[str, Any] = {count: f["jobs_per_second"] for count, f in figures.items()}
        spread = {count: f["spread"]["jobs_per_second"]
                  for count, f in figures.items() if "spread" in f}
        if spread:
            rates["spread"] = spread
        results[key] = {f"by_{what.split()[-1]}": rates,
                        "cpu_seconds_per_1000_jobs": {
                            count: f["cpu_seconds_per_1000_jobs"] for count, f in figures.items()}}
    if {"sidecars", "bare workers"} <= set(runs):
        paired = {count: [round(a["jobs_per_second"] / b["jobs_per_second"], 3)
                          for a, b in zip(runs["sidecars"][count], runs["bare workers"][count],
                                          strict=True)]
                  for count in CEILING_WORKERS}
        results["throughput_of_ceiling"] = {
            count: round(results["jobs_per_second_max"]["by_sidecars"][count]
                         / results["apiserver_ceiling_jobs_per_second"]["by_workers"][count], 3)
            for count in CEILING_WORKERS}
        results["throughput_of_ceiling"]["by_round"] = paired
    if "writes" in wanted:
        results["apiserver_writes_per_job"] = repeated(
            repeat, lambda: jobs.apiserver_writes(world), "apiserver writes")
        drop(world, "writes-")
    if "models" in wanted:
        figures = repeated(repeat, lambda: models.model_lifecycle(world),
                           "model lifecycle")
        results["model_apply_to_job_ms"] = figures["model_apply_to_job_ms"]
        results["job_complete_to_deployment_ms"] = figures["job_complete_to_deployment_ms"]
        drop(world, "models-")
    if "standin" in wanted:
        results.setdefault("engine_efficiency", {})["standin_h100"] = repeated(
            1, lambda: engines.standin_h100(world, rounds=repeat),
            "engine efficiency, stand-in")
        drop(world, "eff-standin-")
    if "queue" in wanted:
        queue: dict[str, Any] = {}
        for count in QUEUES:
            queue[count] = repeated(1, lambda n=int(count): deep_queue.deep_queue(world, n),
                                    f"deep queue of {count}")
            drop(world, "queue-")
        results["operator_rss_mb"] = {k: v["operator_rss_mb"] for k, v in queue.items()}
        results["sidecar_rss_mb"] = {k: v["sidecar_rss_mb"] for k, v in queue.items()}
        results["queue_settle_seconds"] = queue["10000"]["queue_settle_seconds"]
        results["operator_idle_cpu_percent"] = queue["10000"]["operator_idle_cpu_percent"]
        results["status_writes_per_waiting_job"] = queue["10000"][
            "status_writes_per_waiting_job"]
        results["deep_queue_detail"] = queue
    if "vllm" in wanted:
        results.setdefault("engine_efficiency", {})["real_vllm"] = repeated(
            1, lambda: engines.real_vllm(world, rounds=repeat),
            "engine efficiency, real vLLM")
    if "structured" in wanted:
        results["structured_output_cost"] = repeated(
            1, lambda: engines.structured_cost(), "structured outputs on real vLLM")
    if "priority" in wanted:
        results["priority_latency"] = repeated(
            1, lambda: engines.priority_latency(), "interactive latency under a batch, real vLLM")
    if "batch" in wanted:
        results["batch_scale"] = repeated(
            1, lambda: batches.standin_scale(world), "batch of 100,000 lines")
        drop(world, "batch-scale-")
        results.setdefault("batch_engine_efficiency", {})["standin_h100"] = repeated(
            repeat, lambda: batches.standin_h100(world), "batch efficiency, stand-in")
        drop(world, "batch-eff-standin-")
    if "batchvllm" in wanted:
        results.setdefault("batch_engine_efficiency", {})["real_vllm"] = repeated(
            1, lambda: batches.real_vllm(world), "batch efficiency, real vLLM")
        drop(world, "batch-eff-vllm-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=FIGURES, default=list(FIGURES))
    args = parser.parse_args()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["machine"] = machine()
    wanted = set(args.only)
    options = ([f"--only {' '.join(args.only)}"] if wanted != set(FIGURES) else []) + (
        [f"--repeat {args.repeat}"] if args.repeat != 3 else [])
    results["command"] = "make bench" + (f" BENCH_ARGS='{' '.join(options)}'" if options else "")
    results["repeats"] = args.repeat
    for figure in wanted:
        results.setdefault("commits", {})[figure] = results["machine"]["commit"]
        results.setdefault("repeats_of", {})[figure] = args.repeat

    if "harmony" in wanted:
        results["harmony"] = repeated(args.repeat, harmony_cost.measure, "harmony")
        results["harmony_us_per_token"] = results["harmony"]["harmony_us_per_token"]
    try:
        if "node" in wanted:  # a control plane and node of its own, before the plane's
            results["real_node"] = repeated(args.repeat, node.node_demo, "warm demo on the node")
        if wanted - {"harmony", "node"}:
            with plane() as world:
                measure_on_plane(world, wanted, args.repeat, results)
    finally:  # figures measured before a failure are kept
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        print(f"wrote {RESULTS}")
    import report

    report.main()


if __name__ == "__main__":
    main()
