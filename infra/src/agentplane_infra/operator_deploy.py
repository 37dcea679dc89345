"""The operator in the cluster: its own manifests from `operator/deploy/`, plus what only infra knows."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pulumi
import pulumi_kubernetes as k8s

from agentplane_infra.kube import apply_manifest, resource_name
from agentplane_infra.manifests import (
    PLATFORM_NAMESPACE,
    OperatorSettings,
    customize_operator,
    load_manifests,
    object_key,
    secret_provider_class,
    yaml_files,
)


class OperatorArgs(TypedDict):
    directory: Path
    """`operator/deploy/`: every YAML file directly there, sorted; absent or empty means nothing of
    the operator yet. (Its `monitoring/` needs the monitoring CRDs: the Monitoring component applies it.)"""
    settings: OperatorSettings


class Operator(pulumi.ComponentResource):
    objects: list[str]
    """`Kind/[namespace/]name` of every object applied."""
    namespace: pulumi.Resource
    """The platform namespace (from the manifests, or created here when they have none)."""

    def __init__(self, name: str, args: OperatorArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:operator:Operator", name, None, opts)
        settings = args["settings"]
        manifests = [
            customize_operator(obj, settings) for obj in load_manifests(yaml_files(args["directory"]))
        ]

        # Definitions first (namespaces, CRDs such as kopf's peering); everything else waits for them.
        first: list[pulumi.Resource] = []
        namespace: pulumi.Resource | None = None
        rest = []
        for obj in manifests:
            if obj["kind"] in ("Namespace", "CustomResourceDefinition"):
                resource = apply_manifest(resource_name(name, obj), obj, pulumi.ResourceOptions(parent=self))
                first.append(resource)
                if obj["kind"] == "Namespace" and obj["metadata"]["name"] == PLATFORM_NAMESPACE:
                    namespace = resource
            else:
                rest.append(obj)
        if namespace is None:
            namespace = k8s.core.v1.Namespace(
                f"{name}-namespace",
                metadata={"name": PLATFORM_NAMESPACE},
                opts=pulumi.ResourceOptions(parent=self),
            )
            first.append(namespace)
        self.namespace = namespace
        after = pulumi.ResourceOptions(parent=self, depends_on=first)
        spc = secret_provider_class(
            client_id=settings.client_id, vault_name=settings.key_vault_name, tenant_id=settings.tenant_id
        )
        for obj in [spc, *rest]:
            apply_manifest(resource_name(name, obj), obj, after)

        self.objects = [object_key(o) for o in manifests] + [object_key(spc)]
        self.register_outputs({"objects": self.objects})
