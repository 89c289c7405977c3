"""The last step of a batch: the shards' parts become ``output.jsonl`` and
``errors.jsonl``, each input line at most once, then the parts are removed.

Both files are written whole before ``summary.json`` (the counts) appears, and the
parts are removed only after it: a merge killed at any point is run again from the
parts, and one killed while removing them finds the summary and only finishes the
removal.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from gptoss_operator.workers.batch.parts import (
    ERRORS,
    LINES_READ,
    OUTPUT,
    PARTS,
    SUMMARY,
    LineSet,
    Tally,
    decode_rows,
    shard_of,
)
from gptoss_operator.workers.batch.storage import OutputFolder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Summary:
    succeeded: int
    failed: int
    promptTokens: int
    completionTokens: int
    duplicates: int  # rows of lines already merged (overlapping attempts), dropped
    output: str
    errors: str


class LinesMissing(Exception):
    """A finished shard read more lines than its parts hold."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def merge(folder: OutputFolder) -> Summary:
    """Raises LinesMissing (the parts are kept) and StorageError."""
    names = folder.list(f"{PARTS}/")
    parts = [name for name in names if name.endswith(".jsonl")]
    if folder.exists(SUMMARY):
        summary = Summary(**json.loads(folder.read(SUMMARY)))
        log.info("already merged; removing %d leftover parts", len(parts))
    else:
        read = {
            shard_of(name): int(json.loads(folder.read(name))["lines"])
            for name in names
            if name.endswith(f"/{LINES_READ}")
        }
        summary = _merge_parts(folder, parts, read)
        folder.write(SUMMARY, json.dumps(asdict(summary), indent=2).encode())
    for name in names:
        folder.delete(name)
    return summary


def _merge_parts(folder: OutputFolder, parts: list[str], read: dict[int, int]) -> Summary:
    """Write both files from the parts; then check each finished shard's lines are all
    there (``read``: lines read by shard)."""
    seen = LineSet()
    tally = Tally()
    duplicates = 0
    held: dict[int, int] = {}
    with folder.writer(OUTPUT) as output, folder.writer(ERRORS) as errors:
        for name in parts:
            shard = shard_of(name)
            for row in decode_rows(folder.read(name)):
                if not seen.add(row.line):
                    duplicates += 1
                    continue
                held[shard] = held.get(shard, 0) + 1
                tally.count(row)
                (output if row.ok else errors).write(row.record + b"\n")
    if duplicates:
        log.info("dropped %d rows of lines written twice", duplicates)
    missing = [
        f"shard {shard} read {lines} lines, its parts hold {held.get(shard, 0)}"
        for shard, lines in sorted(read.items())
        if held.get(shard, 0) != lines
    ]
    if missing:
        raise LinesMissing("lines are missing from the parts: " + "; ".join(missing))
    return Summary(
        succeeded=tally.succeeded,
        failed=tally.failed,
        promptTokens=tally.prompt_tokens,
        completionTokens=tally.completion_tokens,
        duplicates=duplicates,
        output=folder.url(OUTPUT),
        errors=folder.url(ERRORS),
    )
