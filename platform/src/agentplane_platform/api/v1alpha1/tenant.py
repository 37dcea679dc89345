"""Tenant: a team that runs agents, with its namespace, quotas, knowledge bases and egress."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from ._base import (
    AGE_COLUMN,
    DNS1123_LABEL,
    DNS1123_WHAT,
    READY_COLUMN,
    REASON_COLUMN,
    ApiModel,
    PrinterColumn,
    Resource,
    Status,
    cel,
    k8s_extra,
)

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"
"""A Kubernetes resource quantity, in the forms tenants use for CPU and memory."""

HOST_PATTERN = r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
CIDR_PATTERN = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"


class Owner(ApiModel):
    """A person or group that owns the tenant and may edit its agentplane objects."""

    kind: Literal["User", "Group"] = "User"
    """`User` (an Entra ID user principal name or e-mail) or `Group` (an Entra ID group object id or name)."""
    name: str = Field(min_length=1, max_length=256)
    """The user's principal name or the group's name, as the cluster's authenticator reports it."""


class LlmQuota(ApiModel):
    """Limits on LLM use, enforced by every runtime replica of the tenant's agents."""

    tokens_per_minute: int = Field(default=100_000, ge=1)
    """Prompt plus completion tokens per minute across all of the tenant's agents."""
    requests_per_minute: int = Field(default=600, ge=1)
    """Chat requests per minute across all of the tenant's agents."""
    monthly_budget_usd: float = Field(default=100.0, ge=0)
    """Spend ceiling per calendar month (UTC) in US dollars, from the provider's price list; 0 blocks paid models."""


class ModelPrice(ApiModel):
    """What a model costs, in US dollars per million tokens: for a model litellm's price list does not
    know (a fine-tune, a self-hosted model), or to replace its price. A call to a model with no price
    is refused, so that a budget always stops spending."""

    input_per_million_tokens: float = Field(ge=0)
    """USD per million prompt (input) tokens; for an embedding model, per million embedded tokens."""
    output_per_million_tokens: float = Field(ge=0)
    """USD per million completion (output) tokens; 0 for an embedding model."""


class ComputeQuota(ApiModel):
    """Kubernetes resources the tenant's namespace may use (becomes a ResourceQuota)."""

    cpu: str = Field(default="8", pattern=QUANTITY)
    """Total CPU requests, as a Kubernetes quantity (`4`, `500m`)."""
    memory: str = Field(default="16Gi", pattern=QUANTITY)
    """Total memory requests, as a Kubernetes quantity (`8Gi`)."""
    pods: int = Field(default=50, ge=1)
    """Maximum number of pods."""


class TenantQuotas(ApiModel):
    """Everything the tenant may consume."""

    llm: LlmQuota = Field(default_factory=LlmQuota)
    """Token, request and budget limits on LLM calls."""
    max_agents: int = Field(default=10, ge=0)
    """Maximum number of Agents in the tenant's namespace."""
    compute: ComputeQuota = Field(default_factory=ComputeQuota)
    """CPU, memory and pod limits of the namespace."""


