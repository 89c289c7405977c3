"""Garbage from the real engine: a tiny gpt-oss checkpoint with random weights.

Its output is not harmony. Whatever it says is kept in ``rawOutput`` and the job ends with
a reason that says what happened. Greedy sampling (temperature 0) makes the output a
function of the prompt, so the test asks vLLM directly for the same completion and checks
the job kept exactly that text.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from gptoss_operator.harmony import ChatMessage, Harmony
from gptoss_sandbox.engine_venv import EngineVenv
from gptoss_sandbox.real_engine import VllmServer, build_tiny_checkpoint
from tests.cluster.job_helpers import (
    SidecarProcess,
    condition,
    create_job,
    job_status,
    wait_finished,
)
from tests.cluster.model_helpers import create_model, wait_for_phase
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.engine]


@dataclass
class Served:
    kube: Client
    namespace: str
    vllm: VllmServer
    harmony: Harmony


@pytest.fixture(scope="module")
def served(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    engine_venv: EngineVenv,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    del operator, engine_venv
    work = tmp_path_factory.mktemp("random-engine")
    checkpoint = build_tiny_checkpoint(work / "checkpoint", "random")
    namespace = f"t-rnd-{uuid.uuid4().hex[:8]}"
    kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
    create_model(kube, namespace, "noise", source={"repo": "openai/gpt-oss-20b"})
    wait_for_phase(kube, namespace, "noise", "Ready")
    vllm = VllmServer(
        checkpoint, served_model_name="noise", max_model_len=2048, log_path=work / "vllm.log"
    )
    vllm.start()
    sidecar = None
    try:
        vllm.wait_healthy(timeout=600)
        sidecar = SidecarProcess(
            cluster.kubeconfig, namespace, "noise", "noise-0", vllm.url, work
        ).start()
        yield Served(kube, namespace, vllm, Harmony())
    finally:
        if sidecar is not None:
            sidecar.stop()
        vllm.stop()
        kube.delete(Namespace, namespace)


def _direct_output(served: Served, question: str, max_tokens: int) -> tuple[str, str]:
    """(text of the generated tokens, finish reason) for the prompt the sidecar sends."""
    prompt = served.harmony.render([ChatMessage("user", question)], "medium")
    body = {
        "model": "noise",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stop_token_ids": served.harmony.stop_token_ids,
        "return_token_ids": True,
        "skip_special_tokens": False,
    }
    answer = httpx.post(f"{served.vllm.url}/v1/completions", json=body, timeout=120).json()
    choice = answer["choices"][0]
    tokens = [t for t in choice["token_ids"] if t != 199999]  # <|endoftext|> is not kept
    return served.harmony.decode(tokens), choice["finish_reason"]


def test_garbage_past_any_header_is_kept_and_the_job_fails_as_malformed(
    served: Served,
) -> None:
    question = "Tell me a story"
    expected, finish = _direct_output(served, question, 100)
    assert finish == "length", "random weights ramble on to the limit"
    name = f"j-{uuid.uuid4().hex[:8]}"
    create_job(served.kube, served.namespace, name, "noise", question, maxTokens=100, temperature=0)
    status = wait_finished(served.kube, served.namespace, name, timeout=120)
    assert status["rawOutput"] == expected
    assert expected.strip(), "the model said something"
    assert status["phase"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "MalformedOutput"
    assert "not valid harmony" in failed["message"]
    assert "generation stopped at maxTokens (100)" in failed["message"]
    assert status["finishReason"] == "error"
    assert status["usage"]["completionTokens"] == 100


def test_garbage_cut_short_is_kept_and_says_where_it_stopped(served: Served) -> None:
    question = "Tell me a story"
    expected, _ = _direct_output(served, question, 16)
    name = f"j-{uuid.uuid4().hex[:8]}"
    create_job(served.kube, served.namespace, name, "noise", question, maxTokens=16, temperature=0)
    status = wait_finished(served.kube, served.namespace, name, timeout=120)
    assert status["rawOutput"] == expected
    # 16 tokens of garbage never close a message header: cut by maxTokens, text kept.
    assert status["phase"] == "Succeeded", status.get("message")
    assert condition(status, "Complete")["reason"] == "TokenLimit"
    assert "inside a message header" in status["message"]
    assert status["response"] == ""


# Reasons that would blame the job for what the platform did.
PLATFORM_FAILURES = {"BackoffLimitExceeded", "EngineUnavailable", "WorkerLost", "SidecarError"}


@pytest.mark.faults
def test_real_vllm_stopped_mid_generation_and_restarted_fails_no_job(served: Served) -> None:
    # A prompt whose greedy garbage runs to the token limit (random weights emit a stop
    # token early for some prompts): seconds of generation, a window to stop vLLM in. One job,
    # so its batch (and greedy output) is the same as the direct request's.
    tokens = 1500
    for question in ("Tell me a story", "Tell me a long story", "Write a poem", "Go on"):
        expected, finish = _direct_output(served, question, tokens)
        if finish == "length":
            break
    assert finish == "length", "no candidate prompt generates to the limit"
    name = f"r-{uuid.uuid4().hex[:8]}"
    create_job(
        served.kube, served.namespace, name, "noise", question, maxTokens=tokens, temperature=0
    )

    def generating() -> bool:
        status = job_status(served.kube, served.namespace, name)
        done = (status.get("usage") or {}).get("completionTokens", 0)
        # Progress comes with the lease renewals, every second: a fast stream must not
        # starve them (it did, until the sidecar yielded between chunks).
        return status.get("phase") == "Running" and 0 < done < tokens // 2

    wait_for(generating, timeout=120, interval=0.05, message="the job streaming")
    served.vllm.stop()
    wait_for(
        lambda: (
            condition(job_status(served.kube, served.namespace, name), "Scheduled").get("reason")
            == "EngineUnavailable"
        ),
        timeout=60,
        message="the job handed back while vLLM is down",
    )
    served.vllm.start().wait_healthy(timeout=600)
    status = wait_finished(served.kube, served.namespace, name, timeout=300)
    ended = condition(status, "Complete") or condition(status, "Failed")
    assert ended["reason"] not in PLATFORM_FAILURES, status.get("message")
    assert status["rawOutput"] == expected, "the restarted engine's answer, whole"
    assert status["usage"]["completionTokens"] == tokens
    assert status["attempts"] == 2
    assert status["voidedAttempts"] == 1
