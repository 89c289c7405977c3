"""Chat completion requests as clients send them, for the rendering tests: system and
developer messages, multi-turn, tools, tool calls and their results, every reasoning
level, unicode."""

from __future__ import annotations

from typing import Any

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                "days": {"type": "array", "items": {"type": "integer"}},
            },
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time."}}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
}
CALLED = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 20}'}
ASK = {"role": "user", "content": "What is the weather in Paris?"}

CORPUS: dict[str, dict[str, Any]] = {
    "user only": {"messages": [{"role": "user", "content": "What is 2 + 2?"}]},
    "low effort": {"reasoning_effort": "low", "messages": [{"role": "user", "content": "Hi"}]},
    "medium effort": {"reasoning_effort": "medium", "messages": [ASK]},
    "high effort": {"reasoning_effort": "high", "messages": [{"role": "user", "content": "Why?"}]},
    "system": {"messages": [{"role": "system", "content": "Be terse."}, ASK]},
    "developer": {"messages": [{"role": "developer", "content": "Answer in French."}, ASK]},
    "system then developer": {
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": "Answer in French."},
            ASK,
        ]
    },
    "system mid-conversation": {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "From now on, be terse."},
            {"role": "user", "content": "Again"},
        ]
    },
    "multi-turn": {
        "messages": [
            {"role": "user", "content": "I have 10 apples."},
            {"role": "assistant", "content": "Got it: 10 apples."},
            {"role": "user", "content": "I eat 3. How many are left?"},
        ]
    },
    "multi-turn, earlier reasoning dropped": {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!", "reasoning": "A greeting."},
            {"role": "user", "content": "How are you?"},
        ]
    },
    "unicode": {
        "messages": [{"role": "user", "content": "Übersetze: 猫は可愛い 🐱 — ¿qué? \u00a0"}]
    },
    "tools": {"tools": [WEATHER, TIME], "messages": [ASK]},
    "tools and system": {
        "tools": [WEATHER],
        "messages": [{"role": "system", "content": "Use the tools."}, ASK],
        "reasoning_effort": "high",
    },
    "tool without parameters": {"tools": [TIME], "messages": [ASK]},
    "tool call then result": {"tools": [WEATHER], "messages": [ASK, CALLED, RESULT]},
    "analysis before the call kept": {
        "tools": [WEATHER],
        "messages": [ASK, {**CALLED, "reasoning": "I need the weather."}, RESULT],
    },
    "preamble before the call": {
        "tools": [WEATHER],
        "messages": [ASK, {**CALLED, "content": "Let me check."}, RESULT],
    },
    "analysis and preamble before the call": {
        "tools": [WEATHER],
        "messages": [
            ASK,
            {**CALLED, "content": "Let me check.", "reasoning": "I need the weather."},
            RESULT,
        ],
    },
    "two calls, two results": {
        "tools": [WEATHER, TIME],
        "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    CALL,
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    },
                ],
            },
            RESULT,
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        ],
    },
    "tool loop, then a new turn": {
        "tools": [WEATHER],
        "messages": [
            ASK,
            {**CALLED, "reasoning": "I need the weather."},
            RESULT,
            {"role": "assistant", "content": "20 degrees.", "reasoning": "Say it."},
            {"role": "user", "content": "And tomorrow?"},
        ],
    },
    "unicode tool result": {
        "tools": [WEATHER],
        "messages": [ASK, CALLED, {**RESULT, "content": "☀️ 20 °C, «ensoleillé»"}],
    },
}
