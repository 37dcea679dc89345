"""Qdrant, the vector store, from its official Helm chart."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_kubernetes as k8s

from agentplane_infra.config import QdrantConfig
from agentplane_infra.manifests import PLATFORM_NAMESPACE

NAMESPACE = PLATFORM_NAMESPACE
"""Qdrant lives with the platform: tenant network policies allow egress to this namespace."""
RELEASE = "qdrant"
HTTP_PORT = 6333
URL = f"http://{RELEASE}.{NAMESPACE}.svc.cluster.local:{HTTP_PORT}"
"""The in-cluster HTTP URL of the Qdrant service (the chart names it after the release)."""


class QdrantArgs(TypedDict):
    qdrant: QdrantConfig
    api_key: pulumi.Input[str]


class Qdrant(pulumi.ComponentResource):
    """Qdrant in the platform namespace (which the operator's manifests create: depend on them)."""

    def __init__(self, name: str, args: QdrantArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:qdrant:Qdrant", name, None, opts)
        cfg = args["qdrant"]
        k8s.helm.v3.Release(
            f"{name}-release",
            name=RELEASE,
            namespace=NAMESPACE,
            chart="qdrant",
            version=cfg.chart.version,
            repository_opts={"repo": cfg.chart.repository},
            values={
                "replicaCount": cfg.replicas,
                "apiKey": pulumi.Output.secret(args["api_key"]),
                "config": {"cluster": {"enabled": cfg.replicas > 1}},
                "persistence": {"size": cfg.storage_size, "storageClassName": cfg.storage_class},
                "metrics": {"serviceMonitor": {"enabled": True}},
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({})
