"""Fixtures of the real-engine tier: vLLM's CPU build (the pinned release) in its own venv."""

from __future__ import annotations

import pytest

from gptoss_sandbox.engine_venv import EngineVenv, ensure_engine


@pytest.fixture(scope="session")
def engine_venv() -> EngineVenv:
    """The vLLM CPU venv, installed on first use and cached by version."""
    return ensure_engine(progress=print)
