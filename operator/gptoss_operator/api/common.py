"""Pieces shared by both kinds: API coordinates, conditions, the base model."""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "gptoss.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "gptoss"


class ApiModel(BaseModel):
    """Base for every API type: camelCase on the wire.

    Unknown fields are ignored, not refused: these models read live objects, and after a
    CRD upgrade adds a (defaulted) field the components still running the previous
    version must go on working. Writers are held to the schema by the apiserver, whose
    structural schema prunes or refuses what the CRD does not declare.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True, validate_assignment=False)

    def to_wire(self) -> dict[str, Any]:
        """The object as the apiserver stores it (unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_patch(self) -> dict[str, Any]:
        """A JSON merge patch of the fields given: None removes a stored field, fields
        never given are left as they are."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition shaped like ``metav1.Condition``."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        min_length=1,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="A CamelCase word that says why the condition has its status.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    lastTransitionTime: datetime.datetime = Field(
        description="When the condition last changed status."
    )
    observedGeneration: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was set for."
    )


def conditions_field(description: str) -> Any:
    """A ``conditions`` list stored as a list map keyed by ``type``."""
    return Field(
        default_factory=list,
        description=description,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class LocalObjectReference(ApiModel):
    name: str = Field(min_length=1, max_length=253, description="Name of the object.")


# A namespace's name: a DNS-1123 label.
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ModelReference(ApiModel):
    name: str = Field(min_length=1, max_length=253, description="Name of the GptOssModel.")
    namespace: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=NAMESPACE_PATTERN,
        description="Its namespace; absent: this object's own. A model in another namespace "
        "serves whoever RBAC lets `use` it (the verb use on gptossmodels, there) from the "
        "namespaces its spec.access allows.",
    )


class SecretKeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, description="Name of the Secret.")
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        description="Key in the Secret that holds the value.",
    )
