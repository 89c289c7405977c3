"""A STAND-IN for vLLM's OpenAI-compatible server, used only by tests and the local demo.

This is not an inference engine and the product never uses it: ``gptoss_operator`` runs
the real ``vllm serve`` on GPU nodes. Here, where there is no GPU, this small aiohttp
server speaks vLLM's wire format for the slice the InferenceJob sidecar uses, so the
sidecar and the demo can run end to end against something faithful:

* ``GET /health``: 200 with an empty body (503 while the ``loading`` knob is set).
* ``GET /v1/models``: the served model, as vLLM's ``ModelList`` / ``ModelCard``.
* ``POST /v1/completions``: ``prompt`` as a list of token ids (or, minimally, a string),
  streamed as server-sent events or answered as one JSON body, with ``token_ids`` and
  ``prompt_token_ids`` on the choices when ``return_token_ids`` is true.

The wire format follows vLLM 0.11 (the image the operator deploys), read from
``vllm/entrypoints/openai/protocol.py``, ``serving_completion.py``, ``serving_engine.py``,
``vllm/entrypoints/renderer.py``, ``vllm/v1/core/sched/utils.py`` (``check_stop``) and
``vllm/v1/engine/detokenizer.py`` / ``output_processor.py``:

* one SSE event per generated token, ``data: {json}\\n\\n``, then ``data: [DONE]\\n\\n``;
  with ``stream_options.include_usage`` a last event has ``choices: []`` and ``usage``;
* a stop token (``stop_token_ids``, or the tokenizer's EOS ``<|return|>``) ends the
  completion with ``finish_reason: "stop"``; its id IS in ``token_ids`` and counted in
  ``completion_tokens``, but its text is NOT in ``text`` (``include_stop_str_in_output``
  is false by default, whatever ``skip_special_tokens`` says). ``stop_reason`` is the
  token id for a ``stop_token_ids`` hit, and null for the EOS token, because vLLM checks
  EOS first; ``max_tokens`` reached gives ``finish_reason: "length"``;
* errors are ``{"error": {"message", "type", "param", "code"}}`` with that HTTP status.

What the "model" says is deterministic, valid harmony built from the prompt, so tests
can assert on it: the last user message is the question, the system message's
``Reasoning: low|medium|high`` line is the effort, and the answer is an analysis message
then a final one (optionally a commentary preamble, or a function call ending in
``<|call|>``). Knobs (plain attributes) inject faults and delays; see ``StandinEngine``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any

from aiohttp import web
from openai_harmony import HarmonyEncoding, HarmonyEncodingName, load_harmony_encoding

from gptoss_operator.api import versions as gptoss_versions
from gptoss_operator.engine.vocab import ensure_offline_vocab

HOST = "127.0.0.1"
DEFAULT_MODEL = "gpt-oss-20b"
DEFAULT_MAX_MODEL_LEN = 131072
VLLM_VERSION = gptoss_versions.VLLM_VERSION  # the release whose wire format it follows

# Harmony special tokens of the o200k_harmony vocabulary (checked against the encoding).
START = 200006  # <|start|>
END = 200007  # <|end|>
MESSAGE = 200008  # <|message|>
CHANNEL = 200005  # <|channel|>
CONSTRAIN = 200003  # <|constrain|>
RETURN = 200002  # <|return|>: gpt-oss's tokenizer EOS token
CALL = 200012  # <|call|>
ENDOFTEXT = 199999  # <|endoftext|>
_SPECIAL_NAMES = {
    START: "<|start|>",
    END: "<|end|>",
    MESSAGE: "<|message|>",
    CHANNEL: "<|channel|>",
    CONSTRAIN: "<|constrain|>",
    RETURN: "<|return|>",
    CALL: "<|call|>",
    ENDOFTEXT: "<|endoftext|>",
}
VOCAB_SIZE = 201088  # gpt-oss config.json vocab_size
# gpt-oss's generation_config.json lists eos_token_id [200002, 199999, 200012]; vLLM keeps
# the tokenizer's EOS (200002) apart and adds the others to every request's stop ids.
GENERATION_CONFIG_STOP_IDS = (ENDOFTEXT, CALL)

FAULTS = frozenset(
    {
        "http500",
        "http503",
        "http400",
        "hang",
        "stall",
        "reset",
        "malformed",
        "stream_error",
        "restart",
        "shutdown",
    }
)

Json = dict[str, Any]


@functools.cache
def harmony_encoding() -> HarmonyEncoding:
    """The gpt-oss harmony encoding, loaded once, with the vocab supplied offline."""
    ensure_offline_vocab()
    encoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    for token, name in _SPECIAL_NAMES.items():
        if list(encoding.encode(name, allowed_special="all")) != [token]:
            raise RuntimeError(f"harmony encoding maps {name} to an unexpected id")
    return encoding


def _dumps(value: Any) -> str:
    # Compact and UTF-8 like pydantic's model_dump_json / Starlette's JSONResponse.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _random_uuid() -> str:
    return uuid.uuid4().hex


class _RequestError(Exception):
    def __init__(
        self, message: str, status: HTTPStatus, err_type: str, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type
        self.param = param


def _bad_request(message: str, param: str | None = None, value: Any = None) -> _RequestError:
    """vLLM's validation errors name the parameter (and value) at the message's end."""
    if param is not None:
        detail = f"parameter={param}" + (f", value={value}" if value is not None else "")
        message = f"{message} ({detail})"
    return _RequestError(message, HTTPStatus.BAD_REQUEST, "BadRequestError", param=param)


def error_body(message: str, err_type: str, status: HTTPStatus, param: str | None = None) -> Json:
    """vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status.value}}


