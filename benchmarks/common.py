"""Shared setup for the benchmarks: a local control plane with the CRDs and the operator."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightkube import Client, KubeConfig, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from gptoss_operator.api.crdgen import all_crds  # noqa: E402
from gptoss_sandbox.cluster import LocalCluster, free_port  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(label: str, seconds: list[float]) -> str:
    return (f"{label}: n={len(seconds)} p50={percentile(seconds, 50) * 1000:.0f} ms "
            f"p99={percentile(seconds, 99) * 1000:.0f} ms "
            f"mean={statistics.mean(seconds) * 1000:.0f} ms max={max(seconds) * 1000:.0f} ms")


@contextmanager
def plane_with_operator(namespace: str) -> Iterator[tuple[LocalCluster, Client]]:
    workdir = Path(tempfile.mkdtemp(prefix="gptoss-bench-"))
    cluster = LocalCluster(workdir / "cluster", progress=lambda line: None).start(timeout=3600)
    operator: subprocess.Popen[bytes] | None = None
    try:
        kube = Client(KubeConfig.from_file(str(cluster.kubeconfig)), field_manager="bench")
        for document in all_crds().values():
            kube.apply(codecs.from_dict(document), force=True)
        time.sleep(2)
        log = open(workdir / "operator.log", "ab")  # noqa: SIM115
        operator = subprocess.Popen(
            [sys.executable, "-m", "gptoss_operator.cli.operator_main", "--liveness", ""],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
                 "GPTOSS_METRICS_PORT": str(free_port())},
            stdout=log, stderr=subprocess.STDOUT,
        )
        kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
        time.sleep(3)
        yield cluster, kube
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=20)
        cluster.stop()
