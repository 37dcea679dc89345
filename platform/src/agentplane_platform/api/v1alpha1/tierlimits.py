"""TierLimits: what the platform allows a service tier, the parameters of the admission policies."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from ._base import AGE_COLUMN, ApiModel, PrinterColumn, Resource
from .tenant import QUANTITY

MODEL_PATTERN = r"^[^*]+\*?$|^\*$"
"""An approved-model entry: an exact litellm name, or a prefix followed by one `*` at the end."""

ModelPattern = Annotated[str, Field(min_length=1, max_length=256, pattern=MODEL_PATTERN)]


class AgentCaps(ApiModel):
    """The most one Agent of the tier may ask for."""

    max_replicas: int = Field(ge=0, le=100)
    """Ceiling on `spec.runtime.replicas` and `spec.runtime.autoscaling.maxReplicas`."""
    max_cpu: str = Field(pattern=QUANTITY)
    """Ceiling on each pod's CPU requests and limits, as a Kubernetes quantity."""
    max_memory: str = Field(pattern=QUANTITY)
    """Ceiling on each pod's memory requests and limits, as a Kubernetes quantity."""
    max_tool_calls: int = Field(ge=0, le=64)
    """Ceiling on `spec.limits.maxToolCalls`."""
    max_timeout_seconds: int = Field(ge=1, le=3600)
    """Ceiling on `spec.limits.timeoutSeconds`."""


class ToolCaps(ApiModel):
    """The most one Tool of the tier may ask for."""

    max_timeout_seconds: int = Field(ge=1, le=600)
    """Ceiling on `spec.timeoutSeconds` of HTTP and MCP tools."""


class TenantCaps(ApiModel):
    """The most a Tenant of the tier may set in `spec.quotas`."""

    max_tokens_per_minute: int = Field(ge=1)
    """Ceiling on `quotas.llm.tokensPerMinute`."""
    max_requests_per_minute: int = Field(ge=1)
    """Ceiling on `quotas.llm.requestsPerMinute`."""
    max_monthly_budget_usd: int = Field(ge=0)
    """Ceiling on `quotas.llm.monthlyBudgetUsd`, in whole US dollars."""
    max_agents: int = Field(ge=0)
    """Ceiling on `quotas.maxAgents`."""
    max_cpu: str = Field(pattern=QUANTITY)
    """Ceiling on `quotas.compute.cpu`, as a Kubernetes quantity."""
    max_memory: str = Field(pattern=QUANTITY)
    """Ceiling on `quotas.compute.memory`, as a Kubernetes quantity."""
    max_pods: int = Field(ge=1)
    """Ceiling on `quotas.compute.pods`."""


class TierLimitsSpec(ApiModel):
    """The models and the ceilings of one tier in one environment."""

    approved_models: list[ModelPattern] = Field(min_length=1, max_length=128)
    """Chat models Agents of the tier may name as model or fallback: exact litellm names, or a prefix
    ending in `*` (`azure/gpt-4o*`)."""
    approved_embedding_models: list[ModelPattern] = Field(min_length=1, max_length=128)
    """Embedding models the tier's knowledge bases may use, in the same form."""
    agent: AgentCaps
    """Ceilings of each Agent."""
    tool: ToolCaps
    """Ceilings of each Tool."""
    tenant: TenantCaps
    """Ceilings of the Tenant's quotas."""


class TierLimits(Resource):
    """What the platform allows a service tier (the object's name: `free`, `standard`, `premium`):
    approved models and ceilings on agents, tools and quotas. It parameterises the admission
    policies of `policies/`; platform engineers keep one per tier and environment in
    `policies/params/<environment>/`, and tenants cannot change it."""

    kind_name: ClassVar[str] = "TierLimits"
    plural: ClassVar[str] = "tierlimits"
    namespaced: ClassVar[bool] = False
    short_names: ClassVar[tuple[str, ...]] = ("tlim",)
    tenant_object: ClassVar[bool] = False
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (AGE_COLUMN,)

    kind: Literal["TierLimits"] = "TierLimits"
    spec: TierLimitsSpec
    """The tier's approved models and ceilings."""
