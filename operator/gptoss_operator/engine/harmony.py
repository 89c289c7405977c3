"""Render chat requests in the harmony format and parse gpt-oss output into channels.

Rendering follows what vLLM does for gpt-oss chat (``tests/engine`` checks the token ids
against vLLM's own renderer): the reasoning effort goes in the system message; a leading
``system`` or ``developer`` message becomes the harmony developer message's instructions,
next to the function tools; later ones are developer messages where they stand. Earlier
assistant turns are final-channel messages, their tool calls commentary messages to
``functions.NAME``, tool results messages from ``functions.NAME``. Analysis the client
sends back is kept only after the last final answer, so within a tool loop (the harmony
guide asks for it) and never from earlier turns. The prompt ends ready for the assistant.

One addition vLLM's chat path does not make: a ``json_schema`` response format is
described at the end of the developer message, under ``# Response Formats``, as the
harmony guide specifies.

Parsing feeds generated token ids into openai-harmony's ``StreamableParser``. Output that
breaks the format is parsed again leniently; what still cannot be parsed is kept raw.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    HarmonyError,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    StreamableParser,
    SystemContent,
    ToolDescription,
    load_harmony_encoding,
)

from gptoss_operator.engine.vocab import ensure_offline_vocab

ReasoningLevel = Literal["low", "medium", "high"]

START_TOKEN = 200006  # <|start|>
END_TOKEN = 200007  # <|end|>
MESSAGE_TOKEN = 200008  # <|message|>
END_OF_TEXT_TOKEN = 199999  # <|endoftext|>: a stop id vLLM adds for gpt-oss; not harmony
RETURN_TOKEN = 200002  # <|return|>: the final answer is complete
CALL_TOKEN = 200012  # <|call|>: the model calls a tool
# Every named special token of o200k_harmony, by its text.
SPECIAL_TOKENS = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": END_OF_TEXT_TOKEN,
    "<|return|>": RETURN_TOKEN,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": START_TOKEN,
    "<|end|>": END_TOKEN,
    "<|message|>": MESSAGE_TOKEN,
    "<|call|>": CALL_TOKEN,
}
# A message header (role, channel, recipient, content type) is a handful of tokens; output
# that stays in a header far longer than this is not harmony.
MAX_HEADER_TOKENS = 64
_EFFORT = {
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}


FUNCTIONS = "functions."  # the namespace of the tools a request declares


@dataclass(frozen=True)
class ToolCall:
    """A function call the assistant made: ``arguments`` is JSON text (as written)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = ""
    # Assistant messages: the calls they made, and the analysis that preceded them.
    tool_calls: tuple[ToolCall, ...] = ()
    analysis: str | None = None
    # Tool messages: the call they answer, and the function's name (found from the call
    # when not given).
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None  # a JSON schema


@dataclass(frozen=True)
class ResponseFormat:
    """``json_schema`` (with ``schema``), ``json_object`` or ``text``."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = "response"
    description: str | None = None
    schema: Mapping[str, Any] | None = None


@dataclass
class ParsedOutput:
    """What the model said, by channel."""

    response: str = ""
    analysis: str = ""
    commentary: str = ""
    # Function calls the model completed: (name, arguments as written).
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    reached_final: bool = False
    complete: bool = False  # the final message ended with <|return|>
    recovered: bool = False  # strict parsing failed; lenient parsing or raw text used
    cut_in_header: bool = False  # generation stopped inside a message header
    error: str | None = None
    raw_text: str | None = None  # the whole output, kept whenever channels miss some of it

    @property
    def has_text(self) -> bool:
        return bool(self.response or self.analysis or self.commentary or self.tool_calls)


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
        tools: Sequence[FunctionTool] = (),
        response_format: ResponseFormat | None = None,
    ) -> Conversation:
        system = SystemContent.new().with_reasoning_effort(_EFFORT[reasoning_level])
        system = system.with_conversation_start_date(
            (start_date or datetime.datetime.now(datetime.UTC).date()).isoformat()
        )
        rendered = [Message.from_role_and_content(Role.SYSTEM, system)]
        instructions: str | None = None
        rest = list(messages)
        if rest and rest[0].role in ("system", "developer"):
            instructions, rest = rest[0].content, rest[1:]
        if instructions or tools or _describes(response_format):
            developer = DeveloperContent.new()
            if instructions is not None:
                developer = developer.with_instructions(instructions)
            if tools:
                developer = developer.with_function_tools([_tool(tool) for tool in tools])
            rendered.append(Message.from_role_and_content(Role.DEVELOPER, developer))
        names = {call.id: call.name for m in rest for call in m.tool_calls}
        for message in rest:
            rendered += _harmony_messages(message, names)
        return Conversation.from_messages(_drop_earlier_analysis(rendered))

    def render(
        self,
        messages: Sequence[ChatMessage],
        reasoning_level: ReasoningLevel,
        start_date: datetime.date | None = None,
        *,
        tools: Sequence[FunctionTool] = (),
        response_format: ResponseFormat | None = None,
    ) -> list[int]:
        """Prompt token ids, ending where the assistant's reply begins."""
        conversation = self.conversation(
            messages, reasoning_level, start_date, tools, response_format
        )
        tokens = list(
            self.encoding.render_conversation_for_completion(
                conversation, Role.ASSISTANT, RenderConversationConfig(auto_drop_analysis=False)
            )
        )
        if response_format is not None and _describes(response_format):
            tokens = self._with_response_format(tokens, response_format)
        return tokens

    def _with_response_format(self, tokens: list[int], format_: ResponseFormat) -> list[int]:
        """The developer message's text extended by a ``# Response Formats`` section, and
        encoded again whole, as harmony encodes a developer message's sections."""
        developer = self.encoding.encode("developer", allowed_special=set())
        header = [START_TOKEN, *developer, MESSAGE_TOKEN]
        begin = next(
            i + len(header) for i in range(len(tokens)) if tokens[i : i + len(header)] == header
        )
        end = tokens.index(END_TOKEN, begin)
        text = self.decode(tokens[begin:end])
        text = f"{text}\n\n{_response_formats(format_)}" if text else _response_formats(format_)
        encoded = list(self.encoding.encode(text, allowed_special=set()))
        return tokens[:begin] + encoded + tokens[end:]

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.encoding.decode(list(tokens)))

    def parser(self) -> OutputParser:
        return OutputParser(self)


