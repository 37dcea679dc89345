"""Stack configuration, read once from the committed `Pulumi.<stack>.yaml` into typed, validated models.

Every value under the `agentplane:` namespace is a structured object validated by a pydantic model
(camelCase keys, unknown keys refused), so a typo in a stack file fails `pulumi preview` with the
key and the field path instead of silently falling back to a default. Secrets are only accepted as
Pulumi secrets (`pulumi config set --secret ...`); a plain value is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar

import pulumi
import pulumi.runtime
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

NAMESPACE = "agentplane"
SECRET_KEYS = ("llmProviderKeys",)
"""Keys of the `agentplane:` namespace that must be Pulumi secrets."""


class ConfigError(Exception):
    """A stack configuration value is missing or invalid."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class NetworkConfig(_Model):
    """Address plan of the environment's virtual network."""

    address_space: str
    """CIDR of the virtual network."""
    aks_subnet: str
    """CIDR of the subnet of the AKS nodes (pods use an overlay network)."""
    endpoints_subnet: str
    """CIDR of the subnet of the private endpoints (Key Vault, Redis)."""
    postgres_subnet: str
    """CIDR of the subnet delegated to PostgreSQL Flexible Server."""


class NodePool(_Model):
    """One autoscaled AKS node pool."""

    vm_size: str
    min_count: int = Field(ge=0)
    max_count: int = Field(ge=1)
    zones: list[str] = Field(default_factory=list)
    """Availability zones; empty means no zone pinning."""

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.min_count > self.max_count:
            raise ValueError(f"minCount {self.min_count} is above maxCount {self.max_count}")
        return self


class AksConfig(_Model):
    """The Kubernetes cluster."""

    kubernetes_version: str
    """Kubernetes version of the control plane and node pools (e.g. `1.33`)."""
    sku_tier: Literal["Free", "Standard", "Premium"]
    admin_group_object_ids: list[str] = Field(default_factory=list)
    """Entra ID groups that get cluster-admin through Azure RBAC."""
    authorized_ip_ranges: list[str] = Field(default_factory=list)
    """CIDRs allowed to reach the API server; empty means unrestricted."""
    kubelogin_method: Literal["azurecli", "workloadidentity", "msi", "spn", "devicecode"] = "azurecli"
    """How `kubelogin` gets a token for Pulumi's Kubernetes provider."""
    system_pool: NodePool
    app_pool: NodePool
    worker_pool: NodePool
    pod_cidr: str = "192.168.0.0/16"
    service_cidr: str = "172.16.0.0/16"
    dns_service_ip: str = "172.16.0.10"


class PostgresConfig(_Model):
    """Azure Database for PostgreSQL Flexible Server."""

    version: Literal["16"]
    sku_name: str
    sku_tier: Literal["Burstable", "GeneralPurpose", "MemoryOptimized"]
    storage_gb: int = Field(ge=32)
    high_availability: bool
    """Zone-redundant standby."""
    geo_redundant_backup: bool
    backup_retention_days: int = Field(ge=7, le=35)

    @model_validator(mode="after")
    def _ha_tier(self) -> Self:
        if self.high_availability and self.sku_tier == "Burstable":
            raise ValueError("highAvailability needs skuTier GeneralPurpose or MemoryOptimized")
        return self


class RedisConfig(_Model):
    """Azure Cache for Redis."""

    sku: Literal["Basic", "Standard", "Premium"]
    family: Literal["C", "P"]
    capacity: int = Field(ge=0, le=6)

    @model_validator(mode="after")
    def _family(self) -> Self:
        if (self.sku == "Premium") != (self.family == "P"):
            raise ValueError("family P goes with sku Premium, family C with Basic and Standard")
        return self


class KeyVaultConfig(_Model):
    """Azure Key Vault."""

    purge_protection: bool
    soft_delete_retention_days: int = Field(ge=7, le=90)
    allowed_ip_ranges: list[str] = Field(default_factory=list)
    """Public CIDRs allowed through the vault firewall; empty means private endpoint only."""


