"""Pure builders: spec objects in, Kubernetes manifests out. No I/O, no clients, no clocks.

Every function returns a complete desired object for server-side apply under the operator's
field manager; running them twice on the same input returns equal dicts, which is what makes a
second reconcile write nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentplane_platform.api.v1alpha1 import (
    Agent,
    EgressStatus,
    Prompt,
    Tenant,
    Tool,
    tenant_namespace_labels,
    tenant_of,
)
from agentplane_platform.config import AgentConfig, prompt_version_hash
from agentplane_platform.contract import (
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_PATH,
    ENV_CONFIG,
    ENV_METRICS_PORT,
    ENV_OTEL_RESOURCE_ATTRIBUTES,
    ENV_OTEL_SERVICE_NAME,
    HTTP_PORT,
    HTTP_PORT_NAME,
    KEYVAULT_DIR,
    KNOWLEDGE_SERVICE_ACCOUNT,
    LIVE_PATH,
    LLM_SECRET,
    METRICS_PORT,
    METRICS_PORT_NAME,
    READY_PATH,
    RUNTIME_APP_NAME,
    RUNTIME_SECRET,
    RUNTIME_UID,
    SERVICE_ACCOUNT,
    STARTUP_PATH,
    TMP_DIR,
    TOOL_SECRETS_DIR,
    RuntimeStores,
    agent_path,
)

Manifest = dict[str, Any]

GROUP = "agentplane.io"
MANAGED_BY = {"app.kubernetes.io/managed-by": "agentplane-operator"}
TENANT_LABEL = f"{GROUP}/tenant"
AGENT_LABEL = f"{GROUP}/agent"
PROMPT_LABEL = f"{GROUP}/prompt"
PROMPT_HASH_ANNOTATION = f"{GROUP}/prompt-hash"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
STORES_HASH_ANNOTATION = f"{GROUP}/stores-hash"
TENANT_EDITOR_ROLE = "agentplane-tenant-editor"
SERVICE_PORT = 80
"""Port of an agent's Service (to the runtime's HTTP port)."""
SECRET_PROVIDER_CLASS = "agentplane"
"""The SecretProviderClass of a tenant namespace (Key Vault through the Secrets Store CSI driver)."""
WORKLOAD_IDENTITY_USE = "azure.workload.identity/use"
WORKLOAD_IDENTITY_CLIENT_ID = "azure.workload.identity/client-id"


class EgressTarget(BaseModel):
    """A destination every tenant's pods may reach: a platform store, the OTLP collector, an LLM provider."""

    model_config = ConfigDict(frozen=True)

    cidr: str
    ports: tuple[int, ...] = Field(min_length=1)


class KeyVault(BaseModel):
    """Azure Key Vault, read by agent pods through the Secrets Store CSI driver and workload identity."""

    model_config = ConfigDict(frozen=True)

    name: str
    tenant_id: str
    """The Entra ID (Azure AD) tenant of the vault."""
    client_id: str
    """Client id of the runtime's user-assigned identity (federated with `SERVICE_ACCOUNT`)."""
    provider_secrets: dict[str, str] = Field(default_factory=dict)
    """Provider setting (`OPENAI_API_KEY`, ...) -> the Key Vault secret holding it; synced into the
    Secret `LLM_SECRET` of each tenant namespace."""


class Gateway(BaseModel):
    """The Gateway API Gateway agents are reached through from outside the cluster."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str
    url: str
    """Its public base URL (`https://agents.example.com`): an agent's URL is `<url>/t/<tenant>/a/<agent>/v1`."""


