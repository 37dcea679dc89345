"""Turn a manifest dict into the matching pulumi-kubernetes resource."""

from __future__ import annotations

import importlib
import re
from typing import Any, cast

import pulumi
import pulumi_kubernetes as k8s

from agentplane_infra.manifests import Manifest

# API groups pulumi-kubernetes has typed resources for: group -> its module.
_TYPED_GROUPS = {
    "": "core",
    "admissionregistration.k8s.io": "admissionregistration",
    "apiextensions.k8s.io": "apiextensions",
    "apps": "apps",
    "autoscaling": "autoscaling",
    "batch": "batch",
    "coordination.k8s.io": "coordination",
    "discovery.k8s.io": "discovery",
    "networking.k8s.io": "networking",
    "policy": "policy",
    "rbac.authorization.k8s.io": "rbac",
    "scheduling.k8s.io": "scheduling",
    "storage.k8s.io": "storage",
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def resource_name(prefix: str, obj: Manifest) -> str:
    """A Pulumi name unique per object: `<prefix>-<kind>-[<namespace>-]<name>`."""
    meta = obj["metadata"]
    namespace = f"{meta['namespace']}-" if meta.get("namespace") else ""
    return f"{prefix}-{obj['kind'].lower()}-{namespace}{meta['name']}"


def apply_manifest(name: str, obj: Manifest, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """Declare one Kubernetes object: the typed class of its kind, or a CustomResource otherwise."""
    api_version: str = obj["apiVersion"]
    kind: str = obj["kind"]
    fields = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    group, _, version = api_version.rpartition("/")
    module_name = _TYPED_GROUPS.get(group)
    if module_name is not None:
        module = importlib.import_module(f"pulumi_kubernetes.{module_name}.{version}")
        cls = getattr(module, kind, None)
        if cls is not None:
            kwargs = {_snake(k): v for k, v in fields.items()}
            return cast(pulumi.CustomResource, cls(name, metadata=obj["metadata"], opts=opts, **kwargs))
    extra: dict[str, Any] = fields
    return k8s.apiextensions.CustomResource(
        name, api_version=api_version, kind=kind, metadata=obj["metadata"], opts=opts, **extra
    )
