"""Entry point of `gptoss-download`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("gptoss: this command is not implemented yet", file=sys.stderr)
    return 2