class ImagesConfig(_Model):
    """Container images of the platform."""

    operator: str
    runtime: str
    """The agent runtime image the operator runs for every Agent."""


class ChartConfig(_Model):
    """A Helm chart pinned to a version."""

    repository: str
    version: str


class QdrantConfig(_Model):
    chart: ChartConfig
    replicas: int = Field(ge=1)
    storage_size: str
    storage_class: str


class MonitoringConfig(_Model):
    chart: ChartConfig
    log_retention_days: int = Field(ge=30, le=730)
    """Retention of the Log Analytics workspace AKS monitoring writes to."""


class GitOpsConfig(_Model):
    chart: ChartConfig
    repo_url: str
    branch: str
    path: str
    """Path in the repository Flux applies (relative, `./specs/...`)."""
    interval: str = "1m"
    secret_name: str | None = None
    """Secret in `flux-system` with Git credentials, for a private repository."""


_M = TypeVar("_M", bound=_Model)


@dataclass(frozen=True)
class StackConfig:
    """Everything the program reads from the stack, in one place."""

    stack: str
    location: str
    network: NetworkConfig
    aks: AksConfig
    postgres: PostgresConfig
    redis: RedisConfig
    key_vault: KeyVaultConfig
    images: ImagesConfig
    qdrant: QdrantConfig
    monitoring: MonitoringConfig
    gitops: GitOpsConfig
    llm_provider_keys: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    """Provider name -> API key, each a secret Output."""

    @property
    def tags(self) -> dict[str, str]:
        return {"app": "agentplane", "environment": self.stack}


def _parse(model: type[_M], key: str, value: Any) -> _M:
    try:
        return model.model_validate(value)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"{NAMESPACE}:{key}: {problems}") from None


def _object(cfg: pulumi.Config, key: str) -> Any:
    value = cfg.get_object(key)
    if value is None:
        raise ConfigError(f"{NAMESPACE}:{key} is not set in Pulumi.{pulumi.get_stack()}.yaml")
    return value


def _llm_provider_keys() -> dict[str, pulumi.Output[str]]:
    full_key = f"{NAMESPACE}:llmProviderKeys"
    raw = pulumi.runtime.get_config(full_key)
    if raw is None:
        return {}
    secret = (
        pulumi.runtime.is_config_secret(full_key) or full_key in pulumi.runtime.get_config_secret_keys_env()
    )
    if not secret:
        raise ConfigError(
            f"{full_key} must be a Pulumi secret: "
            f"pulumi config set --secret --path '{full_key}.<provider>' <api key>"
        )
    keys = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise ConfigError(f"{full_key} must map provider names to API keys")
    return {str(name): pulumi.Output.secret(value) for name, value in sorted(keys.items())}


def load_config() -> StackConfig:
    """Read and validate the current stack's configuration."""
    cfg = pulumi.Config(NAMESPACE)
    location = pulumi.Config("azure-native").get("location")
    if not location:
        raise ConfigError(f"azure-native:location is not set in Pulumi.{pulumi.get_stack()}.yaml")
    return StackConfig(
        stack=pulumi.get_stack(),
        location=location,
        network=_parse(NetworkConfig, "network", _object(cfg, "network")),
        aks=_parse(AksConfig, "aks", _object(cfg, "aks")),
        postgres=_parse(PostgresConfig, "postgres", _object(cfg, "postgres")),
        redis=_parse(RedisConfig, "redis", _object(cfg, "redis")),
        key_vault=_parse(KeyVaultConfig, "keyVault", _object(cfg, "keyVault")),
        images=_parse(ImagesConfig, "images", _object(cfg, "images")),
        qdrant=_parse(QdrantConfig, "qdrant", _object(cfg, "qdrant")),
        monitoring=_parse(MonitoringConfig, "monitoring", _object(cfg, "monitoring")),
        gitops=_parse(GitOpsConfig, "gitops", _object(cfg, "gitops")),
        llm_provider_keys=_llm_provider_keys(),
    )
