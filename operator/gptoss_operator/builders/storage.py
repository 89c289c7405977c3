"""The PersistentVolumeClaim that holds the weights."""

from __future__ import annotations

from typing import Any

from gptoss_operator.api.model import DeletionPolicy, GptOssModelSpec
from gptoss_operator.builders import ModelContext
from gptoss_operator.core import naming

# Room for the files vLLM loads (repo root) and, without excludePatterns, every copy.
_SIZES = {"gpt-oss-120b": "150Gi", "gpt-oss-20b": "40Gi"}
_UNKNOWN_REPO_SIZE = "200Gi"


def default_size(spec: GptOssModelSpec) -> str:
    """The claim size when spec.storage.size is unset: enough for the repo chosen."""
    base = _SIZES.get(spec.source.repo.split("/", 1)[1].lower(), _UNKNOWN_REPO_SIZE)
    if spec.source.excludePatterns:
        return base
    amount = int(base.removesuffix("Gi"))
    return f"{amount * 2}Gi"


def claim(ctx: ModelContext) -> dict[str, Any]:
    storage = ctx.spec.storage
    spec: dict[str, Any] = {
        "accessModes": list(storage.accessModes),
        "resources": {"requests": {"storage": storage.size or default_size(ctx.spec)}},
    }
    if storage.storageClassName:
        spec["storageClassName"] = storage.storageClassName
    owned = storage.deletionPolicy == DeletionPolicy.DELETE
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": ctx.metadata(
            naming.claim_name(ctx.name, ctx.spec),
            naming.labels(ctx.name, "weights"),
            owned=owned,
            annotations={"gptoss.ai/deletion-policy": storage.deletionPolicy.value},
        ),
        "spec": spec,
    }
