"""Pure builders: spec objects in, Kubernetes manifests out. No I/O, no clients, no clocks.

Every function returns a complete desired object for server-side apply under the operator's
field manager; running them twice on the same input returns equal dicts, which is what makes a
second reconcile write nothing.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from agentplane_platform.api.v1alpha1 import Agent, Prompt, Tenant, tenant_of
from agentplane_platform.config import AgentConfig, prompt_version_hash

Manifest = dict[str, Any]

GROUP = "agentplane.io"
MANAGED_BY = {"app.kubernetes.io/managed-by": "agentplane-operator"}
TENANT_LABEL = f"{GROUP}/tenant"
AGENT_LABEL = f"{GROUP}/agent"
PROMPT_LABEL = f"{GROUP}/prompt"
PROMPT_HASH_ANNOTATION = f"{GROUP}/prompt-hash"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
CONFIG_FILE = "agent.json"
CONFIG_MOUNT = "/etc/agentplane"
SECRETS_MOUNT = "/var/run/agentplane/secrets"
TENANT_EDITOR_ROLE = "agentplane-tenant-editor"
RUNTIME_PORT = 8080


class BuildSettings(BaseModel):
    """What the builders need to know about the platform (from the operator's settings)."""

    model_config = ConfigDict(frozen=True)

    runtime_image: str = "ghcr.io/agentplane/runtime:latest"
    image_pull_policy: str = "IfNotPresent"
    platform_namespace: str = "agentplane-system"
    """Namespace of the platform services (operator, Qdrant, Redis proxies) tenants may reach."""
    runtime_secret: str = "agentplane-runtime"
    """Secret in each tenant namespace with the runtime's own credentials (database, Redis, providers)."""


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
            "labels": _labels(tenant.name, **{f"{GROUP}/tier": tenant.spec.tier}),
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


def build_network_policies(tenant: Tenant, settings: BuildSettings) -> list[Manifest]:
    """Default deny, then DNS, the platform's services, same-namespace traffic and the declared egress.

    NetworkPolicy cannot name hosts: CIDR rules become ipBlocks, host rules are allowed on their
    ports and listed in an annotation for an FQDN-aware enforcer (Cilium, Calico, an egress proxy).
    """
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _tenant_meta(tenant, "default-deny"),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }
    platform = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.platform_namespace}}
    }
    egress: list[dict[str, Any]] = [
        {
            "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        {"to": [platform]},
        {"to": [{"podSelector": {}}]},
    ]
    for rule in tenant.spec.egress:
        ports = [{"protocol": "TCP", "port": port} for port in rule.ports]
        if rule.cidr is not None:
            egress.append({"to": [{"ipBlock": {"cidr": rule.cidr}}], "ports": ports})
        else:
            egress.append({"ports": ports})
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
            "ingress": [{"from": [{"podSelector": {}}, platform]}],
            "egress": egress,
        },
    }
    return [deny, allow]


def build_service_account(tenant: Tenant) -> Manifest:
    """The identity the tenant's agent pods run as."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _tenant_meta(tenant, "agentplane-agent"),
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


def build_tenant_children(tenant: Tenant, settings: BuildSettings) -> list[Manifest]:
    """Every namespaced child of a Tenant, in apply order (namespace first)."""
    return [
        build_namespace(tenant),
        build_resource_quota(tenant),
        build_limit_range(tenant),
        *build_network_policies(tenant, settings),
        build_service_account(tenant),
        build_owner_role_binding(tenant),
    ]


def _agent_labels(config: AgentConfig) -> dict[str, str]:
    return _labels(
        config.tenant, **{AGENT_LABEL: config.agent, "app.kubernetes.io/name": "agentplane-runtime"}
    )


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
    """Kubernetes Secrets the tools reference, mounted read-only under SECRETS_MOUNT/<tool>."""
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
        mounts.append({"name": volume, "mountPath": f"{SECRETS_MOUNT}/{tool.name}", "readOnly": True})
    return volumes, mounts


def build_agent_deployment(agent: Agent, config: AgentConfig, settings: BuildSettings) -> Manifest:
    """The runtime Deployment; its pod template carries the config hash, so a new config rolls it."""
    runtime = agent.spec.runtime
    labels = _agent_labels(config)
    selector = {TENANT_LABEL: config.tenant, AGENT_LABEL: config.agent}
    secret_volumes, secret_mounts = _secret_volumes(config)
    resources: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        values = getattr(runtime.resources, section).model_dump(exclude_none=True)
        if values:
            resources[section] = values
    probe_http = {"port": "http"}
    container = {
        "name": "runtime",
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["--config", f"{CONFIG_MOUNT}/{CONFIG_FILE}"],
        "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "envFrom": [{"secretRef": {"name": settings.runtime_secret, "optional": True}}],
        "env": [
            {"name": "AGENTPLANE_CONFIG", "value": f"{CONFIG_MOUNT}/{CONFIG_FILE}"},
            {"name": "OTEL_SERVICE_NAME", "value": f"agent-{config.agent}"},
            {
                "name": "OTEL_RESOURCE_ATTRIBUTES",
                "value": f"agentplane.tenant={config.tenant},agentplane.agent={config.agent}",
            },
        ],
        "resources": resources,
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *secret_mounts,
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz/startup", **probe_http},
            "periodSeconds": 2,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz/live", **probe_http},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", **probe_http},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": labels, "annotations": {CONFIG_HASH_ANNOTATION: config.hash()}},
            "spec": {
                "serviceAccountName": "agentplane-agent",
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "fsGroup": 10001},
                "containers": [container],
                "volumes": [
                    {"name": "config", "configMap": {"name": f"agent-{config.agent}"}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    *secret_volumes,
                ],
            },
        },
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
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def agent_endpoint(config: AgentConfig) -> str:
    """In-cluster base URL of the agent's API."""
    return f"http://{config.agent}.{config.namespace}.svc.cluster.local/v1"


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
    for optional in (build_agent_hpa(agent, config), build_agent_pdb(agent, config)):
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
