"""Stack configuration, read once from the committed `Pulumi.<stack>.yaml` into typed, validated models.

Every value under the `agentplane:` namespace is a structured object validated by a pydantic model
(camelCase keys, unknown keys refused), so a typo in a stack file fails `pulumi preview` with the
key and the field path instead of silently falling back to a default. Secrets are only accepted as
Pulumi secrets (`pulumi config set --secret ...`); a plain value is refused.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlsplit

import pulumi
import pulumi.runtime
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

NAMESPACE = "agentplane"
SECRET_KEYS = ("llmProviderKeys", "alertReceivers")
"""Keys of the `agentplane:` namespace that must be Pulumi secrets."""

Severity = Literal["page", "ticket"]
SEVERITIES: tuple[Severity, ...] = ("page", "ticket")
"""The `severity` label values of the platform's alerts, each routed to its own receiver."""


class ConfigError(Exception):
    """A stack configuration value is missing or invalid."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


class EgressRule(_Model):
    """Destinations agent pods may reach outside the cluster: a CIDR and TCP ports."""

    cidr: str
    ports: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _valid(self) -> Self:
        try:
            ipaddress.ip_network(self.cidr)
        except ValueError as error:
            raise ValueError(f"cidr {self.cidr!r}: {error}") from None
        bad = [port for port in self.ports if not 0 < port < 65536]
        if bad:
            raise ValueError(f"ports {bad} are not TCP ports (1-65535)")
        return self


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
    llm_egress: list[EgressRule] = Field(default_factory=lambda: [EgressRule(cidr="0.0.0.0/0", ports=[443])])
    """Where agent pods may reach LLM providers. Public providers (OpenAI, Azure OpenAI's public
    endpoints) have no fixed addresses, so a NetworkPolicy cannot narrow them by CIDR: the default is
    any address on 443. A provider behind a private endpoint or an egress proxy can be narrowed to it."""


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


class RegistryConfig(_Model):
    """The stack's Azure Container Registry, which the platform's images are pulled from."""

    sku: Literal["Basic", "Standard", "Premium"]
    allowed_ip_ranges: list[str] = Field(default_factory=list)
    """Premium only: public CIDRs allowed to push and pull (CI runners, workstations); with Premium
    and none, the registry is reached only through its private endpoint."""

    @model_validator(mode="after")
    def _premium(self) -> Self:
        if self.allowed_ip_ranges and self.sku != "Premium":
            raise ValueError("allowedIpRanges needs sku Premium (the only tier with network rules)")
        return self


_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class ImagesConfig(_Model):
    """Container images of the platform: `<registry>/agentplane/{operator,runtime}:<tag>`."""

    tag: str
    """Tag of both images in the stack's registry."""
    operator: str | None = None
    """A full image reference instead of the registry's operator image."""
    runtime: str | None = None
    """A full image reference instead of the registry's runtime image (what the operator runs for
    every Agent)."""

    @model_validator(mode="after")
    def _tag(self) -> Self:
        if not _TAG.fullmatch(self.tag):
            raise ValueError(
                f"tag {self.tag!r} is not an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*, 128 at most)"
            )
        return self


class ChartConfig(_Model):
    """A Helm chart pinned to a version."""

    repository: str
    version: str


class GatewayConfig(_Model):
    """The gateway agents are reached through from outside the cluster: Traefik, Gateway API."""

    chart: ChartConfig
    gateway_api_version: str
    """Release of the Gateway API CRDs (standard channel) applied, e.g. `v1.5.1`: the one the
    Traefik version of the chart supports (the chart no longer ships them)."""
    replicas: int = Field(default=1, ge=1)
    url: str
    """The public base URL the operator shows as each Agent's URL (`<url>/t/<tenant>/a/<agent>/v1`)."""
    hostname: str | None = None
    """Host name the Gateway's listeners accept (any when unset)."""
    dns_label: str | None = None
    """DNS label of the gateway's public IP: `<label>.<location>.cloudapp.azure.com` (unique per region)."""
    tls_secret_name: str | None = None
    """A `kubernetes.io/tls` Secret in the gateway's namespace: adds an HTTPS listener with it."""

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        if not re.fullmatch(r"v\d+\.\d+\.\d+", self.gateway_api_version):
            raise ValueError(f"gatewayApiVersion {self.gateway_api_version!r} is not a release (vX.Y.Z)")
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") or url.query:
            raise ValueError(f"url {self.url!r} must be http(s)://<host>[:port], without a path")
        if self.hostname and url.hostname != self.hostname.lower():
            raise ValueError(f"url {self.url!r} is not on hostname {self.hostname!r}")
        return self


class QdrantConfig(_Model):
    chart: ChartConfig
    replicas: int = Field(ge=1)
    storage_size: str
    storage_class: str


