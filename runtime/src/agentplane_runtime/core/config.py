"""Runtime settings: environment variables prefixed `AGENTPLANE_` (provider keys also by their usual names)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentplane_platform.api.v1alpha1.tenant import ModelPrice
from agentplane_platform.contract import HTTP_PORT, TERMINATION_LOG, StoresMode

Dependency = Literal["database", "quota_store", "vector_store"]
_OPTIONAL: tuple[Dependency, ...] = ("database", "vector_store")


class Settings(BaseSettings):
    """Everything the runtime reads from its environment; built once by the entrypoint."""

    model_config = SettingsConfigDict(env_prefix="AGENTPLANE_", extra="ignore", populate_by_name=True)

    config: Path | None = None
    """The resolved agent config (JSON, as the operator mounts it at /etc/agentplane/agent.json)."""
    host: str = "0.0.0.0"
    port: int = HTTP_PORT
    metrics_port: int | None = None
    """Serve `/metrics` on this port alone (and not on the API's), so that a NetworkPolicy can open
    it to monitoring only; unset, `/metrics` is served beside the API (`agentplane up`)."""

    stores: StoresMode = "required"
    """`required`: refuse to start unless the database, Redis and Qdrant are configured and answer
    within `startup_timeout_seconds`, and the agent's models have provider credentials (what a pod
    runs). `embedded`: an unconfigured store falls back to its embedded default (SQLite in
    `state_dir`, in-process counters and buffer, Qdrant local mode) — chosen by `agentplane up`."""
    startup_timeout_seconds: float = 30.0
    """How long a `required` store may take to answer at startup before the runtime gives up."""
    termination_log: Path = Path(TERMINATION_LOG)
    """Where a runtime that refuses to start writes why, when the file exists (Kubernetes shows it
    as the container's termination message)."""

    database_url: str | None = None
    """PostgreSQL (or SQLite) URL for API keys and usage; with embedded stores, a SQLite file under
    `state_dir` when unset."""
    state_dir: Path = Path("/tmp/agentplane")
    migrate_on_start: bool = True
    """Run the Alembic migrations at startup (idempotent; one replica at a time on PostgreSQL)."""
    redis_url: str | None = None
    """Redis for quota counters and the usage buffer; with embedded stores, in-process counters and
    buffer when unset."""
    redis_max_connections: int = 256
    """Connections to Redis per process; a request waits for one when all are busy."""
    qdrant_url: str | None = None
    """Qdrant server; else qdrant-client local mode at `qdrant_path` (or, with embedded stores, in
    memory)."""
    qdrant_path: Path | None = None
    qdrant_api_key: SecretStr | None = None
    ensure_collections: bool = False
    """Create missing knowledge collections at startup (the operator does it in a cluster)."""
    local_embeddings: bool = True
    """Embed `local/...` knowledge bases with the local model when the runtime's `dense` extra is
    installed; keyword vectors alone otherwise (or when this is off)."""

    ready_optional: list[Dependency] = Field(default_factory=lambda: list(_OPTIONAL))
    """Dependencies whose outage does not make the pod unready: a database outage is absorbed by the
    usage buffer and the key cache, a vector store outage by answers without context."""

    # auth
    api_key_cache_seconds: float = 10.0
    """How long a verified API key is trusted before the database is asked again (revocation delay)."""
    api_key_stale_seconds: float = 600.0
    """While the database is unreachable, keys verified within this long are still accepted."""
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_group_roles: dict[str, list[str]] = Field(default_factory=dict)
    """Group claim values (Entra group object ids) to roles such as `acme:user` or `acme:admin`."""
    oidc_roles_claim: str = "roles"
    oidc_groups_claim: str = "groups"
    oidc_subject_claim: str = "oid"
    """Claim naming the caller (Entra's object id); `sub` is used when it is missing."""
    oidc_jwks_cache_seconds: float = 300.0
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256"])

    # quotas
    quota_limits_cache_seconds: float = 5.0
    quota_prompt_margin: float = Field(default=0.1, ge=0)
    """Prompt tokens reserved beyond litellm's count of them, as a fraction of it: room for a
    provider whose tokenizer counts a little more than the one litellm counts with."""
    quota_default_max_tokens: int = 1024
    """Completion tokens reserved (and sent as `max_tokens`) when neither the caller nor the agent sets one."""

    # prices
    model_prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """The platform's model prices (JSON: `{"openai/my-model": {"inputPerMillionTokens": 0.5,
    "outputPerMillionTokens": 1.5}}`), for models litellm's price list lacks; a Tenant's own
    `spec.modelPrices` come first. A call to a model with no price anywhere is refused."""

    # LLM providers (credentials from the mounted Secret, under their usual names)
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AGENTPLANE_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_api_base: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENTPLANE_OPENAI_API_BASE", "OPENAI_API_BASE", "OPENAI_BASE_URL"),
    )
    azure_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("AGENTPLANE_AZURE_API_KEY", "AZURE_API_KEY")
    )
    azure_api_base: str | None = Field(
        default=None, validation_alias=AliasChoices("AGENTPLANE_AZURE_API_BASE", "AZURE_API_BASE")
    )
    azure_api_version: str = Field(
        default="2024-10-21",
        validation_alias=AliasChoices("AGENTPLANE_AZURE_API_VERSION", "AZURE_API_VERSION"),
    )
    offline_model: bool = False
    """Answer with the offline model (`agentplane_runtime.offline`) for models whose provider has no
    credentials here, instead of failing (`agentplane up` turns it on)."""
    llm_timeout_seconds: float = 60.0
    """Per attempt; bounded by what is left of the agent's total timeout."""
    llm_retries: int = 2
    """Retries of a retryable error (429, 5xx, timeout) on the same model before the next fallback."""
    llm_backoff_seconds: float = 0.25
    """Base of the jittered exponential backoff between retries."""
    breaker_failures: int = 5
    breaker_window_seconds: float = 30.0
    breaker_open_seconds: float = 60.0

    # tools
    secrets_dir: Path = Path("/var/run/agentplane/secrets")
    """Kubernetes secret refs: `<secrets_dir>/<tool-name>/<key>`."""
    keyvault_dir: Path = Path("/mnt/secrets-store")
    """Key Vault secret refs (Secrets Store CSI mount): `<keyvault_dir>/<secret-name>`."""
    mcp_max_sessions: int = Field(default=1000, ge=1)
    """MCP sessions kept for conversations (per process); beyond it the least recently used idle one is ended."""
    mcp_session_idle_seconds: float = Field(default=300.0, gt=0)
    """A conversation's MCP session unused this long is ended (HTTP DELETE to its server)."""
    mcp_discovery_timeout_seconds: float = Field(default=10.0, gt=0)
    """`agentplane up`: how long listing an MCP server's tools may take (schema discovery)."""

    # request limits
    max_body_bytes: int = 4 * 1024 * 1024
    max_upload_bytes: int = 20 * 1024 * 1024
    max_messages: int = 1000

    # usage metering
    usage_flush_seconds: float = 0.5
    usage_batch_size: int = 500
    usage_stream: str = "agentplane:usage"
    """Redis stream that buffers usage records until they are in the database."""

    # audit trail
    audit: bool = True
    """Record the audit trail (authentication failures, refusals, documents, tool calls). Off only
    to measure what it costs."""
    audit_stream: str = "agentplane:audit"
    """Redis stream that buffers audit events until they are in the database (batched and flushed
    like usage records)."""

    # telemetry and logs
    otel_traces_exporter: Literal["otlp", "console", "none"] = Field(
        default="otlp",
        validation_alias=AliasChoices("AGENTPLANE_OTEL_TRACES_EXPORTER", "OTEL_TRACES_EXPORTER"),
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "AGENTPLANE_OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
    )
    """Traces are exported over OTLP/HTTP when this is set (the SDK reads the other OTEL_* variables)."""
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("breaker_failures", "max_messages", "usage_batch_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    def database(self) -> str:
        """The database URL; with embedded stores, a SQLite file in the state directory by default."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'agentplane.db'}"

    def missing_stores(self) -> list[str]:
        """The settings a `required` runtime lacks (empty when every store is configured)."""
        if self.stores == "embedded":
            return []
        missing = [
            name
            for name, value in (("DATABASE_URL", self.database_url), ("REDIS_URL", self.redis_url))
            if not value
        ]
        if not self.qdrant_url and self.qdrant_path is None:
            missing.append("QDRANT_URL")
        return [f"AGENTPLANE_{name}" for name in missing]
