"""BENCHMARKS.md and its plots from benchmarks/results.json (run by benchmarks/run.py;
rerun alone to redraw: `.venv/bin/python benchmarks/report.py`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
PLOTS = HERE / "plots"
DOCUMENT = HERE.parent / "BENCHMARKS.md"
GPU_NOTES = HERE / "gpu_notes.md"
LIMITS = HERE / "limits.md"


def _get(results: dict[str, Any], path: str) -> Any:
    value: Any = results
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _spread(results: dict[str, Any], path: str) -> str:
    parent, _, leaf = path.rpartition(".")
    spread = _get(results, f"{parent}.spread.{leaf}" if parent else f"spread.{leaf}")
    if not spread:
        return ""
    return f" ({spread[0]:.3g}–{spread[1]:.3g})"


# (figure, path in results.json, unit, goal text, goal test)
GOALS: list[tuple[str, str, str, str, Callable[[float], bool] | None]] = [
    ("Job overhead p50 at 10 jobs/s", "job_overhead_ms.by_rate.10.p50", "ms", "", None),
    ("Job overhead p99 at 10 jobs/s", "job_overhead_ms.by_rate.10.p99", "ms", "", None),
    ("Job overhead p50 at 50 jobs/s", "job_overhead_ms.by_rate.50.p50", "ms", "≤ 50",
     lambda v: v <= 50),
    ("Job overhead p95 at 50 jobs/s", "job_overhead_ms.by_rate.50.p95", "ms", "", None),
    ("Job overhead p99 at 50 jobs/s", "job_overhead_ms.by_rate.50.p99", "ms", "≤ 250",
     lambda v: v <= 250),
    ("Job overhead p50 at 200 jobs/s", "job_overhead_ms.by_rate.200.p50", "ms", "", None),
    ("Job overhead p99 at 200 jobs/s", "job_overhead_ms.by_rate.200.p99", "ms", "", None),
    ("Offered load reached at 200 jobs/s", "job_overhead_ms.by_rate.200.offered_rate",
     "jobs/s", "", None),
    ("Throughput, 1 sidecar", "jobs_per_second_max.by_sidecars.1", "jobs/s", "", None),
    ("Throughput, 2 sidecars", "jobs_per_second_max.by_sidecars.2", "jobs/s", "≥ 100",
     lambda v: v >= 100),
    ("Throughput, 4 sidecars", "jobs_per_second_max.by_sidecars.4", "jobs/s", "", None),
    ("apiserver ceiling, 1 bare worker", "apiserver_ceiling_jobs_per_second.by_workers.1",
     "jobs/s", "", None),
    ("apiserver ceiling, 2 bare workers", "apiserver_ceiling_jobs_per_second.by_workers.2",
     "jobs/s", "", None),
    ("Throughput of the ceiling, 1 sidecar", "throughput_of_ceiling.1", "", "", None),
    ("Throughput of the ceiling, 2 sidecars", "throughput_of_ceiling.2", "", "≥ 0.8",
     lambda v: v >= 0.8),
    ("apiserver writes per short job (besides the create)",
     "apiserver_writes_per_job.short_job", "writes", "≤ 3", lambda v: v <= 3),
    ("apiserver writes per minute of a long job", "apiserver_writes_per_job.long_job_per_minute",
     "writes", "", None),
    ("Engine efficiency, real vLLM (CPU)", "engine_efficiency.real_vllm.ratio", "", "≥ 0.95",
     lambda v: v >= 0.95),
    ("Engine efficiency, stand-in at H100 rate", "engine_efficiency.standin_h100.ratio", "",
     "≥ 0.95", lambda v: v >= 0.95),
    ("Structured output: decode time per token, enforced / free (real vLLM, CPU)",
     "structured_output_cost.cost_per_token", "", "", None),
    ("Structured output: decode time per token, enforced",
     "structured_output_cost.constrained.ms_per_token", "ms", "", None),
    ("Structured output: decode time per token, free",
     "structured_output_cost.free.ms_per_token", "ms", "", None),
    ("Structured output: valid answers enforced, of samples at T=1.0",
     "structured_output_cost.constrained.valid_answers", "", "", None),
    ("Structured output: valid answers free (the control)",
     "structured_output_cost.free.valid_answers", "", "", None),
    ("Interactive job latency p50, batch saturating, with priority (real vLLM, CPU)",
     "priority_latency.saturated_with_priority.p50_seconds", "s", "", None),
    ("Interactive job latency p99, batch saturating, with priority",
     "priority_latency.saturated_with_priority.p99_seconds", "s", "", None),
    ("Interactive job latency p50, batch saturating, arrival order (fcfs)",
     "priority_latency.saturated_without_priority.p50_seconds", "s", "", None),
    ("Interactive job latency p99, batch saturating, arrival order (fcfs)",
     "priority_latency.saturated_without_priority.p99_seconds", "s", "", None),
    ("Interactive job latency p50, idle engine", "priority_latency.idle.p50_seconds", "s", "",
     None),
    ("Interactive job latency p99, idle engine", "priority_latency.idle.p99_seconds", "s", "",
     None),
    ("Model apply → PVC and Job p50", "model_apply_to_job_ms.p50", "ms", "", None),
    ("Model apply → PVC and Job p99", "model_apply_to_job_ms.p99", "ms", "< 1000",
     lambda v: v < 1000),
    ("Job complete → Deployment p50", "job_complete_to_deployment_ms.p50", "ms", "", None),
    ("Job complete → Deployment p99", "job_complete_to_deployment_ms.p99", "ms", "< 1000",
     lambda v: v < 1000),
    ("Operator RSS, 1,000 jobs", "operator_rss_mb.1000", "MB", "", None),
    ("Operator RSS, 10,000 jobs", "operator_rss_mb.10000", "MB", "≤ 250", lambda v: v <= 250),
    ("Sidecar peak RSS draining 1,000 jobs", "sidecar_rss_mb.1000", "MB", "", None),
    ("Sidecar peak RSS draining 10,000 jobs", "sidecar_rss_mb.10000", "MB", "", None),
    ("10,000 jobs counted in status.queue after the last create", "queue_settle_seconds", "s",
     "≤ 30", lambda v: v <= 30),
    ("Operator CPU while 10,000 jobs wait", "operator_idle_cpu_percent", "% of a core", "≤ 2",
     lambda v: v <= 2),
    ("Status writes per waiting job (10,000 waiting)", "status_writes_per_waiting_job",
     "writes", "≤ 0.1", lambda v: v <= 0.1),
    ("Harmony render + parse", "harmony.harmony_us_per_token", "µs/token", "≤ 5", lambda v: v <= 5),
    ("Batch of 100,000 lines, instant stand-in", "batch_scale.lines_per_second", "lines/s", "",
     None),
    ("apiserver writes for that whole batch", "batch_scale.apiserver_writes", "writes", "",
     None),
    ("Batch efficiency, stand-in at H100 rate", "batch_engine_efficiency.standin_h100.ratio",
     "", "≥ 0.95", lambda v: v >= 0.95),
    ("Batch efficiency, real vLLM (CPU), 1,000 lines", "batch_engine_efficiency.real_vllm.ratio",
     "", "≥ 0.95", lambda v: v >= 0.95),
    ("Warm `make demo` on the real node", "real_node.demo_seconds", "s", "≤ 180",
     lambda v: v <= 180),
    ("`helm install` → operator pod Ready", "real_node.operator_ready_seconds", "s", "", None),
    ("Model apply → Ready on the node (download pod, vLLM pod 2/2)",
     "real_node.model_ready_seconds", "s", "", None),
    ("Product image", "real_node.image_mib.product", "MiB", "", None),
    ("vLLM CPU image", "real_node.image_mib.vllm", "MiB", "", None),
]


def batch_tables(results: dict[str, Any]) -> list[str]:
    scale = results.get("batch_scale")
    if not scale:
        return []
    lines = [f"{scale['lines']:,} lines, {scale['shards']} shards × "
             f"{scale['requests_per_shard']} requests in flight, instant stand-in: "
             f"{scale['seconds']} s, {scale['engine_requests']:,} engine requests.", "",
             "| process | peak RSS (MB) |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in scale["peak_rss_mb"].items()
              if name not in ("spread", "runs")]
    lines += ["", "| resource | apiserver writes for the whole batch |", "|---|---|"]
    lines += [f"| {name} | {value} |"
              for name, value in scale["apiserver_writes_by_resource"].items()
              if name not in ("spread", "runs")]
    return lines


def _commits(results: dict[str, Any]) -> list[str]:
    """A line naming the commit and the runs of each group of figures, when they differ."""
    commits: dict[str, str] = results.get("commits") or {}
    repeats: dict[str, int] = results.get("repeats_of") or {}
    if len(set(commits.values())) < 2:
        return []
    groups: dict[tuple[str, int | None], list[str]] = {}
    for figure, commit in sorted(commits.items()):
        groups.setdefault((commit, repeats.get(figure)), []).append(figure)
    parts = [
        f"{', '.join(figures)} at {commit}"
        + (f" ({runs} run{'s' if runs != 1 else ''})" if runs else "")
        for (commit, runs), figures in groups.items()
    ]
    return ["- Measured: " + "; ".join(parts)]


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def table(results: dict[str, Any]) -> list[str]:
    lines = ["| figure | measured (spread) | goal | met |", "|---|---|---|---|"]
    for label, path, unit, goal, test in GOALS:
        value = _get(results, path)
        if value is None:
            lines.append(f"| {label} | not measured | {goal} {unit if goal else ''} | |")
            continue
        met = "" if test is None else ("yes" if test(float(value)) else "**no**")
        measured = f"{_number(float(value))} {unit}{_spread(results, path)}"
        lines.append(f"| {label} | {measured} | {goal + ' ' + unit if goal else ''} | {met} |")
    return lines


def cpu_table(results: dict[str, Any]) -> list[str]:
    cpu = _get(results, "jobs_per_second_max.cpu_seconds_per_1000_jobs") or {}
    if not cpu:
        return []
    processes = sorted({p for figures in cpu.values() for p in figures if p not in
                        ("spread", "runs")})
    lines = ["| sidecars | " + " | ".join(processes) + " |",
             "|---|" + "---|" * len(processes)]
    for count in sorted(cpu, key=int):
        row = [f"{cpu[count].get(p, 0):.2f}" for p in processes]
        lines.append(f"| {count} | " + " | ".join(row) + " |")
    return lines


def plots(results: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(exist_ok=True)
    made = []
    by_rate = _get(results, "job_overhead_ms.by_rate") or {}
    if by_rate:
        rates = sorted(by_rate, key=float)
        figure, axes = plt.subplots(figsize=(6, 4))
        for quantile in ("p50", "p95", "p99"):
            axes.plot([float(r) for r in rates], [by_rate[r][quantile] for r in rates],
                      marker="o", label=quantile)
        axes.set_xscale("log")
        axes.set_xlabel("offered load (jobs/s)")
        axes.set_ylabel("overhead per job (ms)")
        axes.set_title("Job overhead against offered load (1 sidecar)")
        axes.legend()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(PLOTS / "job_overhead.png", dpi=100)
        plt.close(figure)
        made.append("plots/job_overhead.png")
    by_sidecars = _get(results, "jobs_per_second_max.by_sidecars") or {}
    counts = sorted((k for k in by_sidecars if k.isdigit()), key=int)
    if counts:
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot([int(c) for c in counts], [by_sidecars[c] for c in counts], marker="o")
        axes.set_xlabel("sidecars")
        axes.set_ylabel("jobs/s sustained")
        axes.set_title("Throughput against sidecars (instant engine)")
        axes.set_xticks([int(c) for c in counts])
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(PLOTS / "throughput.png", dpi=100)
        plt.close(figure)
        made.append("plots/throughput.png")
    operator = _get(results, "operator_rss_mb") or {}
    sidecar = _get(results, "sidecar_rss_mb") or {}
    sizes = sorted((k for k in operator if k.isdigit()), key=int)
    if sizes:
        figure, axes = plt.subplots(figsize=(6, 4))
        axes.plot([int(s) for s in sizes], [operator[s] for s in sizes], marker="o",
                  label="operator")
        if sidecar:
            axes.plot([int(s) for s in sizes], [sidecar[s] for s in sizes], marker="o",
                      label="sidecar (peak while draining)")
        axes.set_xscale("log")
        axes.set_xlabel("InferenceJobs present")
        axes.set_ylabel("RSS (MB)")
        axes.set_title("Memory against job count")
        axes.legend()
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(PLOTS / "memory.png", dpi=100)
        plt.close(figure)
        made.append("plots/memory.png")
    return made


def main() -> None:
    results = json.loads(RESULTS.read_text())
    machine = results.get("machine", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (benchmarks/run.py, then benchmarks/report.py) from",
        "`benchmarks/results.json`. Everything runs on one machine: the control plane",
        "(kube-apiserver, etcd, controller-manager, scheduler, kwok), the operator, the",
        "sidecars, the engine and the load generator share its cores. Each figure is the",
        "median of its runs (how many: below), with the spread (min–max) beside it,",
        "except the deep queue and the real-vLLM efficiency (one run each; the efficiency",
        "is the median of its alternating rounds). Nothing here passes or fails.",
        "",
        f"- Machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"{machine.get('memory_gib')} GiB",
        f"- Versions: operator {machine.get('operator')} (commit {machine.get('commit')}), "
        f"Kubernetes {machine.get('kubernetes')}, vLLM {machine.get('vllm')} (CPU build), "
        f"Python {machine.get('python')}",
        f"- Command: `{results.get('command', 'make bench')}`",
        *_commits(results),
        *([f"- Note: {results['note']}"] if results.get("note") else []),
        f"- Date: {machine.get('date')}",
        "",
        "## Results",
        "",
        *table(results),
        "",
    ]
    cpu = cpu_table(results)
    if cpu:
        lines += ["### Where the time goes", "",
                  "CPU seconds of each process per 1,000 jobs while the sidecars drain a "
                  "queue of 1,000 (instant engine):", "", *cpu, ""]
    batch = batch_tables(results)
    if batch:
        lines += ["### A large batch", "", *batch, ""]
    made = plots(results)
    if made:
        lines += ["### Plots", ""] + [f"![{Path(p).stem}]({'benchmarks/' + p})" for p in made]
        lines.append("")
    lines += ["## How each figure is measured", "", METHODS, ""]
    if LIMITS.exists():
        lines += [LIMITS.read_text().strip(), ""]
    if GPU_NOTES.exists():
        lines += [GPU_NOTES.read_text().strip(), ""]
    DOCUMENT.write_text("\n".join(lines))
    print(f"wrote {DOCUMENT}")


METHODS = """\
- **Job overhead**: jobs created at a fixed rate (10, 50, 200 per second; 200, 500 and
  1,000 jobs) for a Ready model with one sidecar (concurrency 64) and the stand-in engine
  answering at once, streaming 20 tokens per chunk as the Deployment's vLLM does
  (`--stream-interval 20`). Per job: from just before the create request to the moment the
  load generator's watch sees it Succeeded, minus the engine's median time per request
  (the stand-in's own measurement). This is what `kubectl wait` would see.
- **Throughput**: 1,000 jobs queued first, then 1, 2 or 4 sidecars start; jobs/s from the
  first job seen Running to the last one Succeeded. CPU from /proc over the same window.
- **apiserver ceiling**: the throughput measurement with 1 or 2 bare workers
  (`benchmarks/ceiling_worker.py`) in place of the sidecars: per job the same watch, the
  same claim and result writes (JSON patches with the same tests and a status of the same
  shape), and nothing else (no engine, no harmony, no lease renewals); the operator runs
  as in the throughput measurement. The box's two cores cap both; the throughput of the
  ceiling is the sidecars' jobs/s over the bare workers' for as many processes. The two
  measurements alternate on the plane, round by round (the order switching every
  round), so that a plane that drifts weighs on both; `results.json` keeps each round's
  ratio (`throughput_of_ceiling.by_round`).
- **apiserver writes**: the apiserver's `apiserver_request_total` for write verbs, before
  and after 20 short jobs run one at a time (the user's create subtracted), and over a
  job streaming for about 30 s (scaled to a minute).
- **Engine efficiency**: 64 requests at once straight to the engine (streaming, as the
  sidecar does), then the same 64 questions as InferenceJobs through one sidecar with
  concurrency 64; output tokens/s of the second over the first, rounds alternating.
- **Model lifecycle**: 50 GptOssModels applied 200 ms apart; times as a watch sees the
  claim and download Job appear, and the Deployment appear after the Job completes (kwok
  completes download pods).
- **Deep queue**: a freshly started operator; 1,000 or 10,000 jobs created at once (16
  concurrent clients) for a Ready model without sidecars; time until `status.queue`
  counts them all; operator RSS, and its CPU over 30 s once they wait (after it has
  marked them Queued and its CPU has settled); then one sidecar drains them while its RSS
  is sampled.
- **Harmony**: rendering an 81-message conversation and parsing a 12,000-token answer fed
  one token at a time, per token.
- **Batches**: an InferenceBatch of 100,000 one-line questions on a volume, 4 shards with
  64 requests in flight each, against the instant stand-in; the real `gptoss-batch`
  workers run as processes for the batch's pods (the tests' kubelet stand-in, with the
  model's batch identity). lines/s from the create to `Succeeded` (pods starting, the
  counting pass, answering and the merge all included); peak RSS of every process sampled
  twice a second; apiserver writes from `apiserver_request_total` over the whole batch.
  Efficiency: the same requests sent straight to the engine with as many in flight as
  the batch keeps (shards × requestsPerShard), then as a batch; output tokens/s of the
  batch (create to `Succeeded`) over the direct run's. The stand-in at the H100 rate
  answers about 200 tokens per line (2,048 lines, 2 × 64 in flight); the real vLLM CPU
  server (tiny random-weights checkpoint) 1,000 lines of up to 64 tokens, 2 × 32 in
  flight."""


if __name__ == "__main__":
    main()