def _json_response(body: Json, status: HTTPStatus = HTTPStatus.OK) -> web.Response:
    return web.Response(
        status=status.value, body=_dumps(body).encode(), content_type="application/json"
    )


def _error_response(
    message: str, err_type: str, status: HTTPStatus, param: str | None = None
) -> web.Response:
    return _json_response(error_body(message, err_type, status, param), status)


# --------------------------------------------------------------------------------------
# What the stand-in "model" says
# --------------------------------------------------------------------------------------

_PROMPT_MESSAGE = re.compile(
    r"<\|start\|>(?P<header>.*?)<\|message\|>(?P<body>.*?)"
    r"(?=<\|end\|>|<\|call\|>|<\|return\|>|<\|start\|>|\Z)",
    re.DOTALL,
)
_EFFORT_LINE = re.compile(r"^Reasoning:\s*(low|medium|high)\s*$", re.MULTILINE | re.IGNORECASE)
_ENCODE_PIECE = 2048
_COMMENTARY_WORD = re.compile(r"\bcommentary\b", re.IGNORECASE)


@dataclass(frozen=True)
class PromptFacts:
    """What the stand-in reads from a harmony prompt."""

    question: str
    effort: str  # low | medium | high
    tool_name: str | None = None  # a tool result follows the last user message
    tool_result: str | None = None


def read_prompt(text: str) -> PromptFacts:
    """Find the last user message, the reasoning effort and any tool result after it."""
    messages = [
        (match.group("header"), match.group("body")) for match in _PROMPT_MESSAGE.finditer(text)
    ]
    effort = "medium"
    for header, body in messages:
        if header.strip() == "system" and (found := _EFFORT_LINE.search(body)):
            effort = found.group(1).lower()
            break
    user_indexes = [i for i, (header, _) in enumerate(messages) if header.strip() == "user"]
    if not user_indexes:
        return PromptFacts(question=" ".join(text.split())[:200], effort=effort)
    last = user_indexes[-1]
    tool_name = tool_result = None
    for header, body in messages[last + 1 :]:
        role = re.split(r"[\s<]", header.strip(), maxsplit=1)[0]
        if role not in ("assistant", "system", "developer", "user"):
            tool_name, tool_result = role, body.strip()
    return PromptFacts(messages[last][1].strip(), effort, tool_name, tool_result)


def reasoning_text(facts: PromptFacts) -> str:
    text = f"Reasoning at {facts.effort} effort about: {facts.question}"
    if facts.effort == "high":
        text += (
            " First I restate the question. Then I weigh what a careful answer needs."
            " Finally I check the answer before replying."
        )
    return text


def answer_text(facts: PromptFacts) -> str:
    if facts.tool_result is not None:
        return (
            f"Stand-in answer to: {facts.question} (using {facts.tool_name}: {facts.tool_result})"
        )
    return f"Stand-in answer to: {facts.question}"


