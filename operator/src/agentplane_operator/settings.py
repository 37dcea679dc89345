"""Operator settings: environment variables `AGENTPLANE_OPERATOR_*`, read once at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agentplane_operator.builders import BuildSettings


class OperatorSettings(BaseSettings):
    """How the operator runs and what it connects to."""

    model_config = SettingsConfigDict(env_prefix="AGENTPLANE_OPERATOR_", extra="ignore", frozen=True)

    runtime_image: str = "ghcr.io/agentplane/runtime:latest"
    """Image of the agent runtime every Agent's Deployment runs."""
    image_pull_policy: str = "IfNotPresent"
    platform_namespace: str = "agentplane-system"
    """Namespace of the platform services that tenant pods may reach."""
    runtime_secret: str = "agentplane-runtime"
    """Secret (in each tenant namespace) holding the runtime's credentials, mounted as environment."""

    redis_url: SecretStr
    """Redis where the runtime enforces quotas; the operator writes each tenant's limits there."""
    database_url: SecretStr
    """PostgreSQL (or SQLite) with the durable copy of the quota records."""
    qdrant_url: str | None = None
    """Qdrant server for knowledge-base collections."""
    qdrant_api_key: SecretStr | None = None
    qdrant_path: Path | None = None
    """Qdrant local mode (embedded, single process) instead of a server: for tests and experiments."""

    resync_seconds: float = Field(default=300.0, gt=0)
    """How often every object is reconciled again, repairing drift of its children."""
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
    field_manager: str = "agentplane-operator"
    finalizer: str = "agentplane.io/finalizer"
    worker_limit: int | None = None
    """Most objects reconciled at once (kopf's batching worker limit); none by default."""

    @model_validator(mode="after")
    def _one_qdrant(self) -> OperatorSettings:
        if bool(self.qdrant_url) == (self.qdrant_path is not None):
            raise ValueError(
                "set exactly one of AGENTPLANE_OPERATOR_QDRANT_URL and AGENTPLANE_OPERATOR_QDRANT_PATH"
            )
        return self

    @property
    def build(self) -> BuildSettings:
        return BuildSettings(
            runtime_image=self.runtime_image,
            image_pull_policy=self.image_pull_policy,
            platform_namespace=self.platform_namespace,
            runtime_secret=self.runtime_secret,
        )