class KnowledgeBase(ApiModel):
    """A searchable collection of the tenant's documents (one Qdrant collection)."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)
    """Name agents use to refer to the knowledge base."""
    description: str = Field(default="", max_length=1024)
    """What the knowledge base holds."""
    embedding_model: str = Field(min_length=1, max_length=256)
    """Dense embedding model, as a litellm model name (`azure/text-embedding-3-small`) or `local/all-MiniLM-L6-v2`."""
    dimensions: int = Field(ge=1, le=65536)
    """Size of the dense vectors the embedding model produces."""
    distance: Literal["Cosine", "Dot", "Euclid", "Manhattan"] = "Cosine"
    """Similarity measure of the dense vectors."""


class EgressRule(ApiModel):
    """A destination the tenant's agents may reach, besides DNS and the platform's services."""

    model_config = ConfigDict(
        json_schema_extra=k8s_extra(
            validations=[cel("has(self.host) != has(self.cidr)", "exactly one of host or cidr must be set")]
        )
    )

    host: str | None = Field(default=None, max_length=253, pattern=HOST_PATTERN)
    """A DNS name (`api.example.com`) or a wildcard for its subdomains (`*.example.com`)."""
    cidr: str | None = Field(default=None, max_length=64, pattern=CIDR_PATTERN)
    """An IP range in CIDR notation (`203.0.113.0/24`)."""
    ports: list[int] = Field(default_factory=lambda: [443], min_length=1, max_length=16)
    """TCP ports allowed to that destination."""

    @model_validator(mode="after")
    def _host_or_cidr(self) -> EgressRule:
        if (self.host is None) == (self.cidr is None):
            raise ValueError("exactly one of host or cidr must be set")
        return self


class TenantSpec(ApiModel):
    """Desired state of a tenant."""

    display_name: str = Field(default="", max_length=256)
    """Human-friendly name of the team."""
    owners: list[Owner] = Field(
        min_length=1,
        max_length=64,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["kind", "name"]),
    )
    """People and groups who own the tenant; they get edit rights on its agentplane objects."""
    tier: Literal["free", "standard", "premium"] = "standard"
    """Service tier; sets scheduling priority and which platform defaults apply."""
    allowed_models: list[str] = Field(
        min_length=1, max_length=128, json_schema_extra=k8s_extra(list_type="set")
    )
    """Models the tenant's agents may use (litellm names; `*` wildcards allowed: `azure/gpt-4o*`)."""
    allowed_tools: list[str] = Field(
        default_factory=lambda: ["*"], max_length=128, json_schema_extra=k8s_extra(list_type="set")
    )
    """Tool names the tenant's agents may use (`*` wildcards allowed)."""
    quotas: TenantQuotas = Field(default_factory=TenantQuotas)
    """LLM, agent and compute limits."""
    model_prices: dict[str, ModelPrice] = Field(default_factory=dict, max_length=128)
    """Prices of models by litellm name (`openai/my-fine-tune`, an embedding model too); they take
    precedence over the platform's and litellm's. Every model an agent calls needs a price from one
    of the three: a call to a model without one is refused before it is sent."""
    knowledge_bases: list[KnowledgeBase] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["name"]),
    )
    """Knowledge bases of the tenant, each a vector collection its agents can search."""
    egress: list[EgressRule] = Field(default_factory=list, max_length=64)
    """Destinations outside the cluster the tenant's agents and tools may reach; everything else is denied."""
    deletion_policy: Literal["Retain", "Delete"] = "Retain"
    """On deletion of the tenant: `Retain` keeps its vector collections and usage records, `Delete` removes them."""


class KnowledgeBaseStatus(ApiModel):
    """Observed state of one knowledge base."""

    model_config = ConfigDict(extra="ignore")

    name: str
    collection: str = ""
    """Name of the Qdrant collection that holds it."""
    ready: bool = False
    message: str = ""


class EgressStatus(ApiModel):
    """How one declared egress rule is enforced."""

    model_config = ConfigDict(extra="ignore")

    destination: str
    """The rule's host or CIDR."""
    ports: list[int] = Field(default_factory=list, max_length=16)
    enforced_by: Literal["network", "runtime"]
    """`network`: a NetworkPolicy ipBlock admits only this range. `runtime`: NetworkPolicy cannot
    name hosts, so the rule's ports are open to every destination at the network level and the
    runtime's egress allowlist (tools' URLs checked against the declared hosts) is the gate."""


class KnowledgeSyncStatus(ApiModel):
    """The last sync of the tenant's Git-kept knowledge (`knowledge/` beside its specs)."""

    model_config = ConfigDict(extra="ignore")

    revision: str
    """The GitOps revision (Flux artifact) that was synced."""
    state: Literal["Running", "Succeeded", "Failed"]
    ingested: int = 0
    """Documents (re-)embedded because they are new or changed."""
    unchanged: int = 0
    removed: int = 0
    """Documents deleted because they are gone from Git."""
    failed: list[str] = Field(default_factory=list, max_length=64)
    """Files that could not be read, with the reason."""
    message: str = ""
    job: str = ""
    """The Job that ran it (in the platform namespace)."""


