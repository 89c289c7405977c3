"""InferenceJobs answered by real vLLM (its CPU build) in the model's pod on the real node.

The model is the scripted tiny gpt-oss checkpoint: its weights make it answer any prompt
that ends ready for the assistant with one fixed harmony reply (an analysis message, then
a final one), even at temperature 0.7, so the tests can assert exact text and token counts.
Everything between the user and the engine is the product, run by the kubelet: the
operator's download Job and Deployment, the downloader, the sidecar container.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Pod
from tests.cluster.job_helpers import condition, create_job, gptoss_ask, wait_finished
from tests.cluster.model_helpers import get_model
from tests.conftest import ClusterUnderTest
from tests.node.conftest import (
    MAX_MODEL_LEN,
    MODEL,
    SERVING,
    ServedModel,
    claim_folder,
    container_log,
    engine_api_key,
    engine_successes,
    engine_url,
)

from gptoss_operator.controllers.autoscale.engine_load import EngineLoads
from gptoss_operator.core import naming
from gptoss_operator.engine.harmony import ChatMessage, Harmony
from gptoss_sandbox.tiny_gptoss import REPLY_FILE, SCRIPTED_ANALYSIS, SCRIPTED_ANSWER

pytestmark = [pytest.mark.cluster, pytest.mark.node]

HARMONY = Harmony()


@pytest.fixture(scope="module")
def reply_ids(tiny_checkpoint: dict[str, bytes]) -> list[int]:
    """The token ids of the scripted reply, ``<|return|>`` included."""
    return list(json.loads(tiny_checkpoint[REPLY_FILE])["token_ids"])


def _name() -> str:
    return f"j-{uuid.uuid4().hex[:8]}"


def prompt_tokens(question: str, level: str = "medium") -> int:
    return len(HARMONY.render([ChatMessage("user", question)], level))  # type: ignore[arg-type]


def question_of_length(tokens: int) -> str:
    """A user message whose rendered prompt is exactly ``tokens`` tokens long."""
    base = "Count the apples:"
    extra = tokens - prompt_tokens(base)
    assert extra > 0
    question = base + " apple" * extra
    assert prompt_tokens(question) == tokens, "' apple' is one token each"
    return question


def engine_args(kube: Client) -> list[str]:
    deployment = kube.get(Deployment, naming.deployment_name(MODEL), namespace=SERVING)
    return list(deployment.spec.template.spec.containers[0].args)


def test_the_deployment_args_are_served_by_real_vllm(
    kube: Client, served_model: ServedModel
) -> None:
    del served_model
    args = engine_args(kube)
    assert args[0] == "serve"
    assert "--enable-prefix-caching" in args
    models = httpx.get(
        f"{engine_url(kube)}/v1/models",
        headers={"Authorization": f"Bearer {engine_api_key(kube)}"},
        timeout=10,
    ).json()
    card = models["data"][0]
    assert card["id"] == MODEL
    assert card["max_model_len"] == MAX_MODEL_LEN
    assert card["root"] == args[1]


def test_the_scripted_answer_with_true_usage(
    kube: Client, served_model: ServedModel, reply_ids: list[int]
) -> None:
    del served_model
    name = _name()
    question = "What is recursion?"
    create_job(kube, SERVING, name, MODEL, question)
    status = wait_finished(kube, SERVING, name, timeout=180)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["response"] == SCRIPTED_ANSWER
    assert status["analysis"] == SCRIPTED_ANALYSIS
    assert status["commentary"] == ""
    assert status["finishReason"] == "stop"
    assert condition(status, "Complete")["reason"] == "Completed"
    assert "rawOutput" not in status
    usage = status["usage"]
    assert usage["completionTokens"] == len(reply_ids)  # <|return|> included
    assert usage["promptTokens"] == prompt_tokens(question)
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    assert status["attempts"] == 1
    assert status["tokensPerSecond"] > 0


def test_max_tokens_cut_gives_length(kube: Client, served_model: ServedModel) -> None:
    del served_model
    name = _name()
    create_job(kube, SERVING, name, MODEL, "Hi", maxTokens=12)
    status = wait_finished(kube, SERVING, name, timeout=180)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["finishReason"] == "length"
    assert condition(status, "Complete")["reason"] == "TokenLimit"
    assert status["usage"]["completionTokens"] == 12
    # 12 tokens end inside the final message's header: nothing of the answer yet.
    assert status["analysis"] == SCRIPTED_ANALYSIS
    assert status["response"] == ""
    assert "maxTokens (12)" in status["message"]


def test_sixty_four_jobs_in_flight_through_one_sidecar_each_answered_once(
    kube: Client, served_model: ServedModel
) -> None:
    del served_model
    before = engine_successes(kube)
    names = [_name() for _ in range(64)]
    for name in names:
        create_job(kube, SERVING, name, MODEL, f"Question {name}")
    for name in names:
        status = wait_finished(kube, SERVING, name, timeout=600)
        assert status["phase"] == "Succeeded", (name, status.get("message"))
        assert status["response"] == SCRIPTED_ANSWER
        assert status["attempts"] == 1
    assert engine_successes(kube) - before == 64


def test_a_prompt_over_the_context_fails_naming_the_limit(
    kube: Client, served_model: ServedModel
) -> None:
    del served_model
    name = _name()
    create_job(kube, SERVING, name, MODEL, question_of_length(MAX_MODEL_LEN + 50))
    status = wait_finished(kube, SERVING, name, timeout=180)
    assert status["phase"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "PromptTooLong"
    assert f"the prompt is {MAX_MODEL_LEN + 50} tokens" in failed["message"]
    assert f"(max-model-len) is {MAX_MODEL_LEN}" in failed["message"]
    assert status["attempts"] == 1, "a refusal is not retried"


def test_prompt_plus_max_tokens_over_the_context_ends_honestly(
    kube: Client, served_model: ServedModel
) -> None:
    del served_model
    name = _name()
    room = 8
    question = question_of_length(MAX_MODEL_LEN - room)
    create_job(kube, SERVING, name, MODEL, question, maxTokens=200)
    status = wait_finished(kube, SERVING, name, timeout=180)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["finishReason"] == "length"
    assert condition(status, "Complete")["reason"] == "ContextLimit"
    assert status["usage"]["completionTokens"] == room
    window = rf"\(prompt \d+ \+ output 8 = {MAX_MODEL_LEN} tokens of {MAX_MODEL_LEN}\)"
    assert re.search("context window " + window, status["message"]), status["message"]
    assert "raise maxTokens" not in status["message"]


def test_gptoss_ask_gets_the_answer(cluster: ClusterUnderTest, served_model: ServedModel) -> None:
    del served_model
    result = gptoss_ask(
        cluster.kubeconfig, SERVING, MODEL, "--json", "--quiet", "Say hello", timeout=300
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["response"] == SCRIPTED_ANSWER
    assert output["analysis"] == SCRIPTED_ANALYSIS
    assert output["reasoning_level"] == "medium"


def test_the_download_put_the_checkpoint_where_vllm_read_it(
    kube: Client, cluster: ClusterUnderTest, served_model: ServedModel
) -> None:
    job = next(iter(kube.list(Job, namespace=SERVING, labels={naming.MODEL_LABEL: MODEL})))
    (download,) = kube.list(Pod, namespace=SERVING, labels={"job-name": job.metadata.name})
    # The kubelet read the downloader's termination log into the pod's status.
    (state,) = download.status.containerStatuses
    assert json.loads(state.state.terminated.message)["reason"] == "Downloaded"
    model_dir = engine_args(kube)[1]
    digest = model_dir.rsplit("/", 1)[1]
    volume = claim_folder(kube, SERVING, f"{MODEL}-weights")
    marker = json.loads((volume / "served" / f"{digest}.json").read_text())
    files = {entry["path"] for entry in marker["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    log = container_log(cluster, SERVING, served_model.pod.metadata.name, "vllm")
    assert model_dir.startswith("/data/served/")
    assert f"--model {model_dir}" in log or f"model='{model_dir}'" in log, log[-2000:]


def test_the_engine_runs_as_the_restricted_pod_promises(
    kube: Client, served_model: ServedModel
) -> None:
    """Read from the kernel, for every process of the vLLM container: uid and gid 10001,
    no capabilities, no new privileges, a read-only root and weights, writable scratch."""
    pod = kube.get(Pod, served_model.pod.metadata.name, namespace=SERVING)
    (engine,) = [s for s in pod.status.containerStatuses if s.name == "vllm"]
    container_id = engine.containerID.split("://", 1)[1]
    processes = [
        entry
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and container_id in _read(entry / "cgroup")
    ]
    assert len(processes) >= 2, "the API server and its engine core"
    for process in processes:
        status = dict(
            line.split(":\t", 1) for line in _read(process / "status").splitlines() if ":\t" in line
        )
        assert status["Uid"].split() == ["10001"] * 4, (process, status["Uid"])
        assert status["Gid"].split() == ["10001"] * 4, (process, status["Gid"])
        assert int(status["CapEff"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"
        mounts = {
            fields[4]: fields[5].split(",")
            for fields in (line.split() for line in _read(process / "mountinfo").splitlines())
        }
        assert "ro" in mounts["/"], mounts["/"]
        assert "ro" in mounts["/data"], mounts["/data"]
        assert "rw" in mounts["/tmp"], "the scratch emptyDir"
        assert "rw" in mounts["/dev/shm"]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_the_endpoint_requires_the_models_api_key(
    kube: Client, cluster: ClusterUnderTest, served_model: ServedModel
) -> None:
    """vLLM refuses /v1 without the key from the Secret the model's status names; the
    sidecar has it; probes stay open; the key is in no manifest, status or log."""
    url = engine_url(kube)
    refused = httpx.get(f"{url}/v1/models", timeout=10)
    assert refused.status_code == 401
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    status = get_model(kube, SERVING, MODEL)["status"]
    assert status["apiKeySecretRef"] == {"name": f"{MODEL}-api-key", "key": "token"}
    key = engine_api_key(kube)
    assert len(key) >= 32
    deployment = kube.get(Deployment, naming.deployment_name(MODEL), namespace=SERVING)
    pod = served_model.pod.metadata.name
    logs = [container_log(cluster, SERVING, pod, c) for c in ("vllm", "sidecar")]
    for text in (json.dumps(status), json.dumps(deployment.to_dict()), *logs):
        assert key not in text


def test_the_autoscaler_reads_real_vllms_load(kube: Client, served_model: ServedModel) -> None:
    """The gauges the autoscaler adds up are those vLLM exports: 0 when idle, and the
    requests it is running or holding while it works."""
    del served_model
    url = httpx.URL(engine_url(kube))
    key = ("ns", MODEL)
    loads = EngineLoads({key: [str(url.host)]}, lambda: [key], interval=1.0, port=url.port or 80)
    prompt = HARMONY.render([ChatMessage("user", "What is recursion?")], "medium")
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 64, "temperature": 0.7}
    headers = {"Authorization": f"Bearer {engine_api_key(kube)}"}

    async def scenario() -> tuple[int | None, int]:
        async with httpx.AsyncClient(timeout=300) as client:
            await loads.refresh(client)
            idle = loads(*key)
            sent = asyncio.gather(
                *(
                    client.post(f"{url}/v1/completions", json=body, headers=headers)
                    for _ in range(6)
                )
            )
            busiest = 0
            while not sent.done():
                await loads.refresh(client)
                busiest = max(busiest, loads(*key) or 0)
                await asyncio.sleep(0.01)
            replies = await sent
            assert all(reply.status_code == 200 for reply in replies)
            return idle, busiest

    idle, busiest = asyncio.run(scenario())
    assert idle == 0
    assert 1 <= busiest <= 6


# Longer than the sidecar's liveness budget (6 failures 20 s apart): a probe the kubelet
# cannot run restarts the container within it.
STEADY_SECONDS = 180


def _ready_since(pod: Pod) -> datetime.datetime | None:
    """When the pod last became Ready, if it is Ready: the start of its unbroken run."""
    for item in pod.status.conditions or []:
        if item.type == "Ready" and item.status == "True":
            return item.lastTransitionTime
    return None


def test_the_model_pod_served_all_this_steadily_without_restarts_and_its_probes_ran(
    kube: Client, served_model: ServedModel
) -> None:
    """Last in this module, so its window holds the work above: both containers stayed
    Ready, without a break, for longer than the liveness budget (the kubelet moves the
    Ready condition's transition time at every break), with no restart, and the kubelet
    could run every probe: one it cannot resolve (a port name the container does not
    have) is thrown away with a Warning, so it would never restart anything."""
    name = served_model.pod.metadata.name
    since = _ready_since(kube.get(Pod, name, namespace=SERVING))
    assert since is not None, "the model's pod is not Ready"
    ran = (datetime.datetime.now(datetime.UTC) - since).total_seconds()
    time.sleep(max(0.0, STEADY_SECONDS + 1 - ran))  # the rest of the window
    pod = kube.get(Pod, name, namespace=SERVING)
    assert _ready_since(pod) == since, "the pod was not Ready for a while"
    assert (datetime.datetime.now(datetime.UTC) - since).total_seconds() >= STEADY_SECONDS
    restarts = {s.name: s.restartCount for s in pod.status.containerStatuses}
    assert restarts == {"vllm": 0, "sidecar": 0}, restarts
    errored = [
        event.message
        for event in kube.list(Event, namespace=SERVING, fields={"involvedObject.name": name})
        if "probe errored" in (event.message or "")
    ]
    assert not errored, errored
