"""What both demos share: where the repository's examples are, how they speak, and how
they wait."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"

BOLD, DIM, RESET = "\033[1m", "\033[2m", "\033[0m"


def say(text: str) -> None:
    color = sys.stdout.isatty()
    print(f"{BOLD if color else ''}==> {text}{RESET if color else ''}", flush=True)


def note(text: str) -> None:
    color = sys.stdout.isatty()
    print(f"{DIM if color else ''}    {text}{RESET if color else ''}", flush=True)


def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise TimeoutError(f"timed out waiting for {what}")