class BuildSettings(BaseModel):
    """What the builders need to know about the platform (from the operator's settings)."""

    model_config = ConfigDict(frozen=True)

    stores: RuntimeStores
    """The stores agent pods use: the runtime Secret of every tenant namespace."""
    runtime_image: str = "ghcr.io/agentplane/runtime:latest"
    image_pull_policy: str = "IfNotPresent"
    platform_namespace: str = "agentplane-system"
    """Namespace of the platform services tenant pods may reach (Qdrant, the OTLP collector)."""
    platform_egress: tuple[EgressTarget, ...] = ()
    """Stores and providers outside the cluster (or outside pod networking) that every tenant's pods
    reach: PostgreSQL, Redis, the LLM providers' endpoints."""
    llm_secret_data: dict[str, str] | None = None
    """Without Key Vault: the provider credentials copied into each tenant's `LLM_SECRET` (from the
    platform namespace's Secret of that name, read by the reconciler)."""
    key_vault: KeyVault | None = None
    gateway: Gateway | None = None
    ingress_namespaces: tuple[str, ...] = ()
    """Namespaces whose pods may call agents' APIs (the gateway's); the gateway's own is added."""
    monitoring_namespace: str | None = "monitoring"
    """Namespace whose pods (Prometheus) may scrape agents' metrics port."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Where agent pods run (a node pool for agents)."""
    tolerations: tuple[dict[str, Any], ...] = ()

    def callers(self) -> list[str]:
        """Namespaces allowed to call agents' APIs."""
        gateway = [self.gateway.namespace] if self.gateway else []
        return sorted({*self.ingress_namespaces, *gateway})


def _labels(tenant: str, **extra: str) -> dict[str, str]:
    return {**MANAGED_BY, TENANT_LABEL: tenant, **extra}


def _tenant_meta(tenant: Tenant, name: str) -> Manifest:
    """Metadata of a child object in the tenant's namespace."""
    return {"name": name, "namespace": tenant.namespace, "labels": _labels(tenant.name)}


def build_namespace(tenant: Tenant) -> Manifest:
    """The tenant's namespace, labelled so policies and dashboards can select it."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": tenant.namespace,
            "labels": tenant_namespace_labels(tenant),
        },
    }


def build_resource_quota(tenant: Tenant) -> Manifest:
    """Compute limits of the namespace."""
    compute = tenant.spec.quotas.compute
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _tenant_meta(tenant, "agentplane"),
        "spec": {
            "hard": {
                "requests.cpu": compute.cpu,
                "requests.memory": compute.memory,
                "limits.memory": compute.memory,
                "pods": str(compute.pods),
            }
        },
    }


def build_limit_range(tenant: Tenant) -> Manifest:
    """Defaults for containers that set no requests, so the quota can always be computed."""
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _tenant_meta(tenant, "agentplane"),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                    "default": {"memory": "512Mi"},
                }
            ]
        },
    }


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def build_network_policies(tenant: Tenant, settings: BuildSettings) -> list[Manifest]:
    """Default deny, then exactly what agent pods need.

    Egress: DNS, the tenant's own pods, the platform namespace (Qdrant, the OTLP collector), the
    platform's stores and providers by CIDR, and the tenant's declared egress. Ingress: the tenant's
    own pods, the gateway's namespace on the API port, monitoring on the metrics port. Nothing from
    or to another tenant. NetworkPolicy cannot name hosts: a host rule opens its ports to every
    destination (see `egress_status`), and the runtime's allowlist is the gate for it.
    """
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _tenant_meta(tenant, "default-deny"),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    egress: list[dict[str, Any]] = [
        {
            "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        {"to": [{"podSelector": {}}]},
        {"to": [_namespace(settings.platform_namespace)]},
    ]
    for target in settings.platform_egress:
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": target.cidr}}],
                "ports": [{"protocol": "TCP", "port": port} for port in target.ports],
            }
        )
    for rule in tenant.spec.egress:
        ports = [{"protocol": "TCP", "port": port} for port in rule.ports]
        if rule.cidr is not None:
            egress.append({"to": [{"ipBlock": {"cidr": rule.cidr}}], "ports": ports})
        else:
            egress.append({"ports": ports})
    ingress: list[dict[str, Any]] = [{"from": [{"podSelector": {}}]}]
    for namespace in settings.callers():
        ingress.append({"from": [_namespace(namespace)], "ports": [{"protocol": "TCP", "port": HTTP_PORT}]})
    if settings.monitoring_namespace:
        ingress.append(
            {
                "from": [_namespace(settings.monitoring_namespace)],
                "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
            }
        )
    hosts = ",".join(rule.host for rule in tenant.spec.egress if rule.host is not None)
    allow = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            **_tenant_meta(tenant, "agentplane-allow"),
            "annotations": {f"{GROUP}/egress-hosts": hosts},
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
    return [deny, allow]


def egress_status(tenant: Tenant) -> list[EgressStatus]:
    """How each declared egress rule is enforced: CIDRs by the network, hosts by the runtime alone."""
    return [
        EgressStatus(
            destination=rule.cidr or rule.host or "",
            ports=list(rule.ports),
            enforced_by="network" if rule.cidr is not None else "runtime",
        )
        for rule in tenant.spec.egress
    ]


def _secret(meta: Manifest, data: dict[str, str]) -> Manifest:
    """An Opaque Secret; values base64-encoded as the server returns them (so an unchanged Secret
    holds and is not written again)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in sorted(data.items())},
    }