class BudgetWarningsStatus(ApiModel):
    """The budget warnings the tenant got this month: each at most once per UTC calendar month."""

    model_config = ConfigDict(extra="ignore")

    month: str = Field(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$")
    """The UTC calendar month (`YYYY-MM`) the warnings are for; a new month starts with none."""
    notified: list[int] = Field(default_factory=list, max_length=8)
    """The shares of the monthly budget, in percent (80, 100), the tenant's spend reached this month
    and was warned of (an Event on the Tenant, a metric, an audit record)."""


class TenantStatus(Status):
    """Observed state of a tenant."""

    namespace: str | None = None
    """The namespace the tenant's objects live in."""
    agents: int | None = None
    """Number of Agents in the tenant's namespace."""
    knowledge_bases: list[KnowledgeBaseStatus] = Field(default_factory=list, max_length=64)
    """State of each knowledge base's collection."""
    egress: list[EgressStatus] = Field(default_factory=list, max_length=64)
    """How each declared egress rule is enforced (by the network, or only by the runtime)."""
    knowledge_sync: KnowledgeSyncStatus | None = None
    """The last sync of its Git-kept knowledge into its knowledge bases."""
    budget: BudgetWarningsStatus | None = None
    """The budget warnings of the current month, as the operator sent them."""


class Tenant(Resource):
    """A team that runs agents on the platform: owners, quotas, allowed models and tools, knowledge bases."""

    kind_name: ClassVar[str] = "Tenant"
    plural: ClassVar[str] = "tenants"
    namespaced: ClassVar[bool] = False
    short_names: ClassVar[tuple[str, ...]] = ("tn",)
    name_rule: ClassVar[tuple[str, int, str]] = (DNS1123_LABEL, 56, DNS1123_WHAT)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Tier", type="string", json_path=".spec.tier"),
        PrinterColumn(name="Namespace", type="string", json_path=".status.namespace"),
        PrinterColumn(name="Agents", type="integer", json_path=".status.agents"),
        READY_COLUMN,
        REASON_COLUMN,
        AGE_COLUMN,
    )

    kind: Literal["Tenant"] = "Tenant"
    spec: TenantSpec
    """Desired state of the tenant."""
    status: TenantStatus | None = None
    """Observed state, written by the operator."""

    def allows_model(self, model: str) -> bool:
        """Whether `model` matches one of the tenant's allowedModels patterns."""
        return any(fnmatchcase(model, pattern) for pattern in self.spec.allowed_models)

    def allows_tool(self, tool: str) -> bool:
        """Whether `tool` matches one of the tenant's allowedTools patterns."""
        return any(fnmatchcase(tool, pattern) for pattern in self.spec.allowed_tools)

    @property
    def namespace(self) -> str:
        """The namespace that holds the tenant's Agents, Tools and Prompts."""
        return namespace_of(self.metadata.name)


TENANT_LABEL = "agentplane.io/tenant"
TIER_LABEL = "agentplane.io/tier"
MANAGED_BY = {"app.kubernetes.io/managed-by": "agentplane-operator"}


def tenant_namespace_labels(tenant: Tenant) -> dict[str, str]:
    """The labels of a tenant's namespace: the operator writes them, and the admission policies'
    bindings select the namespace's tier by them (`agentplane validate` matches bindings the same way)."""
    return {**MANAGED_BY, TENANT_LABEL: tenant.metadata.name, TIER_LABEL: tenant.spec.tier}


def namespace_of(tenant: str) -> str:
    """The namespace of a tenant's objects."""
    return f"tenant-{tenant}"


def tenant_of(namespace: str) -> str | None:
    """The tenant that owns a namespace, or None when it is not a tenant namespace."""
    return namespace.removeprefix("tenant-") if namespace.startswith("tenant-") else None
