"""Where a finished job's texts go: sizes in encoded bytes, nothing dropped, any size."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_operator.api.job_output import (
    CONFIG_MAP_BUDGET,
    STATUS_BUDGET,
    encoded_size,
    head,
    join,
    layout,
    pack,
)


def test_small_texts_stay_in_status() -> None:
    placed = layout({"response": "a", "analysis": "b", "commentary": ""})
    assert placed.status_fields == {"response": "a", "analysis": "b", "commentary": ""}
    assert placed.config_maps == []


def test_sizes_are_encoded_bytes_not_characters() -> None:
    assert encoded_size("abc") == 3
    assert encoded_size("é") == 2
    assert encoded_size("🙂") == 4
    assert encoded_size("\x00") == 6  # \u0000 in JSON
    assert encoded_size('"\n') == 4
    # 60,000 emoji are 60,000 characters but 240,000 bytes: over the status budget.
    placed = layout({"response": "🙂" * 60_000})
    assert placed.config_maps, "counted as characters it would have stayed in status"
    assert encoded_size(placed.status_fields["response"]) <= STATUS_BUDGET


def test_head_never_exceeds_its_budget_and_is_the_longest_prefix() -> None:
    text = "a🙂\x00" * 1000
    for budget in (0, 1, 4, 5, 11, 12, 100, 9999):
        prefix = head(text, budget)
        assert text.startswith(prefix)
        assert encoded_size(prefix) <= budget
        if len(prefix) < len(text):
            assert encoded_size(text[: len(prefix) + 1]) > budget


def test_raw_output_leaves_status_first_and_the_answer_keeps_its_share() -> None:
    texts = {"response": "r" * 50_000, "analysis": "a" * 50_000, "rawOutput": "x" * 150_000}
    placed = layout(texts)
    assert placed.status_fields["response"] == texts["response"]
    assert placed.status_fields["analysis"] == texts["analysis"]
    assert placed.status_fields["rawOutput"].endswith("key rawOutput]")
    assert sum(encoded_size(v) for v in placed.status_fields.values()) <= STATUS_BUDGET
    for key, text in texts.items():
        assert join(key, placed.config_maps) == text


def test_outputs_beyond_one_config_map_span_several() -> None:
    # ~3 MiB of text: more than a ConfigMap (1 MiB) or an etcd object (1.5 MiB) holds.
    texts = {"response": "🙂" * 500_000, "analysis": "\x01" * 200_000}
    placed = layout(texts)
    assert len(placed.config_maps) >= 3
    for data in placed.config_maps:
        size = sum(len(key) + encoded_size(value) for key, value in data.items())
        assert size <= CONFIG_MAP_BUDGET
        # What the apiserver receives (lightkube encodes with msgspec) stays under its limits.
        assert len(msgspec.json.encode({"data": data})) < 1_000_000
    assert join("response", placed.config_maps) == texts["response"]
    assert join("analysis", placed.config_maps) == texts["analysis"]
    assert placed.keys == ["analysis", "response"]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.dictionaries(
        st.sampled_from(["response", "analysis", "commentary", "rawOutput"]),
        st.text(min_size=0, max_size=400),
    ),
    status_budget=st.integers(min_value=50, max_value=600),
    map_budget=st.integers(min_value=20, max_value=300),
)
def test_nothing_is_dropped_whatever_the_sizes(
    texts: dict[str, str], status_budget: int, map_budget: int
) -> None:
    placed = layout(texts, status_budget, map_budget)
    if not placed.config_maps:
        assert placed.status_fields == texts
        return
    assert sum(encoded_size(v) for v in placed.status_fields.values()) <= status_budget
    for key, text in texts.items():
        assert join(key, placed.config_maps) == text
    for data in placed.config_maps:
        assert sum(len(k) + encoded_size(v) for k, v in data.items()) <= map_budget


def test_pack_refuses_a_budget_that_holds_nothing() -> None:
    with pytest.raises(ValueError, match="holds no text"):
        pack({"response": "abc"}, budget=5)