def _secret_provider_class(meta: Manifest, vault: KeyVault, *, tool_secrets: list[str]) -> Manifest:
    """A SecretProviderClass reading Key Vault as the runtime's identity: the provider keys under
    their environment names (synced into `LLM_SECRET`), and the named tools' secrets as files."""
    objects = [{"objectName": secret, "objectType": "secret", "objectAlias": alias}
               for alias, secret in sorted(vault.provider_secrets.items())]  # fmt: skip
    objects += [{"objectName": name, "objectType": "secret"} for name in tool_secrets]
    return {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": meta,
        "spec": {
            "provider": "azure",
            "parameters": {
                "usePodIdentity": "false",
                "clientID": vault.client_id,
                "keyvaultName": vault.name,
                "tenantId": vault.tenant_id,
                # the Azure provider's format: a YAML document with one YAML string per object
                "objects": "array:\n"
                + "".join("  - |\n" + "".join(f"    {k}: {v}\n" for k, v in o.items()) for o in objects),
            },
            "secretObjects": [
                {
                    "secretName": LLM_SECRET,
                    "type": "Opaque",
                    "data": [{"objectName": alias, "key": alias} for alias in sorted(vault.provider_secrets)],
                }
            ],
        },
    }


def build_runtime_secret(tenant: Tenant, settings: BuildSettings) -> Manifest:
    """The runtime's stores, as environment names (`envFrom`): exactly the keys the runtime reads."""
    return _secret(_tenant_meta(tenant, RUNTIME_SECRET), settings.stores.secret_data())


def stores_hash(settings: BuildSettings) -> str:
    """Hash of the runtime Secret's content: in the pod template, so changed stores roll the pods."""
    data = json.dumps(settings.stores.secret_data(), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def build_llm_secret_source(tenant: Tenant, settings: BuildSettings, tools: list[Tool]) -> Manifest | None:
    """Where the tenant's `LLM_SECRET` comes from: a SecretProviderClass syncing it from Key Vault
    (which also mounts the Key Vault secrets of the namespace's tools), or a copy of the platform's."""
    vault = settings.key_vault
    if vault is None:
        if settings.llm_secret_data is None:
            return None
        return _secret(_tenant_meta(tenant, LLM_SECRET), settings.llm_secret_data)
    tool_secrets = sorted(
        {
            auth.secret_ref.key_vault.name
            for tool in tools
            if (auth := getattr(tool.spec, "auth", None)) is not None
            and auth.secret_ref.key_vault is not None
        }
    )
    return _secret_provider_class(
        _tenant_meta(tenant, SECRET_PROVIDER_CLASS), vault, tool_secrets=tool_secrets
    )


def build_service_account(tenant: Tenant, settings: BuildSettings) -> Manifest:
    """The identity the tenant's agent pods run as (federated with the runtime's Azure identity when
    the platform reads Key Vault)."""
    meta = _tenant_meta(tenant, SERVICE_ACCOUNT)
    if settings.key_vault is not None:
        meta["annotations"] = {WORKLOAD_IDENTITY_CLIENT_ID: settings.key_vault.client_id}
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        "automountServiceAccountToken": False,
    }


