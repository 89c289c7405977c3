"""Garbage from real vLLM: a tiny gpt-oss checkpoint with random weights, served on the
real node as any model is.

Its output is not harmony. Whatever it says is kept in ``rawOutput`` and the job ends with
a reason that says what happened. Greedy sampling (temperature 0) makes the output a
function of the prompt, so the tests ask vLLM directly for the same completion and check
the job kept exactly that text. Under a ``json_schema`` response format the same garbage
becomes a valid answer, every time, at temperature 1.0: the grammar goes to vLLM with the
request; the control, the format described but not enforced, gets none. Last, the vLLM
container is stopped mid-generation (a ``crictl stop``, as a node's runtime would) and the
kubelet restarts it: no job fails.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import jsonschema
import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Pod
from tests.cluster.job_helpers import condition, create_job, job_status, wait_finished
from tests.node.conftest import (
    ChartRelease,
    HubService,
    engine_api_key,
    engine_url,
    own_model,
)
from tests.support import wait_for

from gptoss_operator.core import naming
from gptoss_operator.engine import structured
from gptoss_operator.engine.harmony import ChatMessage, Harmony
from gptoss_sandbox.images import ImageArchive
from gptoss_sandbox.node import RealNode
from gptoss_sandbox.real_engine import build_tiny_checkpoint

pytestmark = [pytest.mark.cluster, pytest.mark.node]

NOISE = "noise"
NOISE_REPO = "openai/gpt-oss-noise"
HARMONY = Harmony()


@pytest.fixture(scope="module")
def noise(
    kube: Client,
    chart_release: ChartRelease,
    vllm_image: ImageArchive,
    hub_service: HubService,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The random model, Ready in a namespace of its own."""
    del chart_release
    checkpoint = build_tiny_checkpoint(tmp_path_factory.mktemp("noise") / "random", "random")
    with own_model(kube, vllm_image, hub_service, checkpoint, NOISE, NOISE_REPO) as namespace:
        yield namespace


def direct_output(kube: Client, namespace: str, question: str, max_tokens: int) -> tuple[str, str]:
    """(text of the generated tokens, finish reason) for the prompt the sidecar sends."""
    body = {
        "model": NOISE,
        "prompt": HARMONY.render([ChatMessage("user", question)], "medium"),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stop_token_ids": HARMONY.stop_token_ids,
        "return_token_ids": True,
        "skip_special_tokens": False,
    }
    answer = httpx.post(
        f"{engine_url(kube, namespace, NOISE)}/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {engine_api_key(kube, namespace, NOISE)}"},
        timeout=600,
    ).json()
    choice = answer["choices"][0]
    tokens = [t for t in choice["token_ids"] if t != 199999]  # <|endoftext|> is not kept
    return HARMONY.decode(tokens), choice["finish_reason"]


def test_garbage_past_any_header_is_kept_and_the_job_fails_as_malformed(
    kube: Client, noise: str
) -> None:
    question = "Tell me a story"
    expected, finish = direct_output(kube, noise, question, 100)
    assert finish == "length", "random weights ramble on to the limit"
    name = f"j-{uuid.uuid4().hex[:8]}"
    create_job(kube, noise, name, NOISE, question, maxTokens=100, temperature=0)
    status = wait_finished(kube, noise, name, timeout=300)
    assert status["rawOutput"] == expected
    assert expected.strip(), "the model said something"
    assert status["phase"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "MalformedOutput"
    assert "not valid harmony" in failed["message"]
    assert "generation stopped at maxTokens (100)" in failed["message"]
    assert status["finishReason"] == "error"
    assert status["usage"]["completionTokens"] == 100


def test_garbage_cut_short_is_kept_and_says_where_it_stopped(kube: Client, noise: str) -> None:
    question = "Tell me a story"
    expected, _ = direct_output(kube, noise, question, 16)
    name = f"j-{uuid.uuid4().hex[:8]}"
    create_job(kube, noise, name, NOISE, question, maxTokens=16, temperature=0)
    status = wait_finished(kube, noise, name, timeout=300)
    assert status["rawOutput"] == expected
    # 16 tokens of garbage never close a message header: cut by maxTokens, text kept.
    assert status["phase"] == "Succeeded", status.get("message")
    assert condition(status, "Complete")["reason"] == "TokenLimit"
    assert "inside a message header" in status["message"]
    assert status["response"] == ""


VERDICT = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "level": {"enum": ["low", "high"]}},
    "required": ["ok", "level"],
    "additionalProperties": False,
}
SAMPLES = 20
# Enough that the reserve (a quarter) holds the longest answer the grammar lets VERDICT
# take: its header (6 tokens), then one token per character at worst: its longest compact
# JSON, and whitespace in its 8 gaps (and before and after it) of JSON_WHITESPACE at most.
VERDICT_MAX_TOKENS = 1024
VERDICT_LONGEST = 6 + len('{"ok":false,"level":"high"}') + 10 * structured.JSON_WHITESPACE


