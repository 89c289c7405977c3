"""Harmony render + parse cost per token (goal: under 5 µs per token)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from gptoss_operator.engine.harmony import RETURN_TOKEN, ChatMessage, Harmony  # noqa: E402


def measure() -> dict[str, float]:
    harmony = Harmony()
    words = " ".join(f"step{i} of the reasoning" for i in range(3000))
    output = harmony.encoding.encode(
        f"<|channel|>analysis<|message|>{words}<|end|><|start|>assistant<|channel|>final"
        f"<|message|>{words}",
        allowed_special="all",
    )
    conversation = [ChatMessage("system", "Be precise.")]
    for turn in range(40):
        conversation += [ChatMessage("user", f"question {turn}: " + words[:2000]),
                         ChatMessage("assistant", f"answer {turn}: " + words[:2000])]
    conversation.append(ChatMessage("user", "and finally?"))

    rounds = 5
    started = time.perf_counter()
    for _ in range(rounds):
        prompt = harmony.render(conversation, "medium")
    render_seconds = (time.perf_counter() - started) / rounds

    started = time.perf_counter()
    for _ in range(rounds):
        parser = harmony.parser()
        for token in output:  # one token per call, as the stream delivers them at worst
            parser.feed([token])
        parsed = parser.finish(RETURN_TOKEN)
    parse_seconds = (time.perf_counter() - started) / rounds
    assert parsed.response and parsed.analysis

    render_us = render_seconds / len(prompt) * 1e6
    parse_us = parse_seconds / len(output) * 1e6
    return {"render_us_per_token": render_us, "parse_us_per_token": parse_us,
            "harmony_us_per_token": render_us + parse_us}


if __name__ == "__main__":
    print(measure())