def build_owner_role_binding(tenant: Tenant) -> Manifest:
    """Edit rights on agentplane kinds in the tenant's namespace only, for its owners."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _tenant_meta(tenant, "agentplane-owners"),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": TENANT_EDITOR_ROLE,
        },
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": owner.kind, "name": owner.name}
            for owner in tenant.spec.owners
        ],
    }


def build_tenant_children(
    tenant: Tenant, settings: BuildSettings, tools: list[Tool] | None = None
) -> list[Manifest]:
    """Every namespaced child of a Tenant, in apply order (namespace first). `tools`: the Tools in
    its namespace (their Key Vault secrets are mounted through the tenant's SecretProviderClass)."""
    children = [
        build_namespace(tenant),
        build_resource_quota(tenant),
        build_limit_range(tenant),
        *build_network_policies(tenant, settings),
        build_service_account(tenant, settings),
        build_owner_role_binding(tenant),
        build_runtime_secret(tenant, settings),
    ]
    llm = build_llm_secret_source(tenant, settings, tools or [])
    if llm is not None:
        children.append(llm)
    return children


def _agent_labels(config: AgentConfig) -> dict[str, str]:
    return _labels(config.tenant, **{AGENT_LABEL: config.agent, "app.kubernetes.io/name": RUNTIME_APP_NAME})


def _agent_meta(config: AgentConfig, name: str) -> Manifest:
    """Metadata of a child object of an agent."""
    return {"name": name, "namespace": config.namespace, "labels": _agent_labels(config)}


def build_agent_config_map(config: AgentConfig) -> Manifest:
    """The resolved config the runtime reads, with its hash."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            **_agent_meta(config, f"agent-{config.agent}"),
            "annotations": {CONFIG_HASH_ANNOTATION: config.hash()},
        },
        "data": {CONFIG_FILE: config.canonical_json()},
    }


def _secret_volumes(config: AgentConfig) -> tuple[list[Manifest], list[Manifest]]:
    """Kubernetes Secrets the tools reference, mounted read-only under TOOL_SECRETS_DIR/<tool>."""
    volumes: list[Manifest] = []
    mounts: list[Manifest] = []
    for tool in config.tools:
        auth = getattr(tool, "auth", None)
        if auth is None or auth.secret.kubernetes is None:
            continue
        ref = auth.secret.kubernetes
        volume = f"tool-{tool.name}"
        volumes.append(
            {"name": volume, "secret": {"secretName": ref.name, "items": [{"key": ref.key, "path": ref.key}]}}
        )
        mounts.append({"name": volume, "mountPath": f"{TOOL_SECRETS_DIR}/{tool.name}", "readOnly": True})
    return volumes, mounts


RUNTIME_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUNTIME_UID,
    "runAsGroup": RUNTIME_UID,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""Every container of the runtime image: non-root, read-only root, nothing more than it needs."""


def _runtime_container(settings: BuildSettings, name: str, **fields: Any) -> Manifest:
    """A container of the runtime image with its stores and provider keys from the namespace's
    Secrets (both required: a missing one keeps the container from being created)."""
    return {
        "name": name,
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        **fields,
        "envFrom": [
            {"secretRef": {"name": RUNTIME_SECRET, "optional": False}},
            {"secretRef": {"name": LLM_SECRET, "optional": False}},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(RUNTIME_SECURITY),
    }


def _key_vault_volume(provider_class: str) -> tuple[Manifest, Manifest]:
    """The Secrets Store CSI volume of a SecretProviderClass, and its mount at KEYVAULT_DIR."""
    volume = {
        "name": "key-vault",
        "csi": {
            "driver": "secrets-store.csi.k8s.io",
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": provider_class},
        },
    }
    return volume, {"name": "key-vault", "mountPath": KEYVAULT_DIR, "readOnly": True}


def _place(pod: dict[str, Any], settings: BuildSettings) -> dict[str, Any]:
    """Put a pod where agent pods run (the node selector and tolerations of the settings)."""
    if settings.node_selector:
        pod["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod["tolerations"] = [dict(t) for t in settings.tolerations]
    return pod


def build_agent_deployment(agent: Agent, config: AgentConfig, settings: BuildSettings) -> Manifest:
    """The runtime Deployment; its pod template carries the config hash, so a new config rolls it.

    Its stores come from the tenant's runtime Secret and its provider credentials from the LLM
    Secret, both required: without them the container is not created, and the runtime itself
    refuses to start without reachable stores (the reason lands in the pod's termination message).
    """
    runtime = agent.spec.runtime
    labels = _agent_labels(config)
    selector = {TENANT_LABEL: config.tenant, AGENT_LABEL: config.agent}
    secret_volumes, secret_mounts = _secret_volumes(config)
    resources: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        values = getattr(runtime.resources, section).model_dump(exclude_none=True)
        if values:
            resources[section] = values
    probe_http = {"port": HTTP_PORT_NAME}
    volumes: list[Manifest] = [
        {"name": "config", "configMap": {"name": f"agent-{config.agent}"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        *secret_volumes,
    ]
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_DIR},
        *secret_mounts,
    ]
    if settings.key_vault is not None:
        volume, mount = _key_vault_volume(SECRET_PROVIDER_CLASS)
        volumes.append(volume)
        mounts.append(mount)
        labels = {**labels, WORKLOAD_IDENTITY_USE: "true"}
    container = _runtime_container(
        settings,
        "runtime",
        args=["--config", CONFIG_PATH],
        ports=[
            {"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        env=[
            {"name": ENV_CONFIG, "value": CONFIG_PATH},
            {"name": ENV_METRICS_PORT, "value": str(METRICS_PORT)},
            {"name": ENV_OTEL_SERVICE_NAME, "value": f"agent-{config.agent}"},
            {
                "name": ENV_OTEL_RESOURCE_ATTRIBUTES,
                "value": f"agentplane.tenant={config.tenant},agentplane.agent={config.agent}",
            },
        ],
        resources=resources,
        volumeMounts=mounts,
        startupProbe={
            "httpGet": {"path": STARTUP_PATH, **probe_http},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        livenessProbe={
            "httpGet": {"path": LIVE_PATH, **probe_http},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        readinessProbe={
            "httpGet": {"path": READY_PATH, **probe_http},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
    )
    pod: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": RUNTIME_UID},
        "containers": [container],
        "volumes": volumes,
    }
    _place(pod, settings)
    annotations = {CONFIG_HASH_ANNOTATION: config.hash(), STORES_HASH_ANNOTATION: stores_hash(settings)}
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod},
    }
    if runtime.autoscaling is None:
        spec["replicas"] = 1 if runtime.replicas is None else runtime.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            **_agent_meta(config, config.agent),
            "annotations": {CONFIG_HASH_ANNOTATION: config.hash()},
        },
        "spec": spec,
    }


def build_agent_service(config: AgentConfig) -> Manifest:
    """The in-cluster endpoint of the agent's OpenAI-compatible API."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _agent_meta(config, config.agent),
        "spec": {
            "selector": {TENANT_LABEL: config.tenant, AGENT_LABEL: config.agent},
            "ports": [
                {
                    "name": HTTP_PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": HTTP_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def agent_endpoint(config: AgentConfig) -> str:
    """In-cluster base URL of the agent's API."""
    return f"http://{config.agent}.{config.namespace}.svc.cluster.local/v1"


def agent_url(config: AgentConfig, settings: BuildSettings) -> str | None:
    """The agent's base URL through the gateway, when the platform has one."""
    if settings.gateway is None:
        return None
    return f"{settings.gateway.url.rstrip('/')}{agent_path(config.tenant, config.agent)}/v1"


def build_agent_route(config: AgentConfig, settings: BuildSettings) -> Manifest | None:
    """A Gateway API HTTPRoute: `<gateway>/t/<tenant>/a/<agent>/...` to the agent's Service, the
    prefix stripped (the same paths `agentplane up` serves)."""
    gateway = settings.gateway
    if gateway is None:
        return None
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _agent_meta(config, config.agent),
        "spec": {
            "parentRefs": [
                {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "name": gateway.name,
                    "namespace": gateway.namespace,
                }
            ],
            "rules": [
                {
                    "matches": [
                        {"path": {"type": "PathPrefix", "value": agent_path(config.tenant, config.agent)}}
                    ],
                    "filters": [
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
                        }
                    ],
                    "backendRefs": [{"name": config.agent, "port": SERVICE_PORT}],
                }
            ],
        },
    }


