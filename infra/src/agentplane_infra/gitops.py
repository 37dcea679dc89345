"""GitOps bootstrap: Flux from its Helm chart, syncing this repository's specs into the cluster."""

from __future__ import annotations

from typing import Any, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from agentplane_infra.config import GitOpsConfig

NAMESPACE = "flux-system"
SOURCE = "agentplane"
SPECS_DIR = "specs"
"""Where `tenants/` is in the repository (the operator's knowledge sync reads it from the artifact)."""
# Only `specs/` is fetched; its generated CRDs and JSON Schemas are not Flux's to apply (Pulumi
# installs the CRDs together with the operator that understands them).
IGNORE = "/*\n!/specs/\n/specs/crds/\n/specs/schemas/\n"


class GitOpsArgs(TypedDict):
    gitops: GitOpsConfig


class GitOps(pulumi.ComponentResource):
    def __init__(self, name: str, args: GitOpsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:gitops:GitOps", name, None, opts)
        cfg = args["gitops"]
        child = pulumi.ResourceOptions(parent=self)
        namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata={"name": NAMESPACE}, opts=child)
        release = k8s.helm.v3.Release(
            f"{name}-flux",
            name="flux",
            namespace=NAMESPACE,
            chart="flux2",
            version=cfg.chart.version,
            repository_opts={"repo": cfg.chart.repository},
            values={
                # What syncing plain manifests from Git needs; no image automation, no Helm controller.
                "helmController": {"create": False},
                "imageAutomationController": {"create": False},
                "imageReflectionController": {"create": False},
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[namespace]),
        )
        after = pulumi.ResourceOptions(parent=self, depends_on=[release])
        source_spec: dict[str, Any] = {
            "url": cfg.repo_url,
            "ref": {"branch": cfg.branch},
            "interval": cfg.interval,
            "ignore": IGNORE,
        }
        if cfg.secret_name:
            source_spec["secretRef"] = {"name": cfg.secret_name}
        source = k8s.apiextensions.CustomResource(
            f"{name}-source",
            api_version="source.toolkit.fluxcd.io/v1",
            kind="GitRepository",
            metadata={"name": SOURCE, "namespace": NAMESPACE},
            spec=source_spec,
            opts=after,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-specs",
            api_version="kustomize.toolkit.fluxcd.io/v1",
            kind="Kustomization",
            metadata={"name": "agentplane-specs", "namespace": NAMESPACE},
            spec={
                "interval": cfg.interval,
                "path": cfg.path,
                "prune": True,
                "sourceRef": {"kind": "GitRepository", "name": SOURCE},
                "timeout": "2m",
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[release, source]),
        )
        self.register_outputs({})
