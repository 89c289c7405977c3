"""The API key vLLM requires on /v1: a Secret the model names, or one the operator
creates for it with a random key. Pods get it from the Secret by reference (the kubelet
injects it), so the key never appears in a manifest, status or log."""

from __future__ import annotations

import base64
from typing import Any

from gptoss_operator.api.common import SecretKeyRef
from gptoss_operator.builders import ModelContext
from gptoss_operator.core import naming


def reference(ctx: ModelContext) -> SecretKeyRef:
    """The Secret and key holding the key (also what status shows)."""
    given = ctx.spec.serving.apiKeySecretRef
    if given is not None:
        return SecretKeyRef(name=given.name, key=given.key)
    return SecretKeyRef(name=naming.api_key_secret_name(ctx.name), key=naming.API_KEY_SECRET_KEY)


def generated_secret(ctx: ModelContext, key: str) -> dict[str, Any] | None:
    """The Secret to create with ``key`` when the model names none; None when it does."""
    if ctx.spec.serving.apiKeySecretRef is not None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": ctx.metadata(naming.api_key_secret_name(ctx.name), naming.labels(ctx.name)),
        "data": {naming.API_KEY_SECRET_KEY: base64.b64encode(key.encode()).decode()},
    }


def env(name: str, ctx: ModelContext) -> dict[str, Any]:
    """An environment variable holding the key, by reference."""
    return {"name": name, "valueFrom": {"secretKeyRef": reference(ctx).to_wire()}}