def build_agent_hpa(agent: Agent, config: AgentConfig) -> Manifest | None:
    """A HorizontalPodAutoscaler when the agent autoscales."""
    scaling = agent.spec.runtime.autoscaling
    if scaling is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _agent_meta(config, config.agent),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": config.agent},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }


def build_agent_pdb(agent: Agent, config: AgentConfig) -> Manifest | None:
    """A PodDisruptionBudget keeping one pod up during drains, when the agent runs more than one."""
    runtime = agent.spec.runtime
    most = runtime.autoscaling.max_replicas if runtime.autoscaling else (runtime.replicas or 1)
    least = runtime.autoscaling.min_replicas if runtime.autoscaling else (runtime.replicas or 1)
    if most <= 1 or least <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _agent_meta(config, config.agent),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {TENANT_LABEL: config.tenant, AGENT_LABEL: config.agent}},
        },
    }


def build_agent_children(agent: Agent, config: AgentConfig, settings: BuildSettings) -> list[Manifest]:
    """Every child of an Agent, config first so pods never start without it."""
    children = [
        build_agent_config_map(config),
        build_agent_deployment(agent, config, settings),
        build_agent_service(config),
    ]
    for optional in (
        build_agent_hpa(agent, config),
        build_agent_pdb(agent, config),
        build_agent_route(config, settings),
    ):
        if optional is not None:
            children.append(optional)
    return children


