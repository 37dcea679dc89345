"""What every kind of `agentplane.io/v1alpha1` shares: model config, metadata, conditions, status."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "agentplane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS1123_WHAT = (
    "a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit)"
)
DNS1035_WHAT = "a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, ending with a letter or digit)"


def cel(rule: str, message: str, *, reason: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry: a CEL rule the API server checks at admission."""
    entry = {"rule": rule, "message": message}
    if reason is not None:
        entry["reason"] = reason
    return entry


def k8s_extra(**extra: Any) -> dict[str, Any]:
    """`json_schema_extra` holding Kubernetes schema extensions (`x-kubernetes-*`)."""
    return {f"x-kubernetes-{key.replace('_', '-')}": value for key, value in extra.items()}


class ApiModel(BaseModel):
    """Base of every spec model: camelCase on the wire, unknown fields refused, docstrings kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )


class OwnerReference(ApiModel):
    """A Kubernetes owner reference, as the API server returns it."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


class ObjectMeta(ApiModel):
    """Standard Kubernetes object metadata (the fields a spec file or the API server may carry)."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the object, unique per kind within its namespace."""
    namespace: str | None = None
    """Namespace of a namespaced object: `tenant-<tenant name>`."""
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    finalizers: list[str] | None = None
    owner_references: list[OwnerReference] | None = None
    managed_fields: list[dict[str, Any]] | None = None


class Condition(ApiModel):
    """A kstatus-style condition: what is true of the object, why, and since when."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=316)
    """Condition type, e.g. `Ready`."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(default="", max_length=1024)
    """CamelCase machine-readable reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """Human-readable explanation of the last transition."""
    last_transition_time: datetime | None = None
    """When the status last changed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The `.metadata.generation` the condition was computed from."""


class Status(ApiModel):
    """Fields every kind's status carries."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = Field(default=None, ge=0)
    """The `.metadata.generation` the operator last reconciled."""
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["type"]),
    )
    """Current conditions; `Ready` summarises the others."""


class PrinterColumn(BaseModel):
    """An `additionalPrinterColumns` entry for `kubectl get`."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0


READY_COLUMN = PrinterColumn(
    name="Ready",
    type="string",
    json_path='.status.conditions[?(@.type=="Ready")].status',
    description="Whether the object is reconciled and serving",
)
REASON_COLUMN = PrinterColumn(
    name="Reason",
    type="string",
    json_path='.status.conditions[?(@.type=="Ready")].reason',
    description="Why the object is (not) ready",
    priority=1,
)
AGE_COLUMN = PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")


class Resource(ApiModel):
    """A custom resource of group `agentplane.io`: apiVersion, kind, metadata, spec and status."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    namespaced: ClassVar[bool]
    short_names: ClassVar[tuple[str, ...]] = ()
    tenant_object: ClassVar[bool] = True
    """Whether tenants keep it in their spec trees: such kinds form `kubectl get agentplane`."""
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = ()
    name_rule: ClassVar[tuple[str, int, str]] = (DNS1123_LABEL, 63, DNS1123_WHAT)
    """Pattern, maximum length and description of valid object names."""

    api_version: Literal["agentplane.io/v1alpha1"] = "agentplane.io/v1alpha1"
    """Always `agentplane.io/v1alpha1`."""
    kind: str
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name
