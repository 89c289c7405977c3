"""The stand-in for vLLM's OpenAI server: its wire format, its harmony output, its faults.

Requests are the ones the sidecar sends: a harmony-rendered prompt as token ids,
``stop_token_ids`` [<|return|>, <|call|>], ``return_token_ids`` and
``skip_special_tokens: false``; the returned token ids go through openai-harmony's
``StreamableParser`` as the sidecar does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyError,
    Message,
    ReasoningEffort,
    Role,
    StreamableParser,
    SystemContent,
    TextContent,
)

from gptoss_sandbox.standin_engine import (
    CALL,
    RETURN,
    StandinEngine,
    harmony_encoding,
    main,
)

MODEL = "gpt-oss-test"
STOP_IDS = [RETURN, CALL]


@pytest.fixture(scope="module")
def encoding() -> HarmonyEncoding:
    return harmony_encoding()


@pytest.fixture(scope="module")
def server() -> Iterator[StandinEngine]:
    engine = StandinEngine(MODEL, max_model_len=4096, model_root="/models/gpt-oss-test")
    engine.start_in_thread()
    try:
        yield engine
    finally:
        engine.stop_in_thread()


@pytest.fixture
def engine(server: StandinEngine) -> Iterator[StandinEngine]:
    """The shared server with its knobs reset for each test."""
    server.fail_next = []
    server.token_delay = 0.0
    server.loading = server.commentary = server.tool_call = False
    server.max_model_len = 4096
    yield server
    server.fail_next = []


@pytest.fixture
def client(engine: StandinEngine) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine.url, timeout=10) as http:
        yield http


def render(
    encoding: HarmonyEncoding,
    question: str,
    effort: ReasoningEffort = ReasoningEffort.MEDIUM,
    extra: list[Message] | None = None,
) -> list[int]:
    system = SystemContent.new().with_reasoning_effort(effort)
    messages = [
        Message.from_role_and_content(Role.SYSTEM, system),
        Message.from_role_and_content(
            Role.DEVELOPER, DeveloperContent.new().with_instructions("Be brief.")
        ),
        Message.from_role_and_content(Role.USER, "An earlier question"),
        Message.from_role_and_content(Role.ASSISTANT, "An earlier answer").with_channel("final"),
        Message.from_role_and_content(Role.USER, question),
        *(extra or []),
    ]
    conversation = Conversation.from_messages(messages)
    return list(encoding.render_conversation_for_completion(conversation, Role.ASSISTANT))


def request_body(prompt: list[int] | str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 512,
        "temperature": 1.0,
        "top_p": 1.0,
        "stop_token_ids": STOP_IDS,
        "return_token_ids": True,
        "skip_special_tokens": False,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def non_streaming(prompt: list[int] | str, **changes: Any) -> dict[str, Any]:
    return request_body(prompt, **{"stream": False, "stream_options": None, **changes})


def sse_events(client: httpx.Client, body: dict[str, Any]) -> list[str]:
    """The raw ``data:`` payloads, checking the framing: one event per blank-line block."""
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    blocks = raw.split("\n\n")
    assert blocks[-1] == ""
    events = []
    for block in blocks[:-1]:
        assert block.startswith("data: "), block
        assert "\n" not in block
        events.append(block.removeprefix("data: "))
    return events


def read_events(
    client: httpx.Client, body: dict[str, Any], into: list[str], timeout: float = 10
) -> None:
    """Collect non-empty SSE lines into ``into`` until the stream ends or fails."""
    with client.stream("POST", "/v1/completions", json=body, timeout=timeout) as response:
        assert response.status_code == 200
        into.extend(line for line in response.iter_lines() if line)


def parse(encoding: HarmonyEncoding, tokens: list[int], strict: bool = True) -> StreamableParser:
    parser = StreamableParser(encoding, Role.ASSISTANT, strict=strict)
    for token in tokens:
        parser.process(token)
    return parser


def channels(parser: StreamableParser) -> list[tuple[str | None, str]]:
    result = []
    for message in parser.messages:
        content = message.content[0]
        assert isinstance(content, TextContent)
        result.append((message.channel, content.text))
    return result


# -- health, models ----------------------------------------------------------------------


def test_health_is_empty_200_and_503_while_loading(
    engine: StandinEngine, client: httpx.Client
) -> None:
    response = client.get("/health")
    assert (response.status_code, response.content) == (200, b"")
    engine.loading = True
    assert client.get("/health").status_code == 503
    engine.loading = False
    assert client.get("/health").status_code == 200


def test_models_lists_the_served_model(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == MODEL
    assert card["object"] == "model"
    assert card["owned_by"] == "vllm"
    assert card["root"] == "/models/gpt-oss-test"
    assert card["max_model_len"] == 4096
    assert card["permission"][0]["object"] == "model_permission"
    assert client.get("/no/such/route").json() == {"detail": "Not Found"}


# -- streaming ---------------------------------------------------------------------------


def test_stream_parses_into_analysis_and_final(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "What is 2 + 2?", ReasoningEffort.LOW)
    before = engine.requests_served
    events = sse_events(client, request_body(prompt))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    *token_chunks, usage_chunk = chunks

    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1
    assert ids.pop().startswith("cmpl-")
    assert all(c["object"] == "text_completion" and c["model"] == MODEL for c in chunks)

    tokens: list[int] = []
    for index, chunk in enumerate(token_chunks):
        [choice] = chunk["choices"]
        assert len(choice["token_ids"]) == 1
        assert choice["prompt_token_ids"] == (prompt if index == 0 else None)
        assert "usage" not in chunk  # only with continuous_usage_stats
        tokens += choice["token_ids"]
        if index < len(token_chunks) - 1:
            assert (choice["finish_reason"], choice["stop_reason"]) == (None, None)

    last = token_chunks[-1]["choices"][0]
    # <|return|> is gpt-oss's EOS: vLLM stops on it before looking at stop_token_ids, so
    # stop_reason stays null; the id is returned and counted, its text is not.
    assert (last["finish_reason"], last["stop_reason"]) == ("stop", None)
    assert (last["token_ids"], last["text"]) == ([RETURN], "")
    assert tokens[-1] == RETURN

    text = "".join(chunk["choices"][0]["text"] for chunk in token_chunks)
    assert text == encoding.decode(tokens[:-1])
    assert text.startswith("<|channel|>analysis<|message|>")
    assert "<|return|>" not in text

    parser = parse(encoding, tokens)
    assert channels(parser) == [
        ("analysis", "Reasoning at low effort about: What is 2 + 2?"),
        ("final", "Stand-in answer to: What is 2 + 2?"),
    ]

    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": len(prompt),
        "total_tokens": len(prompt) + len(tokens),
        "completion_tokens": len(tokens),
    }
    assert engine.requests_served == before + 1
    assert engine.last_request is not None
    assert engine.last_request["prompt"] == prompt
    assert engine.last_request["stop_token_ids"] == STOP_IDS


def test_stream_token_by_token_like_the_sidecar(
    client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "Name a colour", ReasoningEffort.HIGH)
    parser = StreamableParser(encoding, Role.ASSISTANT)
    deltas: dict[str | None, str] = {}
    for event in sse_events(client, request_body(prompt)):
        if event == "[DONE]":
            break
        for choice in json.loads(event)["choices"]:
            for token in choice["token_ids"]:
                parser.process(token)
                if parser.last_content_delta:
                    channel = parser.current_channel
                    deltas[channel] = deltas.get(channel, "") + parser.last_content_delta
    analysis = deltas["analysis"]
    assert analysis.startswith("Reasoning at high effort about: Name a colour")
    assert len(analysis) > len("Reasoning at high effort about: Name a colour") + 40
    assert deltas["final"] == "Stand-in answer to: Name a colour"


def test_stream_without_usage_and_without_token_ids(
    client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "Hi")
    events = sse_events(client, request_body(prompt, stream_options=None, return_token_ids=None))
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["choices"] for chunk in chunks)  # no usage chunk
    assert all(chunk["choices"][0]["token_ids"] is None for chunk in chunks)
    assert all(chunk["choices"][0]["prompt_token_ids"] is None for chunk in chunks)

    # Empty stream_options: include_usage defaults to true; continuous_usage_stats puts
    # the running usage on every chunk as well.
    events = sse_events(client, request_body(prompt, stream_options={}))
    assert json.loads(events[-2])["choices"] == []
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = sse_events(client, request_body(prompt, stream_options=options))
    chunks = [json.loads(event) for event in events[:-1]]
    assert [c["usage"]["completion_tokens"] for c in chunks[:3]] == [1, 2, 3]


def test_max_tokens_cuts_with_length(client: httpx.Client, encoding: HarmonyEncoding) -> None:
    prompt = render(encoding, "Tell me everything")
    events = sse_events(client, request_body(prompt, max_tokens=5))
    *token_chunks, usage_chunk = [json.loads(event) for event in events[:-1]]
    assert len(token_chunks) == 5
    last = token_chunks[-1]["choices"][0]
    assert (last["finish_reason"], last["stop_reason"]) == ("length", None)
    assert usage_chunk["usage"]["completion_tokens"] == 5

    body = client.post("/v1/completions", json=non_streaming(prompt, max_tokens=7)).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    assert len(choice["token_ids"]) == 7
    assert RETURN not in choice["token_ids"]


# -- non-streaming -----------------------------------------------------------------------


def test_non_streaming_returns_token_ids_and_usage(
    client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "Capital of France?")
    response = client.post("/v1/completions", json=non_streaming(prompt))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert (body["object"], body["model"]) == ("text_completion", MODEL)
    assert body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["prompt_token_ids"] == prompt
    tokens = choice["token_ids"]
    assert tokens[-1] == RETURN
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)
    assert choice["text"] == encoding.decode(tokens[:-1])
    assert channels(parse(encoding, tokens))[-1] == (
        "final",
        "Stand-in answer to: Capital of France?",
    )
    assert body["usage"]["prompt_tokens"] == len(prompt)
    assert body["usage"]["completion_tokens"] == len(tokens)
    assert body["usage"]["total_tokens"] == len(prompt) + len(tokens)


def test_skip_special_tokens_true_drops_them_from_text(
    client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "Plain text please")
    body = non_streaming(prompt, skip_special_tokens=None)  # vLLM's default: true
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    assert "<|" not in choice["text"]
    assert choice["text"].startswith("analysisReasoning at medium effort")
    assert choice["token_ids"][0] == 200005  # <|channel|> still in the ids


def test_string_prompt_is_accepted(client: httpx.Client, encoding: HarmonyEncoding) -> None:
    prompt = encoding.decode(render(encoding, "From a string"))
    choice = client.post("/v1/completions", json=non_streaming(prompt)).json()["choices"][0]
    assert channels(parse(encoding, choice["token_ids"]))[-1][1] == (
        "Stand-in answer to: From a string"
    )


def test_commentary_preamble_and_tool_call(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "Explain with commentary")
    tokens = client.post("/v1/completions", json=non_streaming(prompt)).json()["choices"][0][
        "token_ids"
    ]
    assert [channel for channel, _ in channels(parse(encoding, tokens))] == [
        "analysis",
        "commentary",
        "final",
    ]

    engine.tool_call = True
    prompt = render(encoding, "Look it up")
    choice = client.post("/v1/completions", json=non_streaming(prompt)).json()["choices"][0]
    # <|call|> is in stop_token_ids and is not the EOS token: stop_reason names it.
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", CALL)
    assert choice["token_ids"][-1] == CALL
    call = parse(encoding, choice["token_ids"]).messages[-1]
    assert (call.channel, call.recipient, call.content_type) == (
        "commentary",
        "functions.lookup",
        "<|constrain|>json",
    )
    content = call.content[0]
    assert isinstance(content, TextContent)
    assert json.loads(content.text) == {"query": "Look it up"}

    tool_result = (
        Message.from_author_and_content(Author.new(Role.TOOL, "functions.lookup"), '{"hits": 3}')
        .with_channel("commentary")
        .with_recipient("assistant")
    )
    prompt = render(encoding, "Look it up", extra=[call, tool_result])
    choice = client.post("/v1/completions", json=non_streaming(prompt)).json()["choices"][0]
    assert choice["stop_reason"] is None
    assert channels(parse(encoding, choice["token_ids"]))[-1] == (
        "final",
        'Stand-in answer to: Look it up (using functions.lookup: {"hits": 3})',
    )


# -- errors ------------------------------------------------------------------------------


def assert_vllm_error(
    response: httpx.Response, status: int, err_type: str, param: str | None = None
) -> str:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (err_type, status, param)
    return str(error["message"])


def test_wrong_model_is_404(client: httpx.Client, encoding: HarmonyEncoding) -> None:
    response = client.post(
        "/v1/completions", json=non_streaming(render(encoding, "x"), model="other")
    )
    message = assert_vllm_error(response, 404, "NotFoundError", "model")
    assert message == f"The model `other` does not exist. Valid aliases: {MODEL}."


def test_a_prompt_over_max_model_len_is_400(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "A long one")
    engine.max_model_len = len(prompt) - 1
    response = client.post("/v1/completions", json=request_body(prompt, max_tokens=10))
    message = assert_vllm_error(response, 400, "BadRequestError", "input_tokens")
    assert message == (
        f"This model's maximum context length is {len(prompt) - 1} tokens. However, your "
        f"prompt contains {len(prompt)} input tokens, which exceeds this limit even without "
        "any output tokens. Please reduce the length of the input prompt. "
        f"(parameter=input_tokens, value={len(prompt)})"
    )


def test_max_tokens_beyond_the_context_is_clamped_to_what_is_left(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "A long one")
    engine.max_model_len = len(prompt) + 5
    response = client.post("/v1/completions", json=non_streaming(prompt, max_tokens=100))
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


def test_other_request_errors_are_400(client: httpx.Client, encoding: HarmonyEncoding) -> None:
    prompt = render(encoding, "x")
    for body, param in (
        (request_body(prompt, n=2), None),
        (non_streaming(prompt, stream_options={"include_usage": True}), "stream_options"),
        (request_body([]), None),
        (request_body([1, -1]), None),
        (request_body([300000]), None),
        (request_body(prompt, temperature=-1), "temperature"),
    ):
        response = client.post("/v1/completions", json=body)
        assert_vllm_error(response, 400, "BadRequestError", param)
    response = client.post("/v1/completions", content=b"{not json")
    assert_vllm_error(response, 400, "BadRequestError")


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "err_type"),
    [
        ("http500", 500, "InternalServerError"),
        ("http503", 503, "ServiceUnavailableError"),
        ("http400", 400, "BadRequestError"),
    ],
)
def test_http_faults(
    engine: StandinEngine,
    client: httpx.Client,
    encoding: HarmonyEncoding,
    fault: str,
    status: int,
    err_type: str,
) -> None:
    prompt = render(encoding, "x")
    engine.fail_next = [fault]
    assert_vllm_error(client.post("/v1/completions", json=request_body(prompt)), status, err_type)
    assert engine.fail_next == []
    assert client.post("/v1/completions", json=request_body(prompt)).status_code == 200


def test_reset_closes_the_connection_mid_stream(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    prompt = render(encoding, "x")
    engine.fail_next = ["reset"]
    received: list[str] = []
    with pytest.raises(httpx.TransportError):
        read_events(client, request_body(prompt), received)
    assert len(received) == engine.fault_after_tokens
    engine.fail_next = ["reset"]
    with pytest.raises(httpx.TransportError):
        client.post("/v1/completions", json=non_streaming(prompt))


def test_hang_never_answers(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    engine.fail_next = ["hang"]
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/completions", json=request_body(render(encoding, "x")), timeout=0.3)


def test_stall_sends_a_few_tokens_then_nothing(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    engine.fail_next = ["stall"]
    received: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        read_events(client, request_body(render(encoding, "x")), received, timeout=0.3)
    assert len(received) == engine.fault_after_tokens


def test_stream_error_event(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    engine.fail_next = ["stream_error"]
    events = sse_events(client, request_body(render(encoding, "x")))
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["type"], error["code"]) == ("InternalServerError", 500)
    assert len(events) == engine.fault_after_tokens + 2


def test_malformed_output_breaks_strict_parsing(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    engine.fail_next = ["malformed"]
    events = sse_events(client, request_body(render(encoding, "Broken?")))
    tokens = [t for e in events[:-1] for c in json.loads(e)["choices"] for t in c["token_ids"]]
    assert tokens[-1] == RETURN
    with pytest.raises(HarmonyError):
        parse(encoding, tokens)
    # The next request is healthy again.
    events = sse_events(client, request_body(render(encoding, "Fine?")))
    tokens = [t for e in events[:-1] for c in json.loads(e)["choices"] for t in c["token_ids"]]
    assert channels(parse(encoding, tokens))[-1] == ("final", "Stand-in answer to: Fine?")


def test_token_delay_paces_the_stream(
    engine: StandinEngine, client: httpx.Client, encoding: HarmonyEncoding
) -> None:
    engine.token_delay = 0.02
    started = time.monotonic()
    sse_events(client, request_body(render(encoding, "x"), max_tokens=10))
    assert time.monotonic() - started >= 0.2


# -- the async API and the command line --------------------------------------------------


async def test_async_start_and_stop(encoding: HarmonyEncoding) -> None:
    async with StandinEngine(MODEL) as engine:
        assert engine.url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=engine.url) as http:
            body = non_streaming(render(encoding, "async"))
            choice = (await http.post("/v1/completions", json=body)).json()["choices"][0]
        assert channels(parse(encoding, choice["token_ids"]))[-1][1] == (
            "Stand-in answer to: async"
        )
    with pytest.raises(RuntimeError):
        _ = engine.url


def test_cli_serves_until_terminated(tmp_path: Any) -> None:
    assert main(["--fail-next", "nonsense"]) == 2
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "gptoss_sandbox.standin_engine"),
            *("--port", "0", "--model", "cli", "--token-delay", "0", "--loading-seconds", "0.3"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "NOT vLLM" in line
        url = line.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/health").status_code == 503
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{url}/v1/models").json()["data"][0]["id"] == "cli"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