def _describes(format_: ResponseFormat | None) -> bool:
    return format_ is not None and format_.type == "json_schema" and format_.schema is not None


def _response_formats(format_: ResponseFormat) -> str:
    """The harmony guide's structured-output section: name, description, JSON schema."""
    lines = ["# Response Formats", "", f"## {format_.name}", ""]
    if format_.description:
        lines.append(f"// {format_.description}")
    lines.append(json.dumps(format_.schema, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(lines)


def _tool(tool: FunctionTool) -> ToolDescription:
    parameters = dict(tool.parameters) if tool.parameters is not None else None
    return ToolDescription.new(tool.name, tool.description, parameters=parameters)


def _harmony_messages(message: ChatMessage, names: Mapping[str, str]) -> list[Message]:
    """One chat message as harmony messages (an assistant turn may be several)."""
    if message.role in ("system", "developer"):
        developer = DeveloperContent.new().with_instructions(message.content)
        return [Message.from_role_and_content(Role.DEVELOPER, developer)]
    if message.role == "user":
        return [Message.from_role_and_content(Role.USER, message.content)]
    if message.role == "tool":
        name = names.get(message.tool_call_id or "") or message.name or ""
        author = Author.new(Role.TOOL, f"{FUNCTIONS}{name}")
        result = Message.from_author_and_content(author, message.content)
        return [result.with_channel("commentary").with_recipient("assistant")]
    said: list[Message] = []
    if message.analysis:
        said.append(_assistant(message.analysis, "analysis"))
    if message.tool_calls:
        if message.content:  # a preamble to the calls, for the user's eyes
            said.append(_assistant(message.content, "commentary"))
        for call in message.tool_calls:
            said.append(
                _assistant(call.arguments, "commentary")
                .with_recipient(f"{FUNCTIONS}{call.name}")
                .with_content_type("json")
            )
    elif message.content:
        said.append(_assistant(message.content, "final"))
    return said


def _assistant(text: str, channel: str) -> Message:
    return Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)


def _drop_earlier_analysis(messages: list[Message]) -> list[Message]:
    """Analysis before the last final answer is dropped: it led to an answer already
    given. Analysis after it (the current turn's, before its tool calls) stays."""
    finals = [i for i, m in enumerate(messages) if m.channel == "final"]
    if not finals:
        return messages
    last = finals[-1]
    return [m for i, m in enumerate(messages) if i >= last or m.channel != "analysis"]


@dataclass
class _Channels:
    response: list[str] = field(default_factory=list)
    analysis: list[str] = field(default_factory=list)
    commentary: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, str]] = field(default_factory=list)


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
        recipient = _recipient(message.recipient)
        if recipient and recipient.startswith(FUNCTIONS) and len(recipient) > len(FUNCTIONS):
            channels.tool_calls.append((recipient.removeprefix(FUNCTIONS), text))
            continue
        reached_final |= _add(channels, message.channel, recipient, text)
    if not finished:
        current = parser.current_content
        if current:
            reached_final |= _add(
                channels, parser.current_channel, _recipient(parser.current_recipient), current
            )
    return ParsedOutput(
        response="".join(channels.response),
        analysis="\n\n".join(channels.analysis),
        commentary="\n\n".join(channels.commentary),
        tool_calls=channels.tool_calls,
        reached_final=reached_final,
    )


def _recipient(recipient: str | None) -> str | None:
    """The recipient without a content type the parser may have read into it."""
    if recipient is None:
        return None
    return recipient.split("<|constrain|>", 1)[0].split(" ", 1)[0].strip() or None


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
