"""InferenceJobs answered by the real vLLM (CPU build of the pinned release).

The model is the scripted tiny gpt-oss checkpoint: its weights make it answer any prompt
that ends ready for the assistant with one fixed harmony reply (an analysis message, then
a final one), even at temperature 0.7, so the tests can assert exact text and token counts.
Everything between the user and the engine is the product: the operator's download Job
and Deployment, the downloader, the sidecar.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace

from gptoss_operator.engine_load import EngineLoads
from gptoss_operator.harmony import ChatMessage, Harmony
from gptoss_sandbox import pod_sandbox
from gptoss_sandbox.engine_venv import EngineVenv
from gptoss_sandbox.fake_hub import FakeHub
from gptoss_sandbox.real_engine import build_tiny_checkpoint, checkpoint_files
from gptoss_sandbox.tiny_gptoss import REPLY_FILE, SCRIPTED_ANALYSIS, SCRIPTED_ANSWER
from tests.cluster.batch_pods import BatchPods
from tests.cluster.job_helpers import condition, create_job, gptoss_ask, wait_finished
from tests.cluster.model_helpers import get_model
from tests.cluster.test_inference_batches import (
    batch_identity,
    create_batch,
    create_claim,
    read_jsonl,
    wait_phase,
)
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.engine.deploy import Deployed, deploy

pytestmark = [pytest.mark.cluster, pytest.mark.engine]

REPO = "openai/gpt-oss-tiny"
MAX_MODEL_LEN = 1024


@dataclass
class Served:
    kube: Client
    cluster: ClusterUnderTest
    deployed: Deployed
    reply_ids: list[int]
    harmony: Harmony

    @property
    def namespace(self) -> str:
        return self.deployed.namespace


@pytest.fixture(scope="module")
def served(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    engine_venv: EngineVenv,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    del operator, engine_venv
    work = tmp_path_factory.mktemp("real-engine")
    checkpoint = build_tiny_checkpoint(work / "checkpoint", "scripted")
    reply = json.loads((checkpoint / REPLY_FILE).read_text())
    namespace = f"t-vllm-{uuid.uuid4().hex[:8]}"
    kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
    with FakeHub() as hub:
        hub.add_repo(REPO, checkpoint_files(checkpoint))
        deployed = deploy(
            kube,
            cluster,
            namespace,
            "tiny",
            hub,
            REPO,
            work,
            serving={"maxModelLen": MAX_MODEL_LEN},
        )
    print(f"vLLM healthy after {deployed.vllm_start_seconds:.1f}s; logs in {work}")
    try:
        yield Served(kube, cluster, deployed, list(reply["token_ids"]), Harmony())
    finally:
        deployed.sidecar.stop()
        deployed.vllm.stop()
        kube.delete(Namespace, namespace)


def _name() -> str:
    return f"j-{uuid.uuid4().hex[:8]}"


def _prompt_tokens(served: Served, question: str, level: str = "medium") -> int:
    return len(served.harmony.render([ChatMessage("user", question)], level))  # type: ignore[arg-type]


def _question_of_length(served: Served, tokens: int) -> str:
    """A user message whose rendered prompt is exactly ``tokens`` tokens long."""
    base = "Count the apples:"
    extra = tokens - _prompt_tokens(served, base)
    assert extra > 0
    question = base + " apple" * extra
    assert _prompt_tokens(served, question) == tokens, "' apple' is one token each"
    return question


def _successes(served: Served) -> float:
    """vLLM's own count of finished requests."""
    text = httpx.get(f"{served.deployed.vllm.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )


def test_the_deployment_args_are_served_by_real_vllm(served: Served) -> None:
    args = served.deployed.vllm_args
    assert args[0] == "serve"
    assert "--enable-prefix-caching" in args
    assert "--stream-interval" in args
    models = httpx.get(
        f"{served.deployed.vllm.url}/v1/models",
        headers={"Authorization": f"Bearer {served.deployed.api_key}"},
        timeout=10,
    ).json()
    card = models["data"][0]
    assert card["id"] == "tiny"
    assert card["max_model_len"] == MAX_MODEL_LEN
    assert card["root"].endswith(args[1].removeprefix("/data"))


def test_the_scripted_answer_with_true_usage(served: Served) -> None:
    name = _name()
    question = "What is recursion?"
    create_job(served.kube, served.namespace, name, "tiny", question)
    status = wait_finished(served.kube, served.namespace, name, timeout=120)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["response"] == SCRIPTED_ANSWER
    assert status["analysis"] == SCRIPTED_ANALYSIS
    assert status["commentary"] == ""
    assert status["finishReason"] == "stop"
    assert condition(status, "Complete")["reason"] == "Completed"
    assert "rawOutput" not in status
    usage = status["usage"]
    assert usage["completionTokens"] == len(served.reply_ids)  # <|return|> included
    assert usage["promptTokens"] == _prompt_tokens(served, question)
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]
    assert status["attempts"] == 1
    assert status["tokensPerSecond"] > 0


