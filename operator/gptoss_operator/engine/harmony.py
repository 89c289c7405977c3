"""Render chat requests in the harmony format and parse gpt-oss output into channels.

Rendering follows what vLLM does for gpt-oss chat: the reasoning effort goes in the
system message, the user's ``system`` and ``developer`` messages become the harmony
developer message's instructions, earlier assistant turns are final-channel messages
(their analysis is never sent back), and the prompt ends ready for the assistant.

Parsing feeds generated token ids into openai-harmony's ``StreamableParser``. Output that
breaks the format is parsed again leniently; what still cannot be parsed is kept raw.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from openai_harmony import (
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    HarmonyError,
    Message,
    ReasoningEffort,
    Role,
    StreamableParser,
    SystemContent,
    load_harmony_encoding,
)

from gptoss_operator.engine.vocab import ensure_offline_vocab

ReasoningLevel = Literal["low", "medium", "high"]

END_OF_TEXT_TOKEN = 199999  # <|endoftext|>: a stop id vLLM adds for gpt-oss; not harmony
RETURN_TOKEN = 200002  # <|return|>: the final answer is complete
CALL_TOKEN = 200012  # <|call|>: the model calls a tool
# A message header (role, channel, recipient, content type) is a handful of tokens; output
# that stays in a header far longer than this is not harmony.
MAX_HEADER_TOKENS = 64
_EFFORT = {
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "developer", "user", "assistant"]
    content: str


@dataclass
class ParsedOutput:
    """What the model said, by channel."""

    response: str = ""
    analysis: str = ""
    commentary: str = ""
    reached_final: bool = False
    complete: bool = False  # the final message ended with <|return|>
    recovered: bool = False  # strict parsing failed; lenient parsing or raw text used
    cut_in_header: bool = False  # generation stopped inside a message header
    error: str | None = None
    raw_text: str | None = None  # the whole output, kept whenever channels miss some of it

    @property
    def has_text(self) -> bool:
        return bool(self.response or self.analysis or self.commentary)


class Harmony:
    """One loaded harmony encoding (loading takes ~0.2 s; share the instance)."""

    def __init__(self) -> None:
        ensure_offline_vocab()
        self.encoding: HarmonyEncoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        self._stop_token_ids = sorted(self.encoding.stop_tokens_for_assistant_actions())

    @property
    def stop_token_ids(self) -> list[int]:
        """``<|return|>`` and ``<|call|>`` (asked once: the encoding builds the set anew
        on every call)."""
        return list(self._stop_token_ids)

    def conversation(
        self,
        messages: Sequence[ChatMessage],
        reasoning_level: ReasoningLevel,
        start_date: datetime.date | None = None,
    ) -> Conversation:
        system = SystemContent.new().with_reasoning_effort(_EFFORT[reasoning_level])
        system = system.with_conversation_start_date(
            (start_date or datetime.datetime.now(datetime.UTC).date()).isoformat()
        )
        rendered = [Message.from_role_and_content(Role.SYSTEM, system)]
        instructions = [m.content for m in messages if m.role in ("system", "developer")]
        if instructions:
            developer = DeveloperContent.new().with_instructions("\n\n".join(instructions))
            rendered.append(Message.from_role_and_content(Role.DEVELOPER, developer))
        for message in messages:
            if message.role == "user":
                rendered.append(Message.from_role_and_content(Role.USER, message.content))
            elif message.role == "assistant":
                rendered.append(
                    Message.from_role_and_content(Role.ASSISTANT, message.content).with_channel(
                        "final"
                    )
                )
        return Conversation.from_messages(rendered)

    def render(
        self,
        messages: Sequence[ChatMessage],
        reasoning_level: ReasoningLevel,
        start_date: datetime.date | None = None,
    ) -> list[int]:
        """Prompt token ids, ending where the assistant's reply begins."""
        conversation = self.conversation(messages, reasoning_level, start_date)
        return list(self.encoding.render_conversation_for_completion(conversation, Role.ASSISTANT))

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.encoding.decode(list(tokens)))

    def parser(self) -> OutputParser:
        return OutputParser(self)


@dataclass
class _Channels:
    response: list[str] = field(default_factory=list)
    analysis: list[str] = field(default_factory=list)
    commentary: list[str] = field(default_factory=list)