_DURATION = re.compile(r"(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
"""Prometheus' duration format, the one Alertmanager reads (`30s`, `1h`, `1h30m`)."""
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class AlertingConfig(_Model):
    """How Alertmanager groups and repeats notifications (the receivers are `alertReceivers`)."""

    group_by: list[str] = Field(default_factory=lambda: ["alertname", "slo", "tenant", "agent"], min_length=1)
    """Labels that make one notification: alerts sharing them are sent together."""
    page_repeat_interval: str = "1h"
    """How often a still-firing page is sent again."""
    ticket_repeat_interval: str = "12h"
    """How often a still-firing ticket is sent again."""
    require_page_receiver: bool = False
    """Refuse the stack without `alertReceivers.page` (prod: pages must reach someone)."""

    @model_validator(mode="after")
    def _valid(self) -> Self:
        bad = [label for label in self.group_by if not _LABEL_NAME.fullmatch(label)]
        if bad:
            raise ValueError(f"groupBy {bad} are not label names ([a-zA-Z_][a-zA-Z0-9_]*)")
        for name, value in (
            ("pageRepeatInterval", self.page_repeat_interval),
            ("ticketRepeatInterval", self.ticket_repeat_interval),
        ):
            if not _DURATION.fullmatch(value) or not re.search(r"[1-9]", value):
                raise ValueError(f"{name} {value!r} is not a positive duration (e.g. 30m, 1h, 1h30m)")
        return self


class MonitoringConfig(_Model):
    chart: ChartConfig
    log_retention_days: int = Field(ge=30, le=730)
    """Retention of the Log Analytics workspace AKS monitoring writes to."""
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)


class GitOpsConfig(_Model):
    chart: ChartConfig
    repo_url: str
    branch: str
    path: str
    """Path in the repository Flux applies (relative, `./specs/...`)."""
    interval: str = "1m"
    secret_name: str | None = None
    """Secret in `flux-system` with Git credentials, for a private repository."""


class AuditConfig(_Model):
    """The audit trail (who did what, in PostgreSQL): how long its records are kept."""

    retention_days: int = Field(default=365, ge=0, le=36500)
    """Records written longer ago than this are removed by the operator, once a day; 0 keeps them
    forever."""


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
    registry: RegistryConfig
    images: ImagesConfig
    gateway: GatewayConfig
    qdrant: QdrantConfig
    monitoring: MonitoringConfig
    gitops: GitOpsConfig
    policy_environment: str
    """Which `policies/params/<environment>/` holds the stack's policy parameters (`TierLimits`)."""
    audit: AuditConfig = field(default_factory=AuditConfig)
    """Optional (`agentplane:audit`): the audit trail's retention."""
    llm_provider_keys: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    """Provider name -> API key, each a secret Output."""
    llm_provider_endpoints: dict[str, str] = field(default_factory=dict)
    """Provider name -> API base URL (not a secret; stored in Key Vault beside the key)."""
    alert_receivers: dict[Severity, pulumi.Output[str]] = field(default_factory=dict)
    """Severity -> webhook URL Alertmanager sends those alerts to, each a secret Output; a severity
    without one goes nowhere."""

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


_PROVIDER = re.compile(r"[a-z][a-z0-9_]*")
"""litellm's provider names (`openai`, `azure`, `azure_ai`, ...)."""


def _provider_names(key: str, names: Any) -> None:
    bad = [str(name) for name in names if not _PROVIDER.fullmatch(str(name))]
    if bad:
        raise ConfigError(
            f"{NAMESPACE}:{key}: provider names {bad} are not litellm provider names ([a-z][a-z0-9_]*)"
        )


def _llm_provider_endpoints(cfg: pulumi.Config) -> dict[str, str]:
    key = "llmProviderEndpoints"
    endpoints = cfg.get_object(key) or {}
    if not isinstance(endpoints, dict) or not all(isinstance(v, str) for v in endpoints.values()):
        raise ConfigError(f"{NAMESPACE}:{key} must map provider names to API base URLs")
    _provider_names(key, endpoints)
    bad = [name for name, url in endpoints.items() if urlsplit(url).scheme != "https"]
    if bad:
        raise ConfigError(f"{NAMESPACE}:{key}: {bad} must be https:// URLs")
    return {str(name): url for name, url in sorted(endpoints.items())}


def _secret_map(key: str, names: str, values: str) -> dict[str, str]:
    """A secret-only map of the `agentplane:` namespace (`names` -> `values`, as the error messages
    say them): empty when unset, refused when not a Pulumi secret or not a map of strings. The error
    messages never quote a value."""
    full_key = f"{NAMESPACE}:{key}"
    raw = pulumi.runtime.get_config(full_key)
    if raw is None:
        return {}
    secret = (
        pulumi.runtime.is_config_secret(full_key) or full_key in pulumi.runtime.get_config_secret_keys_env()
    )
    if not secret:
        raise ConfigError(
            f"{full_key} must be a Pulumi secret: pulumi config set --secret --path '{full_key}.<{names}>' <{values}>"
        )
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise ConfigError(
            f"{full_key} must map {names} names to {values}s: "
            f"pulumi config set --secret --path '{full_key}.<{names}>' <{values}>"
        )
    return {str(name): value for name, value in sorted(parsed.items())}


