"""The contract between the operator, which deploys agent pods, and the runtime, which runs in them.

Everything both sides must agree on lives here once: where the resolved config is mounted, the
ports and probe paths, the user the image runs as, the Secrets a pod reads and the environment
names of the settings in them. The operator's builders and the runtime's settings import these
names; neither side spells them as literals, and a test checks that every environment name the
operator writes is one the runtime reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

# --- the image ---------------------------------------------------------------------------------

RUNTIME_UID: Final = 10001
"""The non-root uid (and gid) of the runtime and operator images; pods run as it."""
RUNTIME_APP_NAME: Final = "agentplane-runtime"
"""`app.kubernetes.io/name` of every agent pod (what the PodMonitor selects)."""

# --- ports and paths ---------------------------------------------------------------------------

HTTP_PORT: Final = 8080
HTTP_PORT_NAME: Final = "http"
"""The agent's OpenAI-compatible API."""
METRICS_PORT: Final = 9090
METRICS_PORT_NAME: Final = "metrics"
"""`/metrics` alone, apart from the API, so a NetworkPolicy can open it to monitoring only."""
STARTUP_PATH: Final = "/healthz/startup"
LIVE_PATH: Final = "/healthz/live"
READY_PATH: Final = "/healthz/ready"
METRICS_PATH: Final = "/metrics"

CONFIG_DIR: Final = "/etc/agentplane"
CONFIG_FILE: Final = "agent.json"
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIG_FILE}"
"""The resolved `AgentConfig` (canonical JSON) from the agent's ConfigMap."""
TOOL_SECRETS_DIR: Final = "/var/run/agentplane/secrets"
"""Kubernetes Secrets of tools: `<dir>/<tool>/<key>`."""
KEYVAULT_DIR: Final = "/mnt/secrets-store"
"""Key Vault secrets mounted by the Secrets Store CSI driver: `<dir>/<secret-name>`."""
TMP_DIR: Final = "/tmp"
"""The one writable path of an agent pod (an emptyDir); the root filesystem is read-only."""
TERMINATION_LOG: Final = "/dev/termination-log"
"""Where a runtime that refuses to start writes why (Kubernetes shows it in the pod's status)."""

# --- identities and Secrets --------------------------------------------------------------------

SERVICE_ACCOUNT: Final = "agentplane-agent"
"""Service account of every agent pod in a tenant namespace (federated with the runtime's Azure
identity by infra)."""
KNOWLEDGE_SERVICE_ACCOUNT: Final = "agentplane-knowledge"
"""Service account of the knowledge-sync Jobs in the platform namespace (federated with the runtime's
Azure identity by infra, like the tenants' agent service accounts)."""
RUNTIME_SECRET: Final = "agentplane-runtime"
"""Secret in each tenant namespace, kept by the operator: the runtime's stores (`RuntimeStores`)."""
LLM_SECRET: Final = "agentplane-llm"
"""Secret in each tenant namespace with the LLM providers' credentials under their usual
environment names (`OPENAI_API_KEY`, `AZURE_API_KEY`, ...): synced from Key Vault by the CSI driver
on Azure, copied from the platform namespace's Secret of the same name elsewhere."""

# --- environment names the runtime reads -------------------------------------------------------

ENV_CONFIG: Final = "AGENTPLANE_CONFIG"
ENV_STORES: Final = "AGENTPLANE_STORES"
ENV_DATABASE_URL: Final = "AGENTPLANE_DATABASE_URL"
ENV_REDIS_URL: Final = "AGENTPLANE_REDIS_URL"
ENV_QDRANT_URL: Final = "AGENTPLANE_QDRANT_URL"
ENV_QDRANT_API_KEY: Final = "AGENTPLANE_QDRANT_API_KEY"
ENV_QDRANT_PATH: Final = "AGENTPLANE_QDRANT_PATH"
ENV_OTLP_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_OTEL_SERVICE_NAME: Final = "OTEL_SERVICE_NAME"
ENV_OTEL_RESOURCE_ATTRIBUTES: Final = "OTEL_RESOURCE_ATTRIBUTES"
ENV_METRICS_PORT: Final = "AGENTPLANE_METRICS_PORT"
ENV_OTEL_TRACES_SAMPLER: Final = "OTEL_TRACES_SAMPLER"
ENV_OTEL_TRACES_SAMPLER_ARG: Final = "OTEL_TRACES_SAMPLER_ARG"
TRACE_SAMPLERS: Final = frozenset(
    {
        "always_on", "always_off", "traceidratio",
        "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
    }
)  # fmt: skip
"""The OpenTelemetry SDK's built-in samplers, by their `OTEL_TRACES_SAMPLER` names."""

