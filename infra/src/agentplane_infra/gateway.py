"""The gateway agents are reached through: Traefik, as the Kubernetes Gateway API implementation.

The Gateway API CRDs (standard channel) are applied here from the Gateway API release the stack
pins: the Traefik chart stopped shipping them (chart 40.2.0), and Helm never upgrades CRDs it
installed anyway. Traefik runs with only its Gateway API provider (no Ingress, no IngressRoute). The
GatewayClass and the one Gateway are ours, not the chart's, so that the Gateway admits routes
exactly from tenant namespaces: the operator gives every Agent an HTTPRoute on it.
"""

from __future__ import annotations

from typing import Any, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from agentplane_infra.config import GatewayConfig
from agentplane_infra.kube import apply_manifest, resource_name
from agentplane_infra.manifests import Manifest
from agentplane_platform.api.v1alpha1 import GROUP

NAMESPACE = "agentplane-gateway"
"""Tenant NetworkPolicies admit the agents' API port from this namespace (the operator's
`GATEWAY_NAMESPACE`)."""
RELEASE = "traefik"
GATEWAY = "agentplane"
GATEWAY_CLASS = "agentplane"
CONTROLLER = "traefik.io/gateway-controller"
HTTP_PORT = 8000
"""Traefik's `web` entry point (its Service exposes it on 80): a listener's port is an entry point's."""
HTTPS_PORT = 8443
"""Traefik's `websecure` entry point (Service port 443)."""
TENANT_LABEL = f"{GROUP}/tenant"
"""The label the operator puts on every tenant namespace."""
GATEWAY_API_CRDS = (
    "https://github.com/kubernetes-sigs/gateway-api/releases/download/{version}/standard-install.yaml"
)
AZURE_DNS_LABEL = "service.beta.kubernetes.io/azure-dns-label-name"

_API = "gateway.networking.k8s.io/v1"


def gateway_class_manifest() -> Manifest:
    return {
        "apiVersion": _API,
        "kind": "GatewayClass",
        "metadata": {"name": GATEWAY_CLASS},
        "spec": {"controllerName": CONTROLLER},
    }


def gateway_manifest(cfg: GatewayConfig) -> Manifest:
    """The Gateway: HTTP (and HTTPS with a certificate), HTTPRoutes from tenant namespaces only."""
    allowed = {
        "kinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
        "namespaces": {
            "from": "Selector",
            "selector": {"matchExpressions": [{"key": TENANT_LABEL, "operator": "Exists"}]},
        },
    }
    host = {"hostname": cfg.hostname} if cfg.hostname else {}
    listeners: list[dict[str, Any]] = [
        {"name": "http", "port": HTTP_PORT, "protocol": "HTTP", **host, "allowedRoutes": allowed}
    ]
    if cfg.tls_secret_name:
        listeners.append(
            {
                "name": "https",
                "port": HTTPS_PORT,
                "protocol": "HTTPS",
                **host,
                "tls": {
                    "mode": "Terminate",
                    "certificateRefs": [{"kind": "Secret", "name": cfg.tls_secret_name}],
                },
                "allowedRoutes": allowed,
            }
        )
    return {
        "apiVersion": _API,
        "kind": "Gateway",
        "metadata": {"name": GATEWAY, "namespace": NAMESPACE},
        "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": listeners},
    }


def traefik_values(cfg: GatewayConfig) -> dict[str, Any]:
    """The Traefik chart's values: the Gateway API provider alone, our GatewayClass and Gateway."""
    values: dict[str, Any] = {
        "deployment": {"replicas": cfg.replicas},
        "providers": {
            "kubernetesGateway": {"enabled": True},
            "kubernetesIngress": {"enabled": False},
            "kubernetesCRD": {"enabled": False},
        },
        "gateway": {"enabled": False},
        "gatewayClass": {"enabled": False},
        "ingressClass": {"enabled": False},
        "metrics": {"prometheus": {"service": {"enabled": True}, "serviceMonitor": {"enabled": True}}},
    }
    if cfg.replicas > 1:
        values["podDisruptionBudget"] = {"enabled": True, "maxUnavailable": 1}
    if cfg.dns_label:
        values["service"] = {"annotations": {AZURE_DNS_LABEL: cfg.dns_label}}
    return values


class GatewayArgs(TypedDict):
    gateway: GatewayConfig


class Gateway(pulumi.ComponentResource):
    """Needs the monitoring release (Traefik's ServiceMonitor): depend on it."""

    url: pulumi.Output[str]

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:gateway:Gateway", name, None, opts)
        cfg = args["gateway"]
        child = pulumi.ResourceOptions(parent=self)
        namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": NAMESPACE}, opts=child)
        crds = k8s.yaml.v2.ConfigFile(
            f"{name}-gateway-api",
            file=GATEWAY_API_CRDS.format(version=cfg.gateway_api_version),
            opts=child,
        )
        k8s.helm.v3.Release(
            f"{name}-release",
            name=RELEASE,
            namespace=NAMESPACE,
            chart="traefik",
            version=cfg.chart.version,
            repository_opts={"repo": cfg.chart.repository},
            values=traefik_values(cfg),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace, crds]),
        )
        after = pulumi.ResourceOptions(parent=self, depends_on=[namespace, crds])
        for obj in (gateway_class_manifest(), gateway_manifest(cfg)):
            apply_manifest(resource_name(name, obj), obj, after)
        self.url = pulumi.Output.from_input(cfg.url)
        self.register_outputs({"url": self.url})
