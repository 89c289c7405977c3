"""Pure functions that turn a GptOssModel into the Kubernetes objects it owns.

Every builder takes a :class:`ModelContext` and returns a plain manifest (a dict), so
the objects are easy to read, test and apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gptoss_operator.api.common import API_VERSION
from gptoss_operator.api.model import KIND, GptOssModelSpec
from gptoss_operator.core.settings import Settings


@dataclass(frozen=True)
class ModelContext:
    name: str
    namespace: str
    uid: str
    spec: GptOssModelSpec
    settings: Settings

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(
        self, name: str, labels: dict[str, str], *, owned: bool = True, **extra: Any
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": labels}
        if owned:
            metadata["ownerReferences"] = [self.owner_reference()]
        metadata.update(extra)
        return metadata


RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}

RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}

# A worker that talks to the apiserver mounts this projected token where clients look for
# one; pods mount none by default (the vLLM container never gets one).
TOKEN_VOLUME = "kube-api-access"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_EXPIRATION_SECONDS = 3607  # the kubelet refreshes it at 80% of its life


def token_volume() -> dict[str, Any]:
    return {
        "name": TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {
                    "serviceAccountToken": {
                        "path": "token",
                        "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                    }
                },
                {
                    "configMap": {
                        "name": "kube-root-ca.crt",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
                {
                    "downwardAPI": {
                        "items": [
                            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                        ]
                    }
                },
            ],
        },
    }