def _llm_provider_keys() -> dict[str, pulumi.Output[str]]:
    keys = _secret_map("llmProviderKeys", "provider", "API key")
    _provider_names("llmProviderKeys", keys)
    return {name: pulumi.Output.secret(value) for name, value in keys.items()}


def _is_https(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme == "https" and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed IPv6 bracket; its message would not name the key
        return False


def _alert_receivers() -> dict[Severity, pulumi.Output[str]]:
    key = "alertReceivers"
    urls = _secret_map(key, "|".join(SEVERITIES), "https webhook URL")
    unknown = sorted(set(urls) - set(SEVERITIES))
    if unknown:
        raise ConfigError(f"{NAMESPACE}:{key}: receivers {unknown} are not one of {list(SEVERITIES)}")
    bad = [name for name, url in urls.items() if not _is_https(url)]
    if bad:
        raise ConfigError(f"{NAMESPACE}:{key}: {bad} must be https:// URLs")
    return {severity: pulumi.Output.secret(urls[severity]) for severity in SEVERITIES if severity in urls}


def _policy_environment(cfg: pulumi.Config, environments: Sequence[str]) -> str:
    key = "policyEnvironment"
    value = cfg.get(key)
    known = ", ".join(environments) or "none"
    if not value:
        raise ConfigError(
            f"{NAMESPACE}:{key} is not set in Pulumi.{pulumi.get_stack()}.yaml: set it to the folder of "
            f"policies/params/ whose TierLimits the admission policies use in this stack (one of: {known})"
        )
    if value not in environments:
        raise ConfigError(
            f"{NAMESPACE}:{key} {value!r} in Pulumi.{pulumi.get_stack()}.yaml is not a folder of "
            f"policies/params/ (one of: {known})"
        )
    return value


def load_config(policy_environments: Sequence[str]) -> StackConfig:
    """Read and validate the current stack's configuration; `policy_environments` are the folders
    of `policies/params/` (`policyEnvironment` must name one)."""
    cfg = pulumi.Config(NAMESPACE)
    location = pulumi.Config("azure-native").get("location")
    if not location:
        raise ConfigError(f"azure-native:location is not set in Pulumi.{pulumi.get_stack()}.yaml")
    keys, endpoints = _llm_provider_keys(), _llm_provider_endpoints(cfg)
    if "azure" in keys and "azure" not in endpoints:
        raise ConfigError(
            f"{NAMESPACE}:llmProviderKeys.azure needs {NAMESPACE}:llmProviderEndpoints.azure, the Azure "
            "OpenAI resource's endpoint (https://<resource>.openai.azure.com): the runtime reads both"
        )
    monitoring = _parse(MonitoringConfig, "monitoring", _object(cfg, "monitoring"))
    receivers = _alert_receivers()
    if monitoring.alerting.require_page_receiver and "page" not in receivers:
        raise ConfigError(
            f"{NAMESPACE}:alertReceivers.page is not set, and {NAMESPACE}:monitoring.alerting."
            f"requirePageReceiver is true in Pulumi.{pulumi.get_stack()}.yaml: pages would go nowhere. "
            f"Set it: pulumi config set --secret --path '{NAMESPACE}:alertReceivers.page' <https webhook URL>"
        )
    return StackConfig(
        stack=pulumi.get_stack(),
        location=location,
        network=_parse(NetworkConfig, "network", _object(cfg, "network")),
        aks=_parse(AksConfig, "aks", _object(cfg, "aks")),
        postgres=_parse(PostgresConfig, "postgres", _object(cfg, "postgres")),
        redis=_parse(RedisConfig, "redis", _object(cfg, "redis")),
        key_vault=_parse(KeyVaultConfig, "keyVault", _object(cfg, "keyVault")),
        registry=_parse(RegistryConfig, "registry", _object(cfg, "registry")),
        images=_parse(ImagesConfig, "images", _object(cfg, "images")),
        gateway=_parse(GatewayConfig, "gateway", _object(cfg, "gateway")),
        qdrant=_parse(QdrantConfig, "qdrant", _object(cfg, "qdrant")),
        monitoring=monitoring,
        gitops=_parse(GitOpsConfig, "gitops", _object(cfg, "gitops")),
        policy_environment=_policy_environment(cfg, policy_environments),
        audit=_parse(AuditConfig, "audit", cfg.get_object("audit") or {}),
        llm_provider_keys=keys,
        llm_provider_endpoints=endpoints,
        alert_receivers=receivers,
    )