StoresMode = Literal["required", "embedded"]
"""`required` (the default, and what a cluster runs): the runtime refuses to start unless its
database, Redis and Qdrant are configured and answer. `embedded`: a store that is not configured
falls back to its embedded default (SQLite, in-process counters, Qdrant local mode) — what
`agentplane up` chooses explicitly."""


@dataclass(frozen=True, slots=True)
class RuntimeStores:
    """What the runtime Secret of a tenant namespace holds: the stores its agents use."""

    database_url: str
    redis_url: str
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_path: str | None = None
    """Qdrant local mode inside each pod (ephemeral, one pod's own): only for clusters without a
    Qdrant server, such as the tests'; chosen explicitly, never by absence of a URL."""
    otlp_endpoint: str | None = None
    traces_sampler: str | None = None
    """Which traces agent pods record (`OTEL_TRACES_SAMPLER`; unset: the SDK's default, all)."""
    traces_sampler_arg: str | None = None
    """The ratio of a `traceidratio` sampler, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`)."""

    def __post_init__(self) -> None:
        if (self.qdrant_url is None) == (self.qdrant_path is None):
            raise ValueError("set exactly one of qdrant_url and qdrant_path")
        if self.traces_sampler is not None and self.traces_sampler not in TRACE_SAMPLERS:
            raise ValueError(
                f"traces sampler {self.traces_sampler!r} is none of {', '.join(sorted(TRACE_SAMPLERS))}"
            )
        if self.traces_sampler_arg is not None:
            if not (self.traces_sampler or "").endswith("traceidratio"):
                raise ValueError("a traces sampler argument is the ratio of a traceidratio sampler")
            try:
                ratio = float(self.traces_sampler_arg)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:
                raise ValueError(f"the traces sampler ratio is from 0 to 1, not {self.traces_sampler_arg!r}")

    def secret_data(self) -> dict[str, str]:
        """The Secret's keys (environment names, taken by the pod with `envFrom`) and values."""
        data = {ENV_STORES: "required", ENV_DATABASE_URL: self.database_url, ENV_REDIS_URL: self.redis_url}
        optional = {
            ENV_QDRANT_URL: self.qdrant_url,
            ENV_QDRANT_API_KEY: self.qdrant_api_key,
            ENV_QDRANT_PATH: self.qdrant_path,
            ENV_OTLP_ENDPOINT: self.otlp_endpoint,
            ENV_OTEL_TRACES_SAMPLER: self.traces_sampler,
            ENV_OTEL_TRACES_SAMPLER_ARG: self.traces_sampler_arg,
        }
        data.update({key: value for key, value in optional.items() if value})
        return data


RUNTIME_SECRET_KEYS: Final = frozenset(
    {
        ENV_STORES,
        ENV_DATABASE_URL,
        ENV_REDIS_URL,
        ENV_QDRANT_URL,
        ENV_QDRANT_API_KEY,
        ENV_QDRANT_PATH,
        ENV_OTLP_ENDPOINT,
        ENV_OTEL_TRACES_SAMPLER,
        ENV_OTEL_TRACES_SAMPLER_ARG,
    }
)
"""Every key the runtime Secret may hold."""

PROVIDER_ENV: Final = (
    "OPENAI_API_KEY",
    "OPENAI_API_BASE",
    "AZURE_API_KEY",
    "AZURE_API_BASE",
    "AZURE_API_VERSION",
)
"""The provider settings the runtime reads from the LLM Secret."""


def agent_path(tenant: str, agent: str) -> str:
    """Path prefix of an agent's API behind a shared front door: the gateway in a cluster, and
    `agentplane up` locally (`<prefix>/v1/chat/completions`)."""
    return f"/t/{tenant}/a/{agent}"