def prompt_config_map_name(prompt: str, version: int) -> str:
    return f"prompt-{prompt}-v{version}"


def build_prompt_config_maps(prompt: Prompt) -> list[Manifest]:
    """One ConfigMap per version kept for pinning: the template and its declared variables."""
    namespace = prompt.metadata.namespace or ""
    maps = []
    for number, version in sorted(prompt.spec.versions().items()):
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": prompt_config_map_name(prompt.name, number),
                    "namespace": namespace,
                    "labels": _labels(tenant_of(namespace) or "", **{PROMPT_LABEL: prompt.name}),
                    "annotations": {PROMPT_HASH_ANNOTATION: prompt_version_hash(version)},
                },
                "data": {
                    "template": version.template,
                    "variables.json": json.dumps(
                        [
                            v.model_dump(mode="json", by_alias=True, exclude_none=True)
                            for v in version.variables
                        ],
                        sort_keys=True,
                    ),
                },
            }
        )
    return maps


# --- Git-kept knowledge -------------------------------------------------------------------------

KNOWLEDGE_SYNC_LABEL = f"{GROUP}/knowledge-sync"
REVISION_ANNOTATION = f"{GROUP}/revision"


def knowledge_sync_job_name(revision: str) -> str:
    return f"knowledge-sync-{hashlib.sha256(revision.encode()).hexdigest()[:12]}"


def _platform_meta(settings: BuildSettings, name: str, **labels: str) -> Manifest:
    return {"name": name, "namespace": settings.platform_namespace, "labels": {**MANAGED_BY, **labels}}


def build_knowledge_sync(
    settings: BuildSettings, *, revision: str, url: str, specs_dir: str
) -> list[Manifest]:
    """What syncs one GitOps revision's knowledge: the runtime's stores and identity in the platform
    namespace, and a Job of the runtime image running `knowledge-sync` on the revision's artifact.

    The Job runs in the platform namespace, not in the tenants': the artifact holds every tenant's
    files, and only the platform may read them all.
    """
    secret = _secret(_platform_meta(settings, RUNTIME_SECRET), settings.stores.secret_data())
    account: Manifest = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _platform_meta(settings, KNOWLEDGE_SERVICE_ACCOUNT),
        "automountServiceAccountToken": False,
    }
    children = [secret, account]
    labels = {**MANAGED_BY, KNOWLEDGE_SYNC_LABEL: "true"}
    volumes: list[Manifest] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    mounts: list[Manifest] = [{"name": "tmp", "mountPath": TMP_DIR}]
    vault = settings.key_vault
    if vault is not None:
        account["metadata"]["annotations"] = {WORKLOAD_IDENTITY_CLIENT_ID: vault.client_id}
        labels[WORKLOAD_IDENTITY_USE] = "true"
        children.append(
            _secret_provider_class(
                _platform_meta(settings, KNOWLEDGE_SERVICE_ACCOUNT), vault, tool_secrets=[]
            )
        )
        volume, mount = _key_vault_volume(KNOWLEDGE_SERVICE_ACCOUNT)
        volumes.append(volume)
        mounts.append(mount)
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": KNOWLEDGE_SERVICE_ACCOUNT,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "fsGroup": RUNTIME_UID},
        "containers": [
            _runtime_container(
                settings,
                "knowledge-sync",
                args=["knowledge-sync", "--source", url, "--specs-dir", specs_dir],
                env=[{"name": ENV_OTEL_SERVICE_NAME, "value": "agentplane-knowledge-sync"}],
                resources={"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
                volumeMounts=mounts,
            )
        ],
        "volumes": volumes,
    }
    _place(pod, settings)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **_platform_meta(settings, knowledge_sync_job_name(revision), **{KNOWLEDGE_SYNC_LABEL: "true"}),
            "annotations": {REVISION_ANNOTATION: revision},
        },
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 1800,
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    return [*children, job]
