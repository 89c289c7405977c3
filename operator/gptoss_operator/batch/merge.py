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

from gptoss_operator.batch.parts import (
    ERRORS,
    OUTPUT,
    PARTS,
    SUMMARY,
    LineSet,
    Tally,
    decode_rows,
)
from gptoss_operator.batch.storage import OutputFolder

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


def merge(folder: OutputFolder) -> Summary:
    parts = [name for name in folder.list(f"{PARTS}/") if name.endswith(".jsonl")]
    if folder.exists(SUMMARY):
        summary = Summary(**json.loads(folder.read(SUMMARY)))
        log.info("already merged; removing %d leftover parts", len(parts))
    else:
        summary = _merge_parts(folder, parts)
        folder.write(SUMMARY, json.dumps(asdict(summary), indent=2).encode())
    for name in parts:
        folder.delete(name)
    return summary


def _merge_parts(folder: OutputFolder, parts: list[str]) -> Summary:
    seen = LineSet()
    tally = Tally()
    duplicates = 0
    with folder.writer(OUTPUT) as output, folder.writer(ERRORS) as errors:
        for name in parts:
            for row in decode_rows(folder.read(name)):
                if not seen.add(row.line):
                    duplicates += 1
                    continue
                tally.count(row)
                (output if row.ok else errors).write(row.record + b"\n")
    if duplicates:
        log.info("dropped %d rows of lines written twice", duplicates)
    return Summary(
        succeeded=tally.succeeded,
        failed=tally.failed,
        promptTokens=tally.prompt_tokens,
        completionTokens=tally.completion_tokens,
        duplicates=duplicates,
        output=folder.url(OUTPUT),
        errors=folder.url(ERRORS),
    )
