"""The stand-in engine held to the real server: the same requests to both, compared.

The real side is vLLM (CPU build of the pinned release) serving the scripted tiny gpt-oss
checkpoint with the arguments the operator renders; the stand-in is configured alike (same
served name, context window and stream interval). Their words differ by design (each has
its own fixed answer), so the test compares what the sidecar relies on: the JSON shape of
every body and chunk, where token ids and usage appear, how chunks group tokens, which stop
ends a completion and how it is reported, and every error's status, type and message.
A difference fails; the stand-in is then taught what it lacks.

One behaviour cannot be provoked on the real server at will: an error in the middle of a
stream (vLLM 0.32 sends a ``data: {"error": ...}`` event, then ``[DONE]``, after its HTTP
200). The stand-in's ``stream_error`` fault plays it, following that recorded wire format,
and the engine client's unit tests read it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.builders.engine_config import STREAM_INTERVAL, vllm_args
from gptoss_operator.engine.harmony import CALL_TOKEN, RETURN_TOKEN, ChatMessage, Harmony
from gptoss_operator.engine.metrics import requests_in_flight
from gptoss_operator.engine.sse import EventReader
from gptoss_sandbox.engine_venv import EngineVenv
from gptoss_sandbox.real_engine import VllmServer, build_tiny_checkpoint
from gptoss_sandbox.standin_engine import StandinEngine

pytestmark = pytest.mark.engine

MODEL = "tiny"
MAX_MODEL_LEN = 512
END = 200007  # <|end|>
STOP_IDS = [RETURN_TOKEN, CALL_TOKEN]
API_KEY = "contract-key-0123456789abcdef0123456789"


@dataclass
class Engines:
    real: httpx.Client
    standin: httpx.Client
    harmony: Harmony

    def both(self) -> list[tuple[str, httpx.Client]]:
        return [("real", self.real), ("stand-in", self.standin)]


@pytest.fixture(scope="module")
def engines(engine_venv: EngineVenv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    del engine_venv
    work = tmp_path_factory.mktemp("contract")
    checkpoint = build_tiny_checkpoint(work / "checkpoint", "scripted")
    volume = work / "volume"
    (volume / "served").mkdir(parents=True)
    (volume / "served" / "abcd1234").symlink_to(checkpoint)
    spec = GptOssModelSpec.model_validate({"serving": {"maxModelLen": MAX_MODEL_LEN}})
    real = VllmServer.from_deployment(
        vllm_args(MODEL, spec, "abcd1234"),
        volume,
        env={"VLLM_API_KEY": API_KEY},
        log_path=work / "vllm.log",
    )
    standin = StandinEngine(MODEL, max_model_len=MAX_MODEL_LEN, stream_interval=STREAM_INTERVAL)
    standin.api_key = API_KEY
    auth = {"Authorization": f"Bearer {API_KEY}"}
    real.start()
    try:
        real.wait_healthy(timeout=600)
        with (
            standin,
            httpx.Client(base_url=real.url, headers=auth, timeout=60) as real_client,
            httpx.Client(base_url=standin.url, headers=auth, timeout=60) as standin_client,
        ):
            yield Engines(real_client, standin_client, Harmony())
    finally:
        real.stop()


def shape(value: Any) -> Any:
    """The JSON's structure: key names and value types (the first item of a list)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def prompt(engines: Engines, question: str = "What is recursion?") -> list[int]:
    return engines.harmony.render([ChatMessage("user", question)], "medium")


def body(tokens: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": tokens,
        "max_tokens": 256,
        "temperature": 0.7,
        "stop_token_ids": STOP_IDS,
        "return_token_ids": True,
        "skip_special_tokens": False,
        **extra,
    }


def stream(client: httpx.Client, request: dict[str, Any]) -> tuple[int, list[Any]]:
    """(HTTP status, events: parsed JSON, or the raw text of non-JSON data)."""
    reader = EventReader()
    events: list[Any] = []
    with client.stream("POST", "/v1/completions", json=request) as response:
        for chunk in response.iter_bytes():
            events += [event.data for event in reader.feed(chunk)]
        events += [event.data for event in reader.close()]
        status = response.status_code
    return status, [e if e == "[DONE]" else json.loads(e) for e in events]


STREAMING = {"stream": True, "stream_options": {"include_usage": True}}


def test_a_streamed_completion_has_the_same_shape_and_semantics(engines: Engines) -> None:
    tokens = prompt(engines)
    seen: dict[str, dict[str, Any]] = {}
    for side, client in engines.both():
        status, events = stream(client, body(tokens, **STREAMING))
        assert status == 200, side
        assert events[-1] == "[DONE]", side
        chunks, usage = events[:-2], events[-2]
        generated = [t for chunk in chunks for t in chunk["choices"][0]["token_ids"]]
        sizes = [len(chunk["choices"][0]["token_ids"]) for chunk in chunks]
        last = chunks[-1]["choices"][0]
        seen[side] = {
            "first chunk": shape(chunks[0]),
            "later chunk": shape(chunks[1]),
            "usage chunk": shape(usage),
            # The first chunk alone repeats the prompt's ids.
            "prompt ids": [c["choices"][0]["prompt_token_ids"] == tokens for c in chunks[:2]],
            "later prompt ids": {str(c["choices"][0]["prompt_token_ids"]) for c in chunks[1:]},
            # --stream-interval: one token at once, then groups, then the rest.
            "grouping": sizes[0] == 1
            and all(size == STREAM_INTERVAL for size in sizes[1:-1])
            and 1 <= sizes[-1] <= STREAM_INTERVAL,
            "unfinished chunks": {str(c["choices"][0]["finish_reason"]) for c in chunks[:-1]},
            "finish": (last["finish_reason"], last["stop_reason"]),
            # <|return|> (the tokenizer's EOS) is the last id and counted, its text is not.
            "ends with return": generated[-1] == RETURN_TOKEN,
            "stop text": last["text"].endswith("<|return|>"),
            "usage": (
                usage["choices"],
                usage["usage"]["prompt_tokens"] == len(tokens),
                usage["usage"]["completion_tokens"] == len(generated),
                usage["usage"]["total_tokens"] == len(tokens) + len(generated),
            ),
        }
    assert seen["stand-in"] == seen["real"]


