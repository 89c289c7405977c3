"""A shard's results on storage, written in parts, and what a restarted worker learns
from them.

Each part is a file written whole (see ``batch.storage``) holding finished lines, one
per row: ``<line>\\t<kind>\\t<prompt tokens>\\t<completion tokens>\\t<record JSON>``,
kind ``o`` for the output file and ``e`` for the error file. A worker that restarts
reads its shard's parts and skips the lines they hold; the merge keeps the first row of
each line number, so a line written twice (two pods of one shard overlapping) still
appears once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PARTS = "parts"
OUTPUT = "output.jsonl"
ERRORS = "errors.jsonl"
SUMMARY = "summary.json"
LINES_READ = "lines.json"


def shard_prefix(shard: int) -> str:
    return f"{PARTS}/{shard:05d}/"


def part_name(shard: int, worker: str, sequence: int) -> str:
    return f"{shard_prefix(shard)}{worker}-{sequence:06d}.jsonl"


def lines_read_name(shard: int) -> str:
    """Written by a shard once all its lines are in its parts: how many it read."""
    return f"{shard_prefix(shard)}{LINES_READ}"


def lines_read_record(lines: int) -> bytes:
    return json.dumps({"lines": lines}).encode()


def shard_of(name: str) -> int:
    """The shard a name under ``parts/`` belongs to."""
    return int(name.removeprefix(f"{PARTS}/").split("/", 1)[0])


@dataclass(frozen=True)
class Row:
    line: int
    ok: bool
    prompt_tokens: int
    completion_tokens: int
    record: bytes  # the JSON of the output or error line, without a newline


def encode_row(
    line: int, ok: bool, record: dict[str, Any], prompt_tokens: int = 0, completion_tokens: int = 0
) -> bytes:
    body = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    kind = "o" if ok else "e"
    return f"{line}\t{kind}\t{prompt_tokens}\t{completion_tokens}\t{body}\n".encode()


def decode_rows(data: bytes) -> Iterator[Row]:
    for raw in data.split(b"\n"):
        if not raw:
            continue
        line, kind, prompt, completion, record = raw.split(b"\t", 4)
        yield Row(int(line), kind == b"o", int(prompt), int(completion), record)


class LineSet:
    """Line numbers seen, as a bitmap (10 million lines take 1.25 MB)."""

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, line: int) -> bool:
        """Mark a line; False when it was already marked."""
        index, bit = divmod(line, 8)
        if index >= len(self._bits):
            self._bits.extend(bytes(max(index + 1 - len(self._bits), len(self._bits))))
        if self._bits[index] >> bit & 1:
            return False
        self._bits[index] |= 1 << bit
        return True

    def __contains__(self, line: int) -> bool:
        index, bit = divmod(line, 8)
        return index < len(self._bits) and bool(self._bits[index] >> bit & 1)


@dataclass
class Tally:
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def count(self, row: Row) -> None:
        if row.ok:
            self.succeeded += 1
        else:
            self.failed += 1
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens

    @property
    def done(self) -> int:
        return self.succeeded + self.failed
