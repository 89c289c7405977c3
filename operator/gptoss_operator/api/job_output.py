"""Where a finished job's texts go: its status when they are small, ConfigMaps otherwise.

Sizes are counted as the apiserver sees them: UTF-8 bytes after JSON escaping (a NUL
costs 6 bytes, an emoji 4), never characters. Status keeps at most ``STATUS_BUDGET``
bytes of text, far below etcd's 1.5 MiB object limit; when the texts are larger, status
keeps the head of each and the whole texts go to ConfigMaps owned by the job, as many as
needed at ``CONFIG_MAP_BUDGET`` bytes each (a ConfigMap holds at most 1 MiB). A text too
large for one ConfigMap continues under the same key in the next one, so a reader joins
``data[key]`` across ``outputRef.configMapNames`` in order. Nothing is ever dropped.

``rawOutput`` (kept only when the harmony parse failed or was cut) repeats the other
texts, so it is the first to leave status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

STATUS_BUDGET = 200_000
CONFIG_MAP_BUDGET = 900_000
TRUNCATION_NOTE = "\n[truncated: the full text is in the ConfigMaps of status.outputRef, key {key}]"
# Status keeps these first, in this order, when it cannot keep everything.
PRIORITY = ("response", "analysis", "commentary", "rawOutput")


def encoded_size(text: str) -> int:
    """Bytes the text takes inside a JSON request body (quotes excluded)."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def head(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose encoded size is at most ``budget``."""
    if encoded_size(text) <= budget:
        return text
    low, high = 0, min(len(text), budget)
    while low < high:
        middle = (low + high + 1) // 2
        if encoded_size(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return text[:low]


@dataclass(frozen=True)
class OutputLayout:
    status_fields: dict[str, str]
    # ConfigMap data, in order (empty when everything fits in status).
    config_maps: list[dict[str, str]]

    @property
    def keys(self) -> list[str]:
        return sorted({key for data in self.config_maps for key in data})


def layout(
    texts: dict[str, str],
    status_budget: int = STATUS_BUDGET,
    config_map_budget: int = CONFIG_MAP_BUDGET,
) -> OutputLayout:
    """Decide where each text goes. Pure: the sidecar writes what this returns."""
    present = {key: text for key, text in texts.items() if text}
    if sum(encoded_size(text) for text in present.values()) <= status_budget:
        return OutputLayout(dict(texts), [])
    fields: dict[str, str] = {}
    remaining = status_budget
    ordered = sorted(present, key=lambda k: PRIORITY.index(k) if k in PRIORITY else len(PRIORITY))
    for position, key in enumerate(ordered):
        text = present[key]
        note = TRUNCATION_NOTE.format(key=key)
        # An even share of what is left, so one huge text cannot starve the others.
        share = remaining // (len(ordered) - position)
        if encoded_size(text) <= share:
            fields[key] = text
        elif share >= encoded_size(note):
            fields[key] = head(text, share - encoded_size(note)) + note
        else:
            fields[key] = ""  # no room even for the note: outputRef still says where
        remaining -= encoded_size(fields[key])
    return OutputLayout(fields, pack(present, config_map_budget))


def pack(texts: dict[str, str], budget: int) -> list[dict[str, str]]:
    """Fill ConfigMaps of at most ``budget`` bytes (keys included) with the texts,
    splitting a text that does not fit into pieces continued in the next ConfigMap."""
    maps: list[dict[str, str]] = [{}]
    room = budget
    for key, text in texts.items():
        rest = text
        while rest:
            piece = head(rest, room - len(key))
            if not piece:
                if not maps[-1]:
                    raise ValueError(f"a ConfigMap budget of {budget} bytes holds no text")
                maps.append({})
                room = budget
                continue
            maps[-1][key] = piece
            room -= len(key) + encoded_size(piece)
            rest = rest[len(piece) :]
    return [data for data in maps if data]


def join(key: str, config_maps: list[dict[str, str]]) -> str:
    """A text back from its ConfigMaps' data, in order."""
    return "".join(data.get(key, "") for data in config_maps)
