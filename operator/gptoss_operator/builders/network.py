"""The NetworkPolicy in front of a model's vLLM pods (when the operator is told to make
one): the engine port admits pods of the model's own namespace and the peers the admin
lists; the gateway port admits every namespace (batch shards of any namespace the model
serves come there, and each request must bring a batch's key); nothing else. The sidecar
reaches the engine over the pod's loopback, and the kubelet's probes come from the node,
which NetworkPolicies always admit."""

from __future__ import annotations

from typing import Any

from gptoss_operator.builders import ModelContext
from gptoss_operator.core import naming


def network_policy(ctx: ModelContext) -> dict[str, Any] | None:
    """The model's NetworkPolicy, or None when the operator makes none."""
    settings = ctx.settings
    if not settings.network_policy:
        return None
    peers: list[dict[str, Any]] = []
    if settings.network_policy_same_namespace:
        peers.append({"podSelector": {}})
    peers += settings.network_policy_from
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": ctx.metadata(
            naming.deployment_name(ctx.name), naming.labels(ctx.name, naming.COMPONENT_SERVER)
        ),
        "spec": {
            "podSelector": {"matchLabels": naming.server_selector(ctx.name)},
            "policyTypes": ["Ingress"],
            # No peers: the engine port admits nothing (the sidecar reaches it over
            # loopback).
            "ingress": [
                *(
                    [{"from": peers, "ports": [{"protocol": "TCP", "port": naming.ENGINE_PORT}]}]
                    if peers
                    else []
                ),
                {
                    "from": [{"namespaceSelector": {}}],
                    "ports": [{"protocol": "TCP", "port": naming.GATEWAY_PORT}],
                },
            ],
        },
    }