def test_max_tokens_cut_gives_length(served: Served) -> None:
    name = _name()
    create_job(served.kube, served.namespace, name, "tiny", "Hi", maxTokens=12)
    status = wait_finished(served.kube, served.namespace, name, timeout=120)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["finishReason"] == "length"
    assert condition(status, "Complete")["reason"] == "TokenLimit"
    assert status["usage"]["completionTokens"] == 12
    # 12 tokens end inside the final message's header: nothing of the answer yet.
    assert status["analysis"] == SCRIPTED_ANALYSIS
    assert status["response"] == ""
    assert "maxTokens (12)" in status["message"]


def test_sixty_four_jobs_in_flight_through_one_sidecar_each_answered_once(
    served: Served,
) -> None:
    before = _successes(served)
    names = [_name() for _ in range(64)]
    for name in names:
        create_job(served.kube, served.namespace, name, "tiny", f"Question {name}")
    for name in names:
        status = wait_finished(served.kube, served.namespace, name, timeout=300)
        assert status["phase"] == "Succeeded", (name, status.get("message"))
        assert status["response"] == SCRIPTED_ANSWER
        assert status["attempts"] == 1
    assert _successes(served) - before == 64


def test_a_prompt_over_the_context_fails_naming_the_limit(served: Served) -> None:
    name = _name()
    question = _question_of_length(served, MAX_MODEL_LEN + 50)
    create_job(served.kube, served.namespace, name, "tiny", question)
    status = wait_finished(served.kube, served.namespace, name, timeout=120)
    assert status["phase"] == "Failed"
    failed = condition(status, "Failed")
    assert failed["reason"] == "PromptTooLong"
    assert f"the prompt is {MAX_MODEL_LEN + 50} tokens" in failed["message"]
    assert f"(max-model-len) is {MAX_MODEL_LEN}" in failed["message"]
    assert status["attempts"] == 1, "a refusal is not retried"


def test_prompt_plus_max_tokens_over_the_context_ends_honestly(served: Served) -> None:
    name = _name()
    room = 8
    question = _question_of_length(served, MAX_MODEL_LEN - room)
    create_job(served.kube, served.namespace, name, "tiny", question, maxTokens=200)
    status = wait_finished(served.kube, served.namespace, name, timeout=120)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["finishReason"] == "length"
    assert condition(status, "Complete")["reason"] == "ContextLimit"
    assert status["usage"]["completionTokens"] == room
    assert re.search(
        r"context window \(prompt \d+ \+ output 8 = 1024 tokens of 1024\)", status["message"]
    )
    assert "raise maxTokens" not in status["message"]