def preamble_text(facts: PromptFacts) -> str:
    return f"Stand-in preamble about: {facts.question}"


# --------------------------------------------------------------------------------------
# Decoding one step at a time
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One generated token as vLLM reports it in a DELTA-mode output."""

    token: int
    text: str
    finish_reason: str | None = None
    stop_reason: int | None = None


@dataclass(frozen=True)
class Sampling:
    """The parts of ``SamplingParams`` the stand-in honours."""

    max_tokens: int
    stop_token_ids: frozenset[int]
    eos_token_id: int | None = RETURN
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    max_model_len: int = DEFAULT_MAX_MODEL_LEN


class _Detokenizer:
    """Incremental decoding: text appears once its UTF-8 bytes are complete."""

    def __init__(self, encoding: HarmonyEncoding, skip_special_tokens: bool) -> None:
        self.encoding = encoding
        self.skip_special_tokens = skip_special_tokens
        self.pending: list[int] = []

    def step(self, token: int) -> str:
        if self.skip_special_tokens and bool(self.encoding.is_special_token(token)):
            return ""
        self.pending.append(token)
        try:
            text = str(self.encoding.decode(self.pending, errors="strict"))
        except UnicodeDecodeError:
            return ""
        self.pending.clear()
        return text

    def flush(self) -> str:
        text = str(self.encoding.decode(self.pending)) if self.pending else ""
        self.pending.clear()
        return text


def generate(
    encoding: HarmonyEncoding, planned: Sequence[int], prompt_len: int, sampling: Sampling
) -> Iterator[Step]:
    """Play ``planned`` tokens through vLLM's stop checks (v1 ``check_stop`` order)."""
    detokenizer = _Detokenizer(encoding, sampling.skip_special_tokens)
    for count, token in enumerate(planned, start=1):
        last_planned = count == len(planned)
        finish: str | None = None
        stop_reason: int | None = None
        if (
            not sampling.ignore_eos
            and sampling.eos_token_id is not None
            and token == sampling.eos_token_id
        ):
            finish = "stop"
        elif token in sampling.stop_token_ids:
            finish, stop_reason = "stop", token
        elif count >= sampling.max_tokens or prompt_len + count >= sampling.max_model_len:
            finish = "length"
        elif last_planned:
            finish = "length"  # ignore_eos past the plan's end: the stand-in has no more
        if finish == "stop" and not sampling.include_stop_str_in_output:
            text = detokenizer.flush()  # the stop token itself is not detokenized
        else:
            text = detokenizer.step(token)
            if finish is not None:
                text += detokenizer.flush()
        yield Step(token, text, finish, stop_reason)
        if finish is not None:
            return


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Completion:
    body: Json
    prompt_ids: list[int]
    sampling: Sampling
    stream: bool
    include_usage: bool
    continuous_usage: bool
    return_token_ids: bool


