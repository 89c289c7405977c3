"""How a sidecar names the jobs it serves: it serves its model's namespace and those of
the model's tenants, so a job is namespace/name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def job_key(job: Mapping[str, Any]) -> str:
    metadata = job["metadata"]
    return f"{metadata['namespace']}/{metadata['name']}"


def split_key(key: str) -> tuple[str, str]:
    """(namespace, name) of a ``job_key``."""
    namespace, _, name = key.partition("/")
    return namespace, name
