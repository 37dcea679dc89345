"""Agent: a model, a pinned prompt, tools and knowledge, served by the runtime."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from ._base import (
    AGE_COLUMN,
    DNS1035_LABEL,
    DNS1035_WHAT,
    READY_COLUMN,
    REASON_COLUMN,
    ApiModel,
    PrinterColumn,
    Resource,
    Status,
    cel,
    k8s_extra,
)
from .tenant import QUANTITY


class ModelParameters(ApiModel):
    """Sampling parameters sent with every call."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature."""
    top_p: float | None = Field(default=None, ge=0, le=1)
    """Nucleus sampling mass."""
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    """Ceiling on completion tokens per call (and what the quota reserves when the caller sets none)."""
    seed: int | None = None
    """Seed for providers that support reproducible sampling."""


class ModelSpec(ApiModel):
    """Which model answers, and which ones stand in when it fails."""

    name: str = Field(min_length=1, max_length=256)
    """Primary model, as a litellm model name (`azure/gpt-4o`, `openai/gpt-4o-mini`)."""
    fallbacks: list[str] = Field(default_factory=list, max_length=8)
    """Models tried in order when the primary fails with a retryable error or its circuit is open."""
    parameters: ModelParameters = Field(default_factory=ModelParameters)
    """Sampling parameters."""


class PromptRef(ApiModel):
    """The prompt the agent uses, pinned to a version."""

    name: str = Field(min_length=1, max_length=253)
    """Name of a Prompt in the same namespace."""
    version: int = Field(ge=1)
    """Version of the prompt to use; the agent keeps it until this field changes."""
    variables: dict[str, str] = Field(default_factory=dict, max_length=64)
    """Values of the prompt's variables."""


class ToolRef(ApiModel):
    """A tool the agent may call."""

    name: str = Field(min_length=1, max_length=253)
    """Name of a Tool in the same namespace."""


class KnowledgeRef(ApiModel):
    """A knowledge base the agent searches before answering."""

    name: str = Field(min_length=1, max_length=63)
    """Name of one of the tenant's knowledge bases."""
    top_k: int = Field(default=5, ge=1, le=50)
    """Number of chunks retrieved per question."""
    min_score: float = Field(default=0.0, ge=0, le=1)
    """Chunks scoring below this are dropped."""


class AgentLimits(ApiModel):
    """Bounds on one chat request."""

    max_tool_calls: int = Field(default=8, ge=0, le=64)
    """Tool calls allowed per request; 0 disables tools."""
    timeout_seconds: int = Field(default=120, ge=1, le=3600)
    """Wall-clock limit of a whole request, tool calls included."""
    max_input_tokens: int = Field(default=16000, ge=256, le=2_000_000)
    """Budget for the prompt sent to the model; retrieved context is trimmed to fit, never the system prompt."""


class Autoscaling(ApiModel):
    """Horizontal autoscaling of the agent's pods (becomes a HorizontalPodAutoscaler)."""

    model_config = ConfigDict(
        json_schema_extra=k8s_extra(
            validations=[
                cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas")
            ]
        )
    )

    min_replicas: int = Field(default=1, ge=1, le=100)
    """Fewest pods."""
    max_replicas: int = Field(ge=1, le=100)
    """Most pods."""
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)
    """Average CPU use, in percent of requests, the autoscaler aims for."""

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})"
            )
        return self


class ResourceList(ApiModel):
    """CPU and memory amounts."""

    cpu: str | None = Field(default=None, pattern=QUANTITY)
    """CPU, as a Kubernetes quantity (`250m`)."""
    memory: str | None = Field(default=None, pattern=QUANTITY)
    """Memory, as a Kubernetes quantity (`512Mi`)."""


class Resources(ApiModel):
    """Compute resources of each agent pod."""

    requests: ResourceList = Field(default_factory=lambda: ResourceList(cpu="100m", memory="256Mi"))
    """What the scheduler reserves."""
    limits: ResourceList = Field(default_factory=lambda: ResourceList(memory="1Gi"))
    """Ceilings."""


class AgentRuntime(ApiModel):
    """How the agent's pods run."""

    model_config = ConfigDict(
        json_schema_extra=k8s_extra(
            validations=[
                cel(
                    "!(has(self.replicas) && has(self.autoscaling))",
                    "set either replicas or autoscaling, not both",
                )
            ]
        )
    )

    replicas: int | None = Field(default=None, ge=0, le=100)
    """Fixed number of pods (1 when neither this nor autoscaling is set)."""
    autoscaling: Autoscaling | None = None
    """Scale the pods on CPU instead of a fixed count."""
    resources: Resources = Field(default_factory=Resources)
    """CPU and memory of each pod."""

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> AgentRuntime:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("set either replicas or autoscaling, not both")
        return self


class AgentSpec(ApiModel):
    """Desired state of an agent."""

    description: str = Field(default="", max_length=1024)
    """What the agent does, shown in model listings."""
    model: ModelSpec
    """The model that answers and its fallbacks."""
    prompt: PromptRef
    """The system prompt, pinned to a version."""
    tools: list[ToolRef] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["name"]),
    )
    """Tools the model may call."""
    knowledge: list[KnowledgeRef] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["name"]),
    )
    """Knowledge bases searched for context before each answer."""
    limits: AgentLimits = Field(default_factory=AgentLimits)
    """Bounds on each request."""
    runtime: AgentRuntime = Field(default_factory=AgentRuntime)
    """Replicas, autoscaling and resources of the agent's pods."""


class AgentStatus(Status):
    """Observed state of an agent."""

    endpoint: str | None = None
    """In-cluster base URL of the agent's OpenAI-compatible API."""
    url: str | None = None
    """Base URL of the agent's API from outside the cluster, through the platform's gateway (set when
    the platform has one)."""
    config_hash: str | None = None
    """Hash of the resolved configuration the running pods serve."""
    replicas: int | None = None
    """Pods ready with the current configuration."""


class Agent(Resource):
    """An AI agent: a model with fallbacks, a pinned prompt, tools and knowledge, served over an OpenAI API."""

    kind_name: ClassVar[str] = "Agent"
    plural: ClassVar[str] = "agents"
    namespaced: ClassVar[bool] = True
    short_names: ClassVar[tuple[str, ...]] = ("ag",)
    name_rule: ClassVar[tuple[str, int, str]] = (DNS1035_LABEL, 63, DNS1035_WHAT)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Model", type="string", json_path=".spec.model.name"),
        PrinterColumn(name="Prompt", type="string", json_path=".spec.prompt.name"),
        PrinterColumn(name="Version", type="integer", json_path=".spec.prompt.version"),
        READY_COLUMN,
        REASON_COLUMN,
        PrinterColumn(name="URL", type="string", json_path=".status.url"),
        PrinterColumn(name="Endpoint", type="string", json_path=".status.endpoint", priority=1),
        AGE_COLUMN,
    )

    kind: Literal["Agent"] = "Agent"
    spec: AgentSpec
    """Desired state of the agent."""
    status: AgentStatus | None = None
    """Observed state, written by the operator."""