def test_a_whole_completion_has_the_same_shape(engines: Engines) -> None:
    tokens = prompt(engines)
    answers = {
        side: client.post("/v1/completions", json=body(tokens)) for side, client in engines.both()
    }
    assert {side: a.status_code for side, a in answers.items()} == {"real": 200, "stand-in": 200}
    real, standin = (answers[side].json() for side in ("real", "stand-in"))
    assert shape(standin) == shape(real)
    for answer in (real, standin):
        choice = answer["choices"][0]
        assert choice["prompt_token_ids"] == tokens
        assert choice["token_ids"][-1] == RETURN_TOKEN
        assert answer["usage"]["completion_tokens"] == len(choice["token_ids"])


def test_the_token_limit_ends_with_length(engines: Engines) -> None:
    tokens = prompt(engines)
    for side, client in engines.both():
        status, events = stream(client, body(tokens, max_tokens=5, **STREAMING))
        chunks, usage = events[:-2], events[-2]
        last = chunks[-1]["choices"][0]
        assert (status, last["finish_reason"], last["stop_reason"]) == (200, "length", None), side
        assert usage["usage"]["completion_tokens"] == 5, side


def test_a_stop_id_other_than_eos_is_reported_as_the_stop_reason(engines: Engines) -> None:
    # As <|call|> would: both answers contain <|end|> after their analysis message.
    tokens = prompt(engines)
    for side, client in engines.both():
        status, events = stream(client, body(tokens, stop_token_ids=[END], **STREAMING))
        chunks = events[:-2]
        last = chunks[-1]["choices"][0]
        assert (status, last["finish_reason"], last["stop_reason"]) == (200, "stop", END), side
        assert last["token_ids"][-1] == END, side


def test_prompt_and_max_tokens_beyond_the_context_are_clamped(engines: Engines) -> None:
    tokens = prompt(engines, "Count:" + " apple" * (MAX_MODEL_LEN - 80))
    room = MAX_MODEL_LEN - len(tokens)
    assert 0 < room < 26, "the scripted reply does not fit"
    for side, client in engines.both():
        answer = client.post("/v1/completions", json=body(tokens, max_tokens=200))
        assert answer.status_code == 200, (side, answer.text)
        data = answer.json()
        assert data["choices"][0]["finish_reason"] == "length", side
        assert data["usage"]["completion_tokens"] == room, side


def _error(response: httpx.Response) -> dict[str, Any]:
    return {"status": response.status_code, **response.json()["error"]}


def test_errors_have_the_same_status_type_and_message(engines: Engines) -> None:
    tokens = prompt(engines)
    too_long = prompt(engines, "Count:" + " apple" * MAX_MODEL_LEN)
    requests = {
        "unknown model": body(tokens, model="other"),
        "prompt over the context": body(too_long),
        "stream options without streaming": body(tokens, stream_options={"include_usage": True}),
        "no prompt": body([]),
        "negative temperature": body(tokens, temperature=-1),
        "token id beyond the vocabulary": body([*tokens[:-1], 300000]),
    }
    for what, request in requests.items():
        real = _error(engines.real.post("/v1/completions", json=request))
        standin = _error(engines.standin.post("/v1/completions", json=request))
        assert standin == real, what


def test_models_and_health_have_the_same_shape(engines: Engines) -> None:
    real = engines.real.get("/v1/models").json()
    standin = engines.standin.get("/v1/models").json()
    assert shape(standin) == shape(real)
    assert standin["data"][0]["max_model_len"] == real["data"][0]["max_model_len"]
    for _, client in engines.both():
        health = client.get("/health")
        assert (health.status_code, health.content) == (200, b"")


def test_without_the_api_key_v1_is_refused_alike_and_health_stays_open(engines: Engines) -> None:
    answers = {}
    for name, client in engines.both():
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
            refused = client.post("/v1/completions", json=body([1, 2]), headers=headers)
            answers[name] = (refused.status_code, refused.json())
            assert answers[name] == (401, {"error": "Unauthorized"}), name
        listing = client.get("/v1/models", headers={"Authorization": "Basic x"})
        assert listing.status_code == 401, name
        assert client.get("/health", headers={"Authorization": ""}).status_code == 200, name
    assert answers["real"] == answers["stand-in"]


def test_the_load_gauges_are_the_same_and_read_alike(engines: Engines) -> None:
    """The gauges the sidecar and the autoscaler read from /metrics: the same names and
    labels on both, 0 when idle, and the same reading by ``requests_in_flight``."""
    pages = {name: client.get("/metrics").text for name, client in engines.both()}
    for name, page in pages.items():
        gauges = {
            line.split(" ", 1)[0]
            for line in page.splitlines()
            if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))
        }
        assert gauges == {
            f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}}',
            f'vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}}',
        }, name
        assert requests_in_flight(page) == 0, name