def test_gptoss_ask_gets_the_answer(served: Served) -> None:
    result = gptoss_ask(
        served.cluster.kubeconfig, served.namespace, "tiny", "--json", "--quiet", "Say hello"
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["response"] == SCRIPTED_ANSWER
    assert output["analysis"] == SCRIPTED_ANALYSIS
    assert output["reasoning_level"] == "medium"


def test_the_download_put_the_checkpoint_where_vllm_read_it(served: Served) -> None:
    deployed = served.deployed
    assert deployed.download_termination["reason"] == "Downloaded"
    digest = deployed.vllm_args[1].rsplit("/", 1)[1]
    marker = json.loads((deployed.volume / "served" / f"{digest}.json").read_text())
    files = {entry["path"] for entry in marker["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    log = deployed.vllm.log_path.read_text(errors="replace")
    volume = "/data" if pod_sandbox.available() else str(deployed.volume)  # see deploy()
    assert f"--model {volume}/served/{digest}" in log


def _engine_processes(port: int) -> list[int]:
    """The vLLM server listening on ``port`` and the processes it started."""
    server = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and f"--port\0{port}\0" in _read(entry / "cmdline")
        and "vllm.entrypoints" in _read(entry / "cmdline")
        and "supervise" not in _read(entry / "cmdline")  # the harness's watcher of it
    ]
    assert len(server) == 1, server
    children = _read(Path(f"/proc/{server[0]}/task/{server[0]}/children")).split()
    return [server[0], *map(int, children)]


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(
    not pod_sandbox.available(),
    reason="building a pod's view of the machine needs root (mount namespaces, chroot)",
)
def test_the_engine_ran_as_its_pod_would(served: Served) -> None:
    """The restricted pod's promises, held by real vLLM: it runs as uid 10001 without
    capabilities, its root filesystem and the weights are read-only, and it serves."""
    processes = _engine_processes(served.deployed.vllm.port)
    assert len(processes) >= 2, "the API server and its engine core"
    for pid in processes:
        status = dict(
            line.split(":\t", 1) for line in _read(Path(f"/proc/{pid}/status")).splitlines()
        )
        assert status["Uid"].split() == ["10001"] * 4, (pid, status["Uid"])
        assert status["Gid"].split() == ["10001"] * 4, (pid, status["Gid"])
        assert int(status["CapEff"], 16) == 0
        assert status["NoNewPrivs"].strip() == "1"
        mounts = {
            fields[4]: fields[5].split(",")
            for fields in (
                line.split() for line in _read(Path(f"/proc/{pid}/mountinfo")).splitlines()
            )
        }
        assert "ro" in mounts["/"], mounts["/"]
        assert "ro" in mounts["/data"], mounts["/data"]
        assert "rw" in mounts["/tmp"], "the scratch emptyDir"
        assert "rw" in mounts["/dev/shm"]


def test_the_endpoint_requires_the_models_api_key(served: Served) -> None:
    """vLLM refuses /v1 without the key from the Secret the model's status names; the
    sidecar has it; probes stay open; the key is in no manifest or status."""
    url = served.deployed.vllm.url
    refused = httpx.get(f"{url}/v1/models", timeout=10)
    assert refused.status_code == 401
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    kube = served.kube
    status = get_model(kube, served.namespace, "tiny")["status"]
    assert status["apiKeySecretRef"] == {"name": "tiny-api-key", "key": "token"}
    key = served.deployed.api_key
    assert len(key) >= 32
    deployment = kube.get(Deployment, "tiny-vllm", namespace=served.namespace)
    sidecar_log = served.deployed.sidecar.log_path.read_text(errors="replace")
    for text in (json.dumps(status), json.dumps(deployment.to_dict()), sidecar_log):
        assert key not in text


def test_the_autoscaler_reads_real_vllms_load(served: Served) -> None:
    """The gauges the autoscaler adds up are those vLLM exports: 0 when idle, and the
    requests it is running or holding while it works."""
    url = httpx.URL(served.deployed.vllm.url)
    key = ("ns", "tiny")
    loads = EngineLoads({key: [str(url.host)]}, lambda: [key], interval=1.0, port=url.port or 80)
    prompt = served.harmony.render([ChatMessage("user", "What is recursion?")], "medium")
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 64, "temperature": 0.7}
    headers = {"Authorization": f"Bearer {served.deployed.api_key}"}

    async def scenario() -> tuple[int | None, int]:
        async with httpx.AsyncClient(timeout=120) as client:
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


def test_a_batch_is_answered_by_real_vllm_in_openai_batch_format(
    served: Served, tmp_path: Path
) -> None:
    """The batch workers' requests, rendering and parsing against the real engine: every
    line answered with the scripted text and true usage, a cut line marked `length`, a
    prompt over the context in the error file with the engine's refusal."""
    kube, namespace = served.kube, served.namespace
    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)

    def line(i: int, **body: object) -> str:
        messages = [{"role": "user", "content": f"What is {i}?"}]
        return json.dumps(
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "tiny", "messages": messages, **body},
            }
        )

    lines = [line(i) for i in range(1, 11)]
    lines.append(line(11, max_completion_tokens=12))
    too_long = _question_of_length(served, MAX_MODEL_LEN + 10)
    lines.append(
        json.dumps(
            {
                "custom_id": "q12",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": too_long}]},
            }
        )
    )
    (data / "in" / "r.jsonl").write_text("\n".join(lines))
    create_claim(kube, namespace, "batch-data")
    kubeconfig = batch_identity(kube, served.cluster, namespace, tmp_path, model="tiny")
    before = _successes(served)
    create_batch(
        kube,
        namespace,
        "real",
        model="tiny",
        input={"volume": {"claimName": "batch-data", "path": "in/r.jsonl"}},
        output={"volume": {"claimName": "batch-data", "path": "out"}},
        shards=2,
        requestsPerShard=4,
        defaults={"maxTokens": 200},
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    engine_url = served.deployed.vllm.url
    with BatchPods(kube, namespace, kubeconfig, engine_url, {"batch-data": data}, logs) as pods:
        status = wait_phase(kube, namespace, "real", ("Succeeded", "Failed"), timeout=300)
        assert not pods.errors, pods.errors
    assert status["phase"] == "Succeeded", status
    assert status["counts"] == {"total": 12, "succeeded": 11, "failed": 1, "inFlight": 0}
    answers = {a["custom_id"]: a for a in read_jsonl(data / "out" / "output.jsonl")}
    assert set(answers) == {f"q{i}" for i in range(1, 12)}
    for i in range(1, 11):
        body = answers[f"q{i}"]["response"]["body"]
        assert body["model"] == "tiny"
        choice = body["choices"][0]
        assert choice["message"]["content"] == SCRIPTED_ANSWER
        assert choice["message"]["reasoning"] == SCRIPTED_ANALYSIS
        assert choice["finish_reason"] == "stop"
        assert body["usage"]["completion_tokens"] == len(served.reply_ids)
        assert body["usage"]["prompt_tokens"] == _prompt_tokens(served, f"What is {i}?")
    assert answers["q11"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    assert answers["q11"]["response"]["body"]["usage"]["completion_tokens"] == 12
    (refused,) = read_jsonl(data / "out" / "errors.jsonl")
    assert refused["custom_id"] == "q12"
    assert refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["code"] == "PromptTooLong"
    assert _successes(served) - before == 11  # nothing asked twice
    assert status["usage"]["completionTokens"] == 10 * len(served.reply_ids) + 12