def test_a_json_schema_makes_random_weights_answer_with_valid_json(
    kube: Client, noise: str
) -> None:
    """#26: 20 samples at temperature 1.0, each a valid answer (the analysis free, bounded
    to leave room for the answer); the control, with ``strict: false``, gets no valid one.
    The random weights rarely end their analysis: it runs to its budget, and the answer
    must fit what is left."""
    reserve = VERDICT_MAX_TOKENS - structured.free_budget(VERDICT_MAX_TOKENS)
    assert reserve >= VERDICT_LONGEST
    names: dict[bool, list[str]] = {True: [], False: []}
    for strict, names_ in names.items():
        for index in range(SAMPLES):
            name = f"j-{'s' if strict else 'f'}{index}-{uuid.uuid4().hex[:6]}"
            format_ = {"name": "verdict", "schema": VERDICT, "strict": strict}
            create_job(
                kube,
                noise,
                name,
                NOISE,
                f"Give a verdict ({index}).",
                maxTokens=VERDICT_MAX_TOKENS,
                temperature=1.0,
                responseFormat={"type": "json_schema", "jsonSchema": format_},
            )
            names_.append(name)
    constrained = [wait_finished(kube, noise, name, timeout=600) for name in names[True]]
    free = [wait_finished(kube, noise, name, timeout=600) for name in names[False]]
    for status in constrained:
        assert status["phase"] == "Succeeded", status.get("message")
        assert status["finishReason"] == "stop"
        jsonschema.validate(status["responseJSON"], VERDICT)
        assert json.loads(status["response"]) == status["responseJSON"]
    # Garbage: not harmony, or cut in its analysis; never an answer that parses.
    assert not [status for status in free if "responseJSON" in status]
    assert not [status for status in free if status.get("response")]


# Reasons that would blame the job for what the platform did.
PLATFORM_FAILURES = {"BackoffLimitExceeded", "EngineUnavailable", "WorkerLost", "SidecarError"}


@pytest.mark.faults
def test_vllm_stopped_mid_generation_and_restarted_by_the_kubelet_fails_no_job(
    kube: Client, real_node: RealNode, noise: str
) -> None:
    # A prompt whose greedy garbage runs to the token limit (random weights emit a stop
    # token early for some prompts): seconds of generation, a window to stop vLLM in. One
    # job, so its batch (and greedy output) is the same as the direct request's.
    tokens = 1500
    for question in ("Tell me a story", "Tell me a long story", "Write a poem", "Go on"):
        expected, finish = direct_output(kube, noise, question, tokens)
        if finish == "length":
            break
    assert finish == "length", "no candidate prompt generates to the limit"
    name = f"r-{uuid.uuid4().hex[:8]}"
    create_job(kube, noise, name, NOISE, question, maxTokens=tokens, temperature=0)

    def generating() -> bool:
        status = job_status(kube, noise, name)
        done = (status.get("usage") or {}).get("completionTokens", 0)
        # Progress comes with the lease renewals, every second: a fast stream must not
        # starve them (it did, until the sidecar yielded between chunks).
        return status.get("phase") == "Running" and 0 < done < tokens // 2

    wait_for(generating, timeout=300, interval=0.05, message="the job streaming")
    (pod,) = kube.list(Pod, namespace=noise, labels=naming.server_selector(NOISE))
    (engine,) = [s for s in pod.status.containerStatuses if s.name == "vllm"]
    assert real_node.crictl(["stop", engine.containerID.split("://", 1)[1]])
    wait_for(
        lambda: (
            condition(job_status(kube, noise, name), "Scheduled").get("reason")
            == "EngineUnavailable"
        ),
        timeout=60,
        message="the job handed back while vLLM is down",
    )
    status = wait_finished(kube, noise, name, timeout=900)
    ended = condition(status, "Complete") or condition(status, "Failed")
    assert ended["reason"] not in PLATFORM_FAILURES, status.get("message")
    assert status["rawOutput"] == expected, "the restarted engine's answer, whole"
    assert status["usage"]["completionTokens"] == tokens
    assert status["attempts"] == 2
    assert status["voidedAttempts"] == 1
    restarted = kube.get(Pod, pod.metadata.name, namespace=noise)
    counts = {s.name: s.restartCount for s in restarted.status.containerStatuses}
    assert counts == {"vllm": 1, "sidecar": 0}, "the kubelet restarted vLLM, and only it"
