"""An incremental reader of server-sent events, as the HTML specification defines them.

Lines end at CR, LF or CRLF and nowhere else: vLLM writes JSON with non-ASCII characters
unescaped, so a generated U+2028 or form feed is content, not a line end (a reader built
on ``str.splitlines`` would cut the JSON apart). Bytes are decoded as UTF-8 with
replacement; a byte order mark at the start is dropped; an event still open when the
stream ends is discarded.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str
    data: str


class EventReader:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text not yet ended by a line end
        self._started = False
        self._data: list[str] = []
        self._type = ""

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by ``chunk``."""
        return self._lines(self._decoder.decode(chunk), final=False)

    def close(self) -> list[Event]:
        """Events completed by the end of the stream (a trailing CR ends a line)."""
        return self._lines(self._decoder.decode(b"", final=True), final=True)

    def _lines(self, text: str, *, final: bool) -> list[Event]:
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        buffer = self._pending + text
        events: list[Event] = []
        start = 0
        index = 0
        length = len(buffer)
        while index < length:
            char = buffer[index]
            if char == "\n" or char == "\r":
                if char == "\r" and index + 1 == length and not final:
                    break  # maybe the first half of a CRLF: wait for the next chunk
                event = self._line(buffer[start:index])
                if event is not None:
                    events.append(event)
                if char == "\r" and index + 1 < length and buffer[index + 1] == "\n":
                    index += 1
                start = index + 1
            index += 1
        self._pending = buffer[start:]
        if final:
            self._pending = ""
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        return None  # id and retry do not matter to a one-shot request

    def _dispatch(self) -> Event | None:
        data, event_type = self._data, self._type
        self._data, self._type = [], ""
        if not data:
            return None
        return Event(event_type or "message", "\n".join(data))
