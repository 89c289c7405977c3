"""How ``gptoss-download`` ends: the contract between the downloader and the download
Job the operator builds (its pod failure policy reads the exit code)."""

from __future__ import annotations

# Failures that no retry can fix.
EXIT_UNAUTHORIZED = 10
EXIT_NOT_FOUND = 11
EXIT_INSUFFICIENT_STORAGE = 12
EXIT_BAD_REQUEST = 13
PERMANENT_EXIT_CODES = [
    EXIT_UNAUTHORIZED,
    EXIT_NOT_FOUND,
    EXIT_INSUFFICIENT_STORAGE,
    EXIT_BAD_REQUEST,
]
# Failures after which a retry may help (the Job's backoffLimit bounds them).
EXIT_STALLED = 20
EXIT_UNREACHABLE = 21