class StandinEngine:
    """A stand-in for ``vllm serve`` on 127.0.0.1 (tests and the local demo only).

    Knobs, all plain attributes that may be changed while the server runs:

    * ``token_delay``: seconds to wait before each generated token (default 0).
    * ``queue_delay``: seconds a streamed request waits before its first token, as in a
      busy engine's queue (the response's headers go out at once, as vLLM's do).
    * ``fail_next``: fault names, one consumed per ``POST /v1/completions``:
      ``http500`` / ``http503`` / ``http400`` answer with that status and a vLLM-style
      error body; ``hang`` accepts the request and never answers (until ``stop()`` or
      the client goes away); ``stall`` streams ``fault_after_tokens`` tokens, then goes
      silent the same way; ``reset`` sends ``fault_after_tokens`` tokens and closes the
      connection in the middle of the chunked body (no response at all when not
      streaming); ``malformed`` streams tokens that are not valid harmony (the final
      answer lacks its ``<|start|>assistant<|channel|>final<|message|>`` header), so a
      strict ``StreamableParser`` raises ``HarmonyError``; ``stream_error`` sends
      ``fault_after_tokens`` tokens then vLLM's in-stream error event and ``[DONE]``;
      ``restart`` answers 503 and turns ``loading`` on for ``restart_seconds``, as an
      engine that went down and comes back; ``shutdown`` is vLLM stopping gracefully
      mid-stream: ``fault_after_tokens`` tokens, then a chunk with ``finish_reason:
      "abort"`` (the engine aborts its in-flight requests), the usage and ``[DONE]``,
      and ``loading`` on for ``restart_seconds``.
    * ``max_model_len``: context length; a prompt longer than ``max_model_len -
      max_tokens`` is refused with vLLM's 400 message.
    * ``loading``: while true, ``GET /health`` answers 503.
    * ``commentary``: always add a commentary-channel preamble before the final answer
      (it is also added when the last user message contains the word "commentary").
    * ``tool_call``: answer with a function call to ``tool_name`` on the commentary
      channel, ending in ``<|call|>``, unless a tool result already follows the last
      user message (then the final answer quotes it).
    * ``fault_after_tokens``: tokens sent before ``reset``/``stall``/``stream_error``.
    * ``answer_repeat``: the final answer repeats the question this many times (for
      outputs larger than any one message may be).

    ``GET /metrics`` reports vLLM's gauges ``vllm:num_requests_running`` (streams being
    generated) and ``vllm:num_requests_waiting`` (streams in ``queue_delay``); a request
    a fault lost (``hang``, a ``stall`` gone silent) is in neither, as in vLLM.

    Records: ``requests_served`` (completion requests received), ``last_request`` (the
    parsed JSON body of the latest one), ``requests`` (all of them) and
    ``request_seconds`` (how long each took to answer, for the benchmarks).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        port: int = 0,
        token_delay: float = 0.0,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        model_root: str | None = None,
        stream_interval: int = 1,
    ) -> None:
        self.model = model
        self.model_root = model_root or model
        self.stream_interval = stream_interval
        digest = hashlib.sha256(f"{model}\n{max_model_len}".encode()).hexdigest()[:8]
        self.system_fingerprint = f"vllm-{VLLM_VERSION}-{digest}"
        self.port = port
        self.token_delay = token_delay
        self.queue_delay = 0.0
        self.running = 0
        self.waiting = 0
        self.max_model_len = max_model_len
        self.fail_next: list[str] = []
        self.loading = False
        self.restart_seconds = 1.0
        self.commentary = False
        self.tool_call = False
        self.tool_name = "functions.lookup"
        self.fault_after_tokens = 3
        self.answer_repeat = 1
        # Like vLLM's --api-key: /v1 requests need "Authorization: Bearer <key>" (401
        # {"error": "Unauthorized"} otherwise); /health and /version stay open.
        self.api_key: str | None = None
        self.requests_served = 0
        self.last_request: Json | None = None
        self.requests: list[Json] = []
        self.request_seconds: list[float] = []
        self.encoding = harmony_encoding()
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``), once started."""
        if self._url is None:
            raise RuntimeError("the stand-in engine is not running")
        return self._url

    async def start(self) -> str:
        """Start listening on 127.0.0.1 (port 0 picks a free one); return the URL."""
        if self._runner is not None:
            return self.url
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._json_not_found, self._authenticate])
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._timed_completions)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, HOST, self.port)
        await site.start()
        self._runner = runner
        port = int(runner.addresses[0][1])
        self._url = f"http://{HOST}:{port}"
        return self._url

    async def stop(self) -> None:
        """Stop listening; hung and stalled requests are dropped (connection closed)."""
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._url = None

    async def __aenter__(self) -> StandinEngine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self, timeout: float = 30.0) -> str:
        """Run the server on its own event loop in a daemon thread; return the URL."""
        if self._thread is not None:
            return self.url
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failures: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:  # reported to the starting thread
                failures.append(error)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=run, name="standin-engine", daemon=True)
        thread.start()
        if not started.wait(timeout):
            raise TimeoutError("the stand-in engine did not start in time")
        if failures:
            thread.join()
            raise failures[0]
        self._thread, self._thread_loop = thread, loop
        return self.url

    def stop_in_thread(self, timeout: float = 30.0) -> None:
        """Stop a server started with ``start_in_thread``."""
        thread, loop = self._thread, self._thread_loop
        if thread is None or loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._thread_loop = None

    def __enter__(self) -> StandinEngine:
        self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_in_thread()

    # -- what to say -------------------------------------------------------------------

    def plan(self, prompt_ids: Sequence[int], *, malformed: bool = False) -> list[int]:
        """The full harmony completion the stand-in would generate for this prompt."""
        encoding = harmony_encoding()
        facts = read_prompt(str(encoding.decode(list(prompt_ids))))
        parts: list[int | str] = [CHANNEL, "analysis", MESSAGE, reasoning_text(facts), END]
        if malformed:
            return self._tokens([*parts, answer_text(facts), RETURN])
        if self.commentary or _COMMENTARY_WORD.search(facts.question):
            parts += [START, "assistant", CHANNEL, "commentary", MESSAGE, preamble_text(facts)]
            parts += [END]
        if self.tool_call and facts.tool_result is None:
            arguments = _dumps({"query": facts.question})
            parts += [START, "assistant", CHANNEL, f"commentary to={self.tool_name} "]
            parts += [CONSTRAIN, "json", MESSAGE, arguments, CALL]
        else:
            answer = answer_text(facts) + facts.question * (self.answer_repeat - 1)
            parts += [START, "assistant", CHANNEL, "final", MESSAGE, answer, RETURN]
        return self._tokens(parts)

    @staticmethod
    def _tokens(parts: Sequence[int | str]) -> list[int]:
        encoding = harmony_encoding()
        tokens: list[int] = []
        for part in parts:
            if isinstance(part, int):
                tokens.append(part)
            else:  # text never becomes special tokens, whatever the user typed
                # In pieces: BPE is quadratic in a run without pre-token breaks (128K "="
                # take seconds), and a model may emit any tokens that decode to its text.
                for start in range(0, len(part), _ENCODE_PIECE):
                    piece = part[start : start + _ENCODE_PIECE]
                    tokens += [int(t) for t in encoding.encode(piece, disallowed_special=())]
        return tokens

    # -- handlers ----------------------------------------------------------------------

    @web.middleware
    async def _json_not_found(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # FastAPI answers unknown routes with {"detail": ...} JSON; so does the stand-in.
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status in (404, 405):
                body = _dumps({"detail": error.reason}).encode()
                return web.Response(status=error.status, body=body, content_type="application/json")
            raise

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.api_key is not None and request.path.startswith("/v1"):
            scheme, _, given = (request.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.encode(), self.api_key.encode()
            ):
                return _json_response({"error": "Unauthorized"}, status=HTTPStatus.UNAUTHORIZED)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.loading else 200)

    async def _metrics(self, request: web.Request) -> web.Response:
        labels = f'engine="0",model_name="{self.model}"'
        lines = []
        for name, value, what in (
            ("running", self.running, "Number of requests in model execution batches."),
            ("waiting", self.waiting, "Number of requests waiting to be processed."),
        ):
            lines += [
                f"# HELP vllm:num_requests_{name} {what}",
                f"# TYPE vllm:num_requests_{name} gauge",
                f"vllm:num_requests_{name}{{{labels}}} {float(value)}",
            ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def _version(self, request: web.Request) -> web.Response:
        return _json_response({"version": VLLM_VERSION})

    async def _models(self, request: web.Request) -> web.Response:
        now = int(time.time())
        permission = {
            "id": f"modelperm-{_random_uuid()}",
            "object": "model_permission",
            "created": now,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        card = {
            "id": self.model,
            "object": "model",
            "created": now,
            "owned_by": "vllm",
            "root": self.model_root,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [permission],
        }
        return _json_response({"object": "list", "data": [card]})

    async def _timed_completions(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            return await self._completions(request)
        finally:
            self.request_seconds.append(time.monotonic() - started)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError as error:
            return _error_response(
                f"JSON decode error: {error}", "BadRequestError", HTTPStatus.BAD_REQUEST
            )
        if not isinstance(body, dict):
            return _error_response(
                "The request body must be a JSON object.", "BadRequestError", HTTPStatus.BAD_REQUEST
            )
        self.requests_served += 1
        self.last_request = body
        self.requests.append(body)
        fault = self.fail_next.pop(0) if self.fail_next else None
        if fault is not None and fault not in FAULTS:
            return _error_response(
                f"unknown stand-in fault {fault!r}",
                "InternalServerError",
                HTTPStatus.INTERNAL_SERVER_ERROR,
            )
        if fault == "http500":
            return _error_response(
                "Stand-in engine fault: internal server error.",
                "InternalServerError",
                HTTPStatus.INTERNAL_SERVER_ERROR,
            )
        if fault == "restart":
            # As a restarting engine: this request fails, /health fails for a while.
            self.loading = True
            asyncio.get_running_loop().call_later(
                self.restart_seconds, setattr, self, "loading", False
            )
        if fault in ("http503", "restart"):
            return _error_response(
                "Stand-in engine fault: service unavailable.",
                "ServiceUnavailableError",
                HTTPStatus.SERVICE_UNAVAILABLE,
            )
        if fault == "http400":
            return _error_response(
                "Stand-in engine fault: bad request.", "BadRequestError", HTTPStatus.BAD_REQUEST
            )
        if fault == "hang":
            await self._wait_until_dropped(request)
            _drop_connection(request)
            return web.Response(status=503)  # never reaches the client: it is gone
        try:
            completion = self._validate(body)
        except _RequestError as error:
            return _error_response(error.message, error.err_type, error.status, error.param)
        planned = self.plan(completion.prompt_ids, malformed=fault == "malformed")
        request_id = f"cmpl-{request.headers.get('X-Request-Id') or _random_uuid()}"
        if completion.stream:
            return await self._stream(request, completion, planned, request_id, fault)
        if fault in ("reset", "stall"):
            if fault == "stall":
                await self._wait_until_dropped(request)
            _drop_connection(request)
            return web.Response(status=503)
        if fault == "stream_error":
            return _error_response(
                "Stand-in engine fault: generation failed.",
                "InternalServerError",
                HTTPStatus.INTERNAL_SERVER_ERROR,
            )
        return await self._respond(completion, planned, request_id)

    def _validate(self, body: Json) -> _Completion:
        """The checks vLLM makes before generating, with its messages."""
        model = body.get("model")
        stream = _optional(body, "stream", bool) or False
        stream_options = body.get("stream_options")
        if stream_options is not None and not isinstance(stream_options, dict):
            raise _bad_request("stream_options must be an object")
        if stream_options and not stream:
            raise _bad_request(
                "Stream options can only be defined when `stream=True`.", "stream_options"
            )
        if model is not None and model != self.model:
            raise _RequestError(
                f"The model `{model}` does not exist. Valid aliases: {self.model}.",
                HTTPStatus.NOT_FOUND,
                "NotFoundError",
                param="model",
            )
        temperature = _optional(body, "temperature", float)
        if temperature is not None and temperature < 0:
            raise _bad_request(
                f"temperature must be non-negative, got {float(temperature)}.",
                "temperature",
                float(temperature),
            )
        n = _optional(body, "n", int)
        if n is not None and n != 1:
            raise _bad_request("The stand-in engine supports only n=1.")
        prompt = body.get("prompt")
        encoding = harmony_encoding()
        if isinstance(prompt, str) and prompt:
            prompt_ids = [int(t) for t in encoding.encode(prompt, allowed_special="all")]
        elif isinstance(prompt, list) and prompt and all(_is_token(t) for t in prompt):
            prompt_ids = [int(t) for t in prompt]
        elif prompt is None or prompt in ("", []):
            raise _bad_request("You must pass at least one prompt")
        else:
            raise _bad_request(
                "prompt must be a string or a list of non-negative token ids "
                "(the stand-in serves one prompt per request)"
            )
        if (too_big := max(prompt_ids)) >= VOCAB_SIZE:
            raise _bad_request(f"Token id {too_big} is out of vocabulary")
        max_tokens = _optional(body, "max_tokens", int)
        if max_tokens is not None and max_tokens < 1:
            raise _bad_request(f"max_tokens must be at least 1, got {max_tokens}.")
        # vLLM refuses only a prompt that alone exceeds the context window; max_tokens is
        # clamped to what is left of it (the completion then ends with "length").
        if len(prompt_ids) > self.max_model_len:
            raise _RequestError(
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, your prompt contains {len(prompt_ids)} input tokens, which "
                "exceeds this limit even without any output tokens. Please reduce the "
                f"length of the input prompt. (parameter=input_tokens, value={len(prompt_ids)})",
                HTTPStatus.BAD_REQUEST,
                "BadRequestError",
                param="input_tokens",
            )
        room = self.max_model_len - len(prompt_ids)
        max_tokens = room if max_tokens is None else min(max_tokens, room)
        stop_ids = _optional(body, "stop_token_ids", list) or []
        if not all(_is_token(t) for t in stop_ids):
            raise _bad_request("stop_token_ids must be a list of non-negative integers")
        ignore_eos = bool(_optional(body, "ignore_eos", bool))
        if not ignore_eos:  # SamplingParams.update_from_generation_config
            stop_ids = [*stop_ids, *GENERATION_CONFIG_STOP_IDS]
        sampling = Sampling(
            max_tokens=max_tokens,
            stop_token_ids=frozenset(stop_ids),
            ignore_eos=ignore_eos,
            skip_special_tokens=_flag(body, "skip_special_tokens", True),
            include_stop_str_in_output=_flag(body, "include_stop_str_in_output", False),
            max_model_len=self.max_model_len,
        )
        # vLLM: stream_options present means include_usage defaults to true; continuous
        # usage (usage on every chunk) needs include_usage too.
        include_usage = stream_options is not None and stream_options.get("include_usage", True)
        include_usage = include_usage is True
        continuous = include_usage and (stream_options or {}).get("continuous_usage_stats")
        return _Completion(
            body=body,
            prompt_ids=prompt_ids,
            sampling=sampling,
            stream=stream,
            include_usage=include_usage,
            continuous_usage=continuous is True,
            return_token_ids=bool(_optional(body, "return_token_ids", bool)),
        )

    async def _respond(
        self, completion: _Completion, planned: list[int], request_id: str
    ) -> web.Response:
        tokens: list[int] = []
        text = ""
        last: Step | None = None
        for step in generate(
            self.encoding, planned, len(completion.prompt_ids), completion.sampling
        ):
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            tokens.append(step.token)
            text += step.text
            last = step
        prompt_tokens = len(completion.prompt_ids)
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": last.finish_reason if last else None,
            "stop_reason": last.stop_reason if last else None,
            "token_ids": tokens if completion.return_token_ids else None,
            "prompt_logprobs": None,
            "prompt_token_ids": completion.prompt_ids if completion.return_token_ids else None,
            "routed_experts": None,
        }
        body = {
            "id": request_id,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "service_tier": None,
            "system_fingerprint": self.system_fingerprint,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + len(tokens),
                "completion_tokens": len(tokens),
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
        return _json_response(body)

    async def _stream(
        self,
        request: web.Request,
        completion: _Completion,
        planned: list[int],
        request_id: str,
        fault: str | None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream; charset=utf-8"}
        )
        await response.prepare(request)
        created = int(time.time())
        prompt_tokens = len(completion.prompt_ids)
        generated = 0

        async def send(payload: Json | str) -> None:
            data = payload if isinstance(payload, str) else _dumps(payload)
            await response.write(f"data: {data}\n\n".encode())

        group: list[Step] = []

        async def send_group() -> None:
            first = generated == len(group)
            choice = {
                "index": 0,
                "text": "".join(step.text for step in group),
                "logprobs": None,
                "finish_reason": group[-1].finish_reason,
                "stop_reason": group[-1].stop_reason,
                "prompt_token_ids": (
                    completion.prompt_ids if first and completion.return_token_ids else None
                ),
                "token_ids": [step.token for step in group]
                if completion.return_token_ids
                else None,
            }
            chunk: Json = {
                "id": request_id,
                "object": "text_completion",
                "created": created,
                "model": self.model,
                "choices": [choice],
            }
            if completion.continuous_usage:
                chunk["usage"] = {
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": prompt_tokens + generated,
                    "completion_tokens": generated,
                    "prompt_tokens_details": None,
                }
            group.clear()
            await send(chunk)

        try:
            if self.queue_delay:
                self.waiting += 1
                try:
                    await asyncio.sleep(self.queue_delay)
                finally:
                    self.waiting -= 1
            self.running += 1
            try:
                for step in generate(self.encoding, planned, prompt_tokens, completion.sampling):
                    if fault in ("reset", "stall", "stream_error", "shutdown") and (
                        generated >= self.fault_after_tokens
                    ):
                        break
                    if self.token_delay:
                        await asyncio.sleep(self.token_delay)
                    generated += 1
                    group.append(step)
                    # vLLM's --stream-interval: the first token at once, then groups of N
                    # tokens, and whatever is left when the request finishes.
                    if (
                        generated == 1
                        or len(group) >= self.stream_interval
                        or step.finish_reason is not None
                    ):
                        await send_group()
                if group:
                    await send_group()
            finally:
                self.running -= 1
            if fault == "shutdown":
                self.loading = True
                asyncio.get_running_loop().call_later(
                    self.restart_seconds, setattr, self, "loading", False
                )
                aborted = {
                    "index": 0,
                    "text": "",
                    "logprobs": None,
                    "finish_reason": "abort",
                    "stop_reason": None,
                    "token_ids": [] if completion.return_token_ids else None,
                }
                await send(
                    {
                        "id": request_id,
                        "object": "text_completion",
                        "created": created,
                        "model": self.model,
                        "choices": [aborted],
                    }
                )
            if fault == "reset":
                _drop_connection(request)
                return response
            if fault == "stall":
                await self._wait_until_dropped(request)
                _drop_connection(request)
                return response
            if fault == "stream_error":
                message = "Stand-in engine fault: generation failed."
                status = HTTPStatus.INTERNAL_SERVER_ERROR
                await send(error_body(message, "InternalServerError", status))
            elif completion.include_usage:
                await send(
                    {
                        "id": request_id,
                        "object": "text_completion",
                        "created": created,
                        "model": self.model,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt_tokens,
                            "total_tokens": prompt_tokens + generated,
                            "completion_tokens": generated,
                        },
                        "system_fingerprint": self.system_fingerprint,
                    }
                )
            await send("[DONE]")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; vLLM aborts the request the same way
        return response

    async def _wait_until_dropped(self, request: web.Request) -> None:
        """Wait until ``stop()`` is called or the client closes its connection."""
        stopping = self._stopping
        assert stopping is not None
        while not stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.1)


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _optional(body: Json, key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if kind is int and not _is_int(value):
        raise _bad_request(f"{key} must be an integer")
    if kind is float and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if kind is not int and not isinstance(value, kind):
        raise _bad_request(f"{key} must be of type {kind.__name__}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(body: Json, key: str, default: bool) -> bool:
    value = _optional(body, key, bool)
    return default if value is None else bool(value)


# --------------------------------------------------------------------------------------
# Command line (the local demo runs the stand-in as a process)
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gptoss_sandbox.standin_engine",
        description=(
            "A stand-in for vLLM's OpenAI-compatible server, for tests and the local demo "
            "only. Listens on 127.0.0.1."
        ),
    )
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the served model name")
    parser.add_argument("--model-root", default=None, help="`root` in /v1/models")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    parser.add_argument(
        "--loading-seconds",
        type=float,
        default=0.0,
        help="answer 503 on /health for this long after starting, like a loading model",
    )
    parser.add_argument(
        "--fail-next",
        default="",
        help=f"comma-separated faults for the next requests: {', '.join(sorted(FAULTS))}",
    )
    parser.add_argument("--commentary", action="store_true", help="add commentary preambles")
    parser.add_argument("--tool-call", action="store_true", help="answer with function calls")
    return parser


async def _serve(engine: StandinEngine, loading_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, done.set)
    if loading_seconds > 0:
        engine.loading = True
        loop.call_later(loading_seconds, setattr, engine, "loading", False)
    url = await engine.start()
    print(f"stand-in engine (NOT vLLM) serving {engine.model!r} on {url}", flush=True)
    try:
        await done.wait()
    finally:
        await engine.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    faults = [f for f in (part.strip() for part in args.fail_next.split(",")) if f]
    if unknown := sorted(set(faults) - FAULTS):
        print(f"unknown faults: {', '.join(unknown)}", file=sys.stderr)
        return 2
    engine = StandinEngine(
        args.model,
        port=args.port,
        token_delay=args.token_delay,
        max_model_len=args.max_model_len,
        model_root=args.model_root,
    )
    engine.fail_next = faults
    engine.commentary = args.commentary
    engine.tool_call = args.tool_call
    asyncio.run(_serve(engine, args.loading_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
