"""The prompt renderer's child process (#23, defect 2): killed (an OOM kill, say), it is
replaced, and the prompt that met the broken pool is rendered by the new one."""

from __future__ import annotations

import multiprocessing
import os
import signal

from gptoss_operator.engine.harmony import ChatMessage, Harmony
from gptoss_operator.engine.render import PromptRenderer
from gptoss_operator.engine.request import ChatRequest


async def test_a_killed_render_process_is_replaced() -> None:
    harmony = Harmony()
    renderer = PromptRenderer(harmony, inline_limit=0)  # every prompt in the child
    messages = [ChatMessage("user", "What is recursion?")]
    medium = ChatRequest(tuple(messages), "medium", max_tokens=10, temperature=1.0)
    high = ChatRequest(tuple(messages), "high", max_tokens=10, temperature=1.0)
    try:
        expected = harmony.render(messages, "medium")
        assert await renderer.render(medium) == expected
        children = multiprocessing.active_children()
        assert children, "the render process"
        for child in children:
            os.kill(child.pid or 0, signal.SIGKILL)
            child.join(10)
        assert await renderer.render(medium) == expected
        assert await renderer.render(high) == harmony.render(messages, "high")
    finally:
        renderer.close()
