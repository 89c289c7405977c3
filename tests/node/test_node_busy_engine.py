"""A saturated engine on the real node (#23, defect 5): real vLLM admitting one sequence at
a time (``--max-num-seqs 1``), its queue filled by requests sent straight to it, and jobs
and a batch of the model waiting behind them for minutes.

vLLM sends nothing while a request waits in its queue. Nothing of ours may read that
silence as a failure while the engine is healthy: jobs that may not fail once
(``backoffLimit: 0``) and lines with one attempt each all succeed, after waiting past the
read timeout that once charged such a wait, through a dozen of the clients' quiet periods.
The sidecar and the shards keep no more in flight than the engine admits.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from lightkube import Client
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Namespace, Pod
from tests.cluster.job_helpers import create_job, wait_finished
from tests.cluster.model_helpers import create_model, wait_for_phase
from tests.conftest import ClusterUnderTest
from tests.node.conftest import (
    MAX_MODEL_LEN,
    TINY_REPO,
    ChartRelease,
    HubService,
    claim_folder,
    container_log,
    engine_api_key,
    engine_metric,
    engine_url,
    restricted_namespace,
)
from tests.node.test_node_batches import create_batch, request_line, wait_batch_finished
from tests.support import wait_for

from gptoss_operator.core import naming
from gptoss_operator.engine.client import QUIET_SECONDS
from gptoss_operator.engine.harmony import ChatMessage, Harmony
from gptoss_sandbox import node
from gptoss_sandbox.images import ImageArchive
from gptoss_sandbox.tiny_gptoss import SCRIPTED_ANSWER

pytestmark = [pytest.mark.cluster, pytest.mark.node]

BUSY = "busy"
HARMONY = Harmony()
# The read timeout the engine client had before, which also covered the wait for the first
# byte: a request queued longer than this was charged as a failure.
OLD_READ_TIMEOUT = 300.0
# How long the blockers keep the engine busy ahead of the product's requests: past the old
# timeout, through a dozen of the clients' quiet periods, each of which ends in asking the
# engine whether to wait on.
HELD_SECONDS = OLD_READ_TIMEOUT + 2 * QUIET_SECONDS
WAITING_ON = "the engine is healthy and holds"


@dataclass(frozen=True)
class BusyModel:
    namespace: str
    pod: Pod


@pytest.fixture(scope="module")
def busy(
    kube: Client, chart_release: ChartRelease, vllm_image: ImageArchive, hub_service: HubService
) -> Iterator[BusyModel]:
    """The scripted tiny model admitting one sequence at a time, Ready in a namespace of
    its own; deleted after the module (its vLLM takes a core)."""
    del chart_release
    namespace = f"busy-{uuid.uuid4().hex[:6]}"
    restricted_namespace(kube, namespace)
    spec = node.model_spec(vllm_image.reference, TINY_REPO, hub_service.endpoint, MAX_MODEL_LEN)
    spec["serving"]["extraArgs"] = [*spec["serving"]["extraArgs"], "--max-num-seqs", "1"]
    create_model(kube, namespace, BUSY, **spec)
    try:
        wait_for_phase(kube, namespace, BUSY, "Ready", timeout=900)
        (pod,) = kube.list(Pod, namespace=namespace, labels=naming.server_selector(BUSY))
        yield BusyModel(namespace, pod)
    finally:
        kube.delete(Namespace, namespace)


BLOCKER_PROMPT = HARMONY.render([ChatMessage("user", "Count to a thousand.")], "low")


def blocker_body(max_tokens: int) -> dict[str, Any]:
    """A request that generates exactly ``max_tokens`` tokens (end-of-sequence ignored)."""
    return {
        "model": BUSY,
        "prompt": BLOCKER_PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


class Blockers:
    """``count`` requests sent at once straight to vLLM from a thread of their own."""

    def __init__(self, url: str, key: str, body: dict[str, Any], count: int) -> None:
        self.url, self.key, self.body, self.count = url, key, body, count
        self.statuses: list[int] = []
        self._thread = threading.Thread(target=lambda: asyncio.run(self._send()), daemon=True)

    async def _send(self) -> None:
        limits = httpx.Limits(max_connections=self.count + 1)
        async with httpx.AsyncClient(limits=limits, timeout=3600) as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        f"{self.url}/v1/completions",
                        json=self.body,
                        headers={"Authorization": f"Bearer {self.key}"},
                    )
                    for _ in range(self.count)
                )
            )
        self.statuses = [a.status_code for a in answers]

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the blockers never finished"


def env_of(container: Any, name: str) -> str | None:
    return next((e.value for e in container.env or [] if e.name == name), None)


# It holds the engine busy for HELD_SECONDS by design, measures one blocker first and runs
# its jobs and batch after: more than the suite's default 600 s on a slow machine.
@pytest.mark.timeout(HELD_SECONDS * 4)
def test_work_behind_a_saturated_engine_waits_and_is_never_charged(
    kube: Client, cluster: ClusterUnderTest, busy: BusyModel
) -> None:
    namespace = busy.namespace
    url, key = engine_url(kube, namespace, BUSY), engine_api_key(kube, namespace, BUSY)

    # The sidecar keeps no more jobs at the engine than it admits.
    (sidecar,) = [c for c in busy.pod.spec.containers if c.name == "sidecar"]
    assert env_of(sidecar, "GPTOSS_CONCURRENCY") == "1"

    # One blocker alone: how long the engine takes for one, to size the queue ahead.
    max_tokens = MAX_MODEL_LEN - len(BLOCKER_PROMPT)  # the whole context
    started = time.monotonic()
    alone = httpx.post(
        f"{url}/v1/completions",
        json=blocker_body(max_tokens),
        headers={"Authorization": f"Bearer {key}"},
        timeout=600,
    )
    one = time.monotonic() - started
    assert alone.status_code == 200, alone.text
    assert alone.json()["usage"]["completion_tokens"] == max_tokens
    count = math.ceil(HELD_SECONDS / one) + 1
    blockers = Blockers(url, key, blocker_body(max_tokens), count)
    blockers.start()
    wait_for(
        lambda: engine_metric(kube, "vllm:num_requests_waiting", namespace, BUSY) >= count - 1,
        timeout=60,
        interval=0.2,
        message=f"{count - 1} blockers waiting in vLLM's queue",
    )

    # Behind them: jobs that may not fail once, and a batch whose lines get one attempt.
    jobs = [f"wait-{i}" for i in range(3)]
    for name in jobs:
        create_job(kube, namespace, name, BUSY, f"Question {name}", backoffLimit=0)
    lines = [request_line(i) for i in range(4)]
    create_batch(
        kube, "behind", lines, namespace=namespace, model=BUSY, shards=2, maxLineAttempts=1
    )

    blockers.join(timeout=count * one * 3 + 600)
    assert blockers.statuses == [200] * count
    statuses = [wait_finished(kube, namespace, name, timeout=600) for name in jobs]
    batch = wait_batch_finished(kube, "behind", namespace=namespace)

    for status in statuses:
        assert status["phase"] == "Succeeded", status.get("message")
        assert status["response"] == SCRIPTED_ANSWER
        assert status["attempts"] == 1
        assert not status.get("voidedAttempts")
    # The first job the sidecar sent waited behind the blockers past the old timeout, and
    # the sidecar asked the engine after each quiet period and waited on.
    longest = max(s["timeToFirstTokenSeconds"] for s in statuses)
    print(f"one blocker {one:.1f}s, {count} blockers, longest wait for a job {longest:.0f}s")
    assert longest > OLD_READ_TIMEOUT
    log = container_log(cluster, namespace, busy.pod.metadata.name, "sidecar")
    assert log.count(WAITING_ON) >= OLD_READ_TIMEOUT // QUIET_SECONDS, log[-3000:]

    assert batch["phase"] == "Succeeded", batch
    assert batch["counts"] == {"total": 4, "succeeded": 4, "failed": 0, "inFlight": 0}
    answers = (claim_folder(kube, namespace, "behind-out") / "out" / "output.jsonl").read_text()
    assert sorted(json.loads(a)["custom_id"] for a in answers.splitlines()) == [
        f"req-{i}" for i in range(4)
    ]
    # The shards together keep no more at the engine than the sidecar leaves room for:
    # nothing, with one sequence admitted, so one request each, the least that advances.
    shards = kube.get(Job, naming.batch_shards_job_name("behind"), namespace=namespace)
    (worker,) = shards.spec.template.spec.containers
    assert json.loads(env_of(worker, "GPTOSS_BATCH_PLAN") or "{}")["requestsPerShard"] == 1
    shard_logs = [
        container_log(cluster, namespace, pod.metadata.name, worker.name)
        for pod in kube.list(
            Pod,
            namespace=namespace,
            labels={"job-name": naming.batch_shards_job_name("behind")},
        )
    ]
    assert any(WAITING_ON in text for text in shard_logs), shard_logs
