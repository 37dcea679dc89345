"""Operator settings: environment variables `AGENTPLANE_OPERATOR_*`, read once at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentplane_operator.builders import BuildSettings, EgressTarget, Gateway, KeyVault
from agentplane_operator.shards import Shard
from agentplane_platform.contract import LLM_SECRET, RuntimeStores

API_CONCURRENCY = 32
"""The operator's own requests in flight at once by default, one connection each. With 8, a Prompt
change reaching a thousand dependents waited on round trips, the API server not busy (45 to 50 s);
with 32, 23.2 s, beside 22.0 s for kubectl applying what it changes 32 at once
(`loadtests/bench_operator.py`)."""


class OperatorSettings(BaseSettings):
    """How the operator runs and what it connects to."""

    model_config = SettingsConfigDict(env_prefix="AGENTPLANE_OPERATOR_", extra="ignore", frozen=True)

    runtime_image: str = "ghcr.io/agentplane/runtime:latest"
    """Image of the agent runtime every Agent's Deployment runs."""
    image_pull_policy: str = "IfNotPresent"
    platform_namespace: str = "agentplane-system"
    """Namespace of the platform services that tenant pods may reach."""

    redis_url: SecretStr
    """Redis where the runtime enforces quotas; the operator writes each tenant's limits there."""
    database_url: SecretStr
    """PostgreSQL (or SQLite) with the durable copy of the quota records."""
    qdrant_url: str | None = None
    """Qdrant server for knowledge-base collections."""
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path | None = None
    """Qdrant local mode (embedded, single process) instead of a server: for tests and experiments."""

    # What agent pods get, in the runtime Secret the operator keeps in every tenant namespace.
    runtime_database_url: SecretStr | None = None
    """The database agent pods use (default: `database_url`)."""
    runtime_redis_url: SecretStr | None = None
    """The Redis agent pods use (default: `redis_url`)."""
    runtime_qdrant_url: str | None = None
    """The Qdrant server agent pods use (default: `qdrant_url`)."""
    runtime_qdrant_path: str | None = None
    """Qdrant local mode inside each agent pod instead of a server — ephemeral and per pod: only for
    clusters without a Qdrant server (the tests' real node)."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP collector agent pods export traces to (`OTEL_EXPORTER_OTLP_ENDPOINT`)."""
    traces_sampler: str | None = None
    """Which traces agent pods record (`OTEL_TRACES_SAMPLER`, e.g. `parentbased_traceidratio`)."""
    traces_sampler_arg: str | None = None
    """Its ratio, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`)."""
    platform_egress: list[EgressTarget] = Field(default_factory=list)
    """CIDRs and ports every tenant's pods may reach: the stores (PostgreSQL, Redis), the LLM
    providers' endpoints, a collector outside the cluster. JSON: `[{"cidr": "10.0.2.0/24", "ports": [5432]}]`."""
    llm_secret: str = LLM_SECRET
    """Without Key Vault: the Secret in `platform_namespace` with the LLM provider credentials
    (`OPENAI_API_KEY`, ...), copied into every tenant namespace."""
    key_vault_name: str | None = None
    """With Key Vault (Azure): agent pods read provider credentials and tools' secrets from it through
    the Secrets Store CSI driver and workload identity."""
    key_vault_tenant_id: str | None = None
    runtime_client_id: str | None = None
    """Client id of the runtime's user-assigned identity (federated with each tenant's agent service account)."""
    provider_secrets: dict[str, str] = Field(default_factory=dict)
    """Provider setting -> Key Vault secret name, e.g. `{"OPENAI_API_KEY": "llm-openai-api-key"}`."""
    gateway_name: str | None = None
    """The Gateway API Gateway every agent gets an HTTPRoute on (none: no routes)."""
    gateway_namespace: str = "agentplane-gateway"
    gateway_url: str | None = None
    """The gateway's public base URL, shown as each Agent's `status.url`."""
    ingress_namespaces: list[str] = Field(default_factory=list)
    """More namespaces whose pods may call agents (the gateway's is always allowed)."""
    monitoring_namespace: str | None = "monitoring"
    """Namespace of Prometheus, allowed to the agents' metrics port."""
    agent_node_selector: dict[str, str] = Field(default_factory=dict)
    """Node selector of agent pods (a node pool for agents)."""
    agent_tolerations: list[dict[str, Any]] = Field(default_factory=list)
    """Tolerations of agent pods."""
    gitops_source: str | None = None
    """`<namespace>/<name>` of the Flux GitRepository holding the specs: each new artifact revision
    syncs the tenants' Git-kept knowledge (a Job of the runtime image). Unset: no sync."""
    gitops_specs_dir: str = "specs"
    """Where `tenants/` is inside that repository."""

    resync_seconds: float = Field(default=300.0, gt=0)
    """How often every object is reconciled again, repairing drift of its children (and listing the
    MCP servers of Tools without parameters again)."""
    budget_check_seconds: float = Field(default=60.0, gt=0)
    """How often each Tenant's spend this month is read from the database and compared with its
    monthly budget (a warning at 80 % and at 100 %, once each per month)."""
    audit_retention_days: int = Field(default=365, ge=0)
    """Audit records written longer ago than this are removed, once a day; 0 keeps them forever."""
    mcp_discovery_timeout_seconds: float = Field(default=10.0, gt=0)
    """How long listing an MCP server's tools may take (schema discovery of MCP Tools without parameters)."""
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8080
    """Port of `/metrics` and `/healthz`."""
    peering: str = "agentplane"
    """kopf peering name: of several replicas, one is active."""
    priority: int | None = None
    """Peering priority: the highest runs, the others stand by. Unset, a random one, so that identical
    replicas never tie (kopf pauses every operator of a tied priority)."""
    peering_lifetime_seconds: int = Field(default=60, ge=5)
    """How long a replica's peering record lives without a keep-alive: a killed active replica is
    taken over after at most this long."""
    standalone: bool = False
    """Run without peering (a single replica, no peering objects needed)."""
    kubernetes_service_host: str | None = Field(default=None, validation_alias="KUBERNETES_SERVICE_HOST")
    kubernetes_service_port: int = Field(default=443, validation_alias="KUBERNETES_SERVICE_PORT")
    """Where the API server is from a pod (set by the kubelet)."""
    field_manager: str = "agentplane-operator"
    finalizer: str = "agentplane.io/finalizer"
    worker_limit: int | None = None
    """Most objects reconciled at once (kopf's batching worker limit); none by default."""
    api_concurrency: int = Field(default=API_CONCURRENCY, ge=1, le=256)
    """Most of the reconcilers' own requests in flight at once, one connection each (kopf's watches
    and its own patches are not counted); the others wait their turn by priority."""
    shard: str | None = None
    """`I/N`: this instance reconciles only the tenants of shard I of N (`agentplane_operator.shards`),
    under the peering `<peering>-I`; none: every tenant."""

    @model_validator(mode="after")
    def _coherent(self) -> OperatorSettings:
        if bool(self.qdrant_url) == (self.qdrant_path is not None):
            raise ValueError(
                "set exactly one of AGENTPLANE_OPERATOR_QDRANT_URL and AGENTPLANE_OPERATOR_QDRANT_PATH"
            )
        if bool(self.runtime_qdrant_url or self.qdrant_url) == bool(self.runtime_qdrant_path):
            raise ValueError(
                "agent pods need one Qdrant: set AGENTPLANE_OPERATOR_RUNTIME_QDRANT_URL (or "
                "AGENTPLANE_OPERATOR_QDRANT_URL), or AGENTPLANE_OPERATOR_RUNTIME_QDRANT_PATH for local mode "
                "inside each pod — not both"
            )
        vault = (self.key_vault_name, self.key_vault_tenant_id, self.runtime_client_id)
        if any(vault) and not all(vault):
            raise ValueError(
                "Key Vault needs AGENTPLANE_OPERATOR_KEY_VAULT_NAME, _KEY_VAULT_TENANT_ID and "
                "_RUNTIME_CLIENT_ID together"
            )
        if self.gitops_source is not None and self.gitops_source.count("/") != 1:
            raise ValueError(
                "AGENTPLANE_OPERATOR_GITOPS_SOURCE is <namespace>/<name> of a Flux GitRepository"
            )
        if self.shard is not None:
            Shard.parse(self.shard)
        self.runtime_stores()  # what agent pods get must make sense (a known traces sampler, say)
        if bool(self.gateway_name) != bool(self.gateway_url):
            raise ValueError("set AGENTPLANE_OPERATOR_GATEWAY_NAME and _GATEWAY_URL together")
        return self

    def instance_shard(self) -> Shard | None:
        """This instance's shard, when it runs as one."""
        return Shard.parse(self.shard) if self.shard is not None else None

    def peering_name(self) -> str:
        """The peering this instance takes part in: each shard has its own."""
        shard = self.instance_shard()
        return f"{self.peering}-{shard.index}" if shard is not None else self.peering

    def in_cluster_server(self) -> str | None:
        """The API server's URL from a pod, as client-go's in-cluster config builds it."""
        host = self.kubernetes_service_host
        if not host:
            return None
        return (
            f"https://[{host}]:{self.kubernetes_service_port}"
            if ":" in host
            else f"https://{host}:{self.kubernetes_service_port}"
        )

    def runtime_stores(self) -> RuntimeStores:
        """What agent pods get in the runtime Secret."""
        database = self.runtime_database_url or self.database_url
        redis = self.runtime_redis_url or self.redis_url
        key = self.qdrant_api_key.get_secret_value() if self.qdrant_api_key else None
        return RuntimeStores(
            database_url=database.get_secret_value(),
            redis_url=redis.get_secret_value(),
            qdrant_url=None if self.runtime_qdrant_path else (self.runtime_qdrant_url or self.qdrant_url),
            qdrant_api_key=None if self.runtime_qdrant_path else key,
            qdrant_path=self.runtime_qdrant_path,
            otlp_endpoint=self.otlp_endpoint,
            traces_sampler=self.traces_sampler,
            traces_sampler_arg=self.traces_sampler_arg,
        )

    def build(self, *, llm_secret_data: dict[str, str] | None = None) -> BuildSettings:
        """The builders' settings; `llm_secret_data`: the platform's LLM Secret, read by the reconciler."""
        vault = None
        if self.key_vault_name and self.key_vault_tenant_id and self.runtime_client_id:
            vault = KeyVault(
                name=self.key_vault_name,
                tenant_id=self.key_vault_tenant_id,
                client_id=self.runtime_client_id,
                provider_secrets=self.provider_secrets,
            )
        gateway = None
        if self.gateway_name and self.gateway_url:
            gateway = Gateway(name=self.gateway_name, namespace=self.gateway_namespace, url=self.gateway_url)
        return BuildSettings(
            stores=self.runtime_stores(),
            runtime_image=self.runtime_image,
            image_pull_policy=self.image_pull_policy,
            platform_namespace=self.platform_namespace,
            platform_egress=tuple(self.platform_egress),
            llm_secret_data=None if vault else llm_secret_data,
            key_vault=vault,
            gateway=gateway,
            ingress_namespaces=tuple(self.ingress_namespaces),
            monitoring_namespace=self.monitoring_namespace,
            node_selector=self.agent_node_selector,
            tolerations=tuple(self.agent_tolerations),
        )
