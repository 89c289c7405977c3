"""Thin helpers over lightkube's async client: apply, get-or-none, create-if-absent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig, codecs
from lightkube.config.client_adapter import verify_cluster
from lightkube.types import PatchType

from gptoss_operator.core import naming

FIELD_MANAGER = "gptoss-operator"


# Connections to the apiserver a client keeps open (see new_client).
APISERVER_CONNECTIONS = 128


def new_client(
    field_manager: str = FIELD_MANAGER, *, connections: int = APISERVER_CONNECTIONS
) -> AsyncClient:
    """A client for the current kubeconfig, or the pod's service account in a cluster,
    that keeps up to ``connections`` connections open between requests. lightkube's own
    pool keeps 20: a worker with more requests in flight closed the others after each
    answer and opened new ones, a TLS handshake each on both ends."""
    config = KubeConfig.from_env().get()
    if config is None or config.user is None:
        raise RuntimeError("the kubeconfig names no current context with a user")
    limits = httpx2.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=60
    )
    transport = httpx2.AsyncHTTPTransport(
        verify=verify_cluster(config.cluster, config.user, config.abs_file), limits=limits
    )
    return AsyncClient(config, field_manager=field_manager, transport=transport)


def is_status(error: Exception, code: int) -> bool:
    return isinstance(error, ApiError) and error.status.code == code


async def get_or_none(client: AsyncClient, resource: Any, name: str, namespace: str) -> Any:
    try:
        return await client.get(resource, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


class NotOurs(Exception):
    """An object has the name of a child the operator would make, and it did not make it:
    someone else's, which the operator never takes over."""

    def __init__(self, manifest: dict[str, Any], existing: dict[str, Any]) -> None:
        metadata = manifest["metadata"]
        owners = [
            f"{owner.get('kind')} {owner.get('name')}"
            for owner in existing.get("metadata", {}).get("ownerReferences") or []
        ]
        held = f"owned by {', '.join(owners)}" if owners else "made by someone else"
        super().__init__(
            f"{manifest['kind']} {metadata['namespace']}/{metadata['name']} exists and is not "
            f"this model's ({held}); the operator does not take it over: rename the model, "
            "or remove that object"
        )


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Is ``obj``'s controller the object with ``uid``?"""
    return any(
        ref.get("controller") and ref.get("uid") == uid
        for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )


def is_ours(manifest: Mapping[str, Any], existing: Mapping[str, Any]) -> bool:
    """Whether ``existing`` is the object ``manifest`` describes, made by the operator for
    the same owner: its controller is the manifest's; for a manifest without an owner (a
    claim kept after its model, a tenant's binding), the manifest's model, model namespace
    and managed-by labels."""
    owners = manifest["metadata"].get("ownerReferences") or []
    controller = next((r["uid"] for r in owners if r.get("controller")), None)
    if controller is not None:
        return controlled_by(existing, controller)
    labels = (existing.get("metadata") or {}).get("labels") or {}
    wanted_labels = manifest["metadata"].get("labels") or {}
    keys = [naming.MODEL_LABEL, naming.MANAGED_BY_LABEL]
    if naming.MODEL_NAMESPACE_LABEL in wanted_labels:  # a model's, in another namespace
        keys.append(naming.MODEL_NAMESPACE_LABEL)
    return all(k in wanted_labels and labels.get(k) == wanted_labels[k] for k in keys)


async def apply(client: AsyncClient, manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply, taking ownership of every field the manifest sets, of an object
    that is absent or already ours (raises NotOurs otherwise)."""
    obj = codecs.from_dict(manifest)
    metadata = manifest["metadata"]
    existing = await get_or_none(client, type(obj), metadata["name"], metadata["namespace"])
    if existing is not None and not is_ours(manifest, to_dict(existing)):
        raise NotOurs(manifest, to_dict(existing))
    applied = await client.apply(obj, field_manager=FIELD_MANAGER, force=True)
    return to_dict(applied)


async def create_or_read(
    client: AsyncClient, resource: Any, manifest: dict[str, Any]
) -> dict[str, Any]:
    """Create the object; when one of that name exists already, return it instead (for
    callers whose read or view said it was missing: another writer, or this process
    moments ago, may have made it since)."""
    try:
        created = await client.create(codecs.from_dict(manifest))
    except ApiError as error:
        if error.status.code != 409:
            raise
        metadata = manifest["metadata"]
        created = await client.get(resource, metadata["name"], namespace=metadata["namespace"])
    return to_dict(created)


async def create_or_read_ours(
    client: AsyncClient, resource: Any, manifest: dict[str, Any]
) -> dict[str, Any]:
    """:func:`create_or_read`, for a child that must be ours (raises NotOurs otherwise)."""
    found = await create_or_read(client, resource, manifest)
    if not is_ours(manifest, found):
        raise NotOurs(manifest, found)
    return found


async def create_unread(client: AsyncClient, manifest: dict[str, Any]) -> bool:
    """Create the object unless one of that name exists, without reading it (for Secrets,
    which the operator may create but not read); True when this call created it."""
    try:
        await client.create(codecs.from_dict(manifest))
    except ApiError as error:
        if error.status.code != 409:
            raise
        return False
    return True


async def patch_status(
    client: AsyncClient, resource: Any, name: str, namespace: str, status: dict[str, Any]
) -> str:
    """Merge-patch the status subresource; the object's resourceVersion after the write."""
    written = await client.patch(
        resource.Status,
        name,
        {"status": status},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    return str(to_dict(written).get("metadata", {}).get("resourceVersion") or "")


def newer_or_same(seen: str, written: str) -> bool | None:
    """Whether resourceVersion ``seen`` is the write ``written`` or a later one of the same
    object (Kubernetes guarantees resourceVersions of one resource compare as positive
    integers since 1.35); None when either is not such an integer."""
    if not (_is_resource_version(seen) and _is_resource_version(written)):
        return None
    return int(seen) >= int(written)


def _is_resource_version(value: str) -> bool:
    return value.isascii() and value.isdigit() and not value.startswith("0")


def to_dict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return obj
    result: dict[str, Any] = obj.to_dict()
    return result


async def delete_if_present(client: AsyncClient, resource: Any, name: str, namespace: str) -> None:
    try:
        await client.delete(resource, name, namespace=namespace)
    except ApiError as error:
        if error.status.code != 404:
            raise