class OutputParser:
    """Incremental parser of generated token ids (one per request)."""

    def __init__(self, harmony: Harmony) -> None:
        self.harmony = harmony
        self.tokens: list[int] = []
        self._strict: StreamableParser | None = StreamableParser(
            harmony.encoding, Role.ASSISTANT, strict=True
        )
        self._error: str | None = None

    def feed(self, token_ids: Sequence[int]) -> None:
        for token in token_ids:
            if token == END_OF_TEXT_TOKEN:
                continue
            self.tokens.append(token)
            if self._strict is None:
                continue
            try:
                self._strict.process(token)
            except HarmonyError as error:
                self._error = str(error)
                self._strict = None

    @property
    def current_channel(self) -> str | None:
        if self._strict is None:
            return None
        channel = self._strict.current_channel
        return str(channel) if channel else None

    def finish(self, stop_token: int | None = None) -> ParsedOutput:
        """Close the stream: ``stop_token`` is the token that ended generation, None when
        the token limit cut it. Whatever the channels do not hold is kept in raw_text."""
        if stop_token is not None and (not self.tokens or self.tokens[-1] != stop_token):
            self.feed([stop_token])
        complete = stop_token == RETURN_TOKEN
        if self._strict is not None:
            header = self._open_header() if stop_token is None else []
            if len(header) > MAX_HEADER_TOKENS:
                self._error = f"{len(header)} tokens without a complete message header"
            else:
                parsed = _collect(self._strict, finished=stop_token is not None)
                if parsed is not None:
                    parsed.complete = complete and parsed.reached_final
                    if header:
                        parsed.cut_in_header = True
                        parsed.raw_text = self.harmony.decode(self.tokens)
                    return parsed
        return self._recover(complete)

    def _open_header(self) -> list[int]:
        """Tokens of a message header the strict parser has begun and not finished."""
        assert self._strict is not None
        data: Any = self._strict.state_data
        if isinstance(data, str):  # some releases return it as JSON text
            try:
                data = json.loads(data)
            except ValueError:
                return []
        tokens = data.get("header_tokens") if isinstance(data, dict) else None
        return [int(t) for t in tokens] if isinstance(tokens, list) else []

    def _recover(self, complete: bool) -> ParsedOutput:
        lenient = StreamableParser(self.harmony.encoding, Role.ASSISTANT, strict=False)
        raw_text = self.harmony.decode(self.tokens)
        try:
            for token in self.tokens:
                lenient.process(token)
            parsed = _collect(lenient, finished=True)
        except HarmonyError as error:
            self._error = self._error or str(error)
            parsed = None
        if parsed is None or not (parsed.response or parsed.analysis or parsed.commentary):
            return ParsedOutput(
                response="",
                recovered=True,
                error=self._error or "the output is not in the harmony format",
                raw_text=raw_text,
            )
        parsed.recovered = True
        parsed.error = self._error or "the output broke the harmony format"
        parsed.raw_text = raw_text
        parsed.complete = complete and parsed.reached_final
        return parsed


def _collect(parser: StreamableParser, *, finished: bool) -> ParsedOutput | None:
    """Messages the parser completed, plus the one in progress when cut short."""
    channels = _Channels()
    reached_final = False
    try:
        if finished:
            parser.process_eos()
    except HarmonyError:
        if finished:
            return None
    for message in parser.messages:
        text = "".join(
            getattr(part, "text", "") for part in message.content if hasattr(part, "text")
        )
        reached_final |= _add(channels, message.channel, message.recipient, text)
    if not finished:
        current = parser.current_content
        if current:
            reached_final |= _add(
                channels, parser.current_channel, parser.current_recipient, current
            )
    return ParsedOutput(
        response="".join(channels.response),
        analysis="\n\n".join(channels.analysis),
        commentary="\n\n".join(channels.commentary),
        reached_final=reached_final,
    )


def _add(channels: _Channels, channel: str | None, recipient: str | None, text: str) -> bool:
    if channel == "final":
        channels.response.append(text)
        return True
    if channel == "analysis" and not recipient:
        channels.analysis.append(text)
    else:
        # Commentary, and tool calls on any channel: keep the recipient visible.
        prefix = f"to={recipient}: " if recipient else ""
        channels.commentary.append(prefix + text)
    return False
