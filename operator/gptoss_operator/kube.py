"""Thin helpers over lightkube's async client: apply, get-or-none, create-if-absent."""

from __future__ import annotations

from typing import Any

from lightkube import ApiError, AsyncClient, codecs
from lightkube.types import PatchType

FIELD_MANAGER = "gptoss-operator"


def new_client() -> AsyncClient:
    """A client for the current kubeconfig, or the pod's service account in a cluster."""
    return AsyncClient(field_manager=FIELD_MANAGER)


def is_status(error: Exception, code: int) -> bool:
    return isinstance(error, ApiError) and error.status.code == code


async def get_or_none(client: AsyncClient, resource: Any, name: str, namespace: str) -> Any:
    try:
        return await client.get(resource, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


async def apply(client: AsyncClient, manifest: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply, taking ownership of every field the manifest sets."""
    obj = codecs.from_dict(manifest)
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
) -> None:
    """Merge-patch the status subresource."""
    await client.patch(
        resource.Status,
        name,
        {"status": status},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


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
