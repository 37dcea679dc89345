"""The platform's CustomResourceDefinitions, applied from the generated files in `specs/crds/`."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pulumi

from agentplane_infra.kube import apply_manifest
from agentplane_infra.manifests import ManifestError, load_manifests, yaml_files


class CrdsArgs(TypedDict):
    directory: Path
    """`specs/crds/`: every YAML file there is applied, nothing else."""


class Crds(pulumi.ComponentResource):
    names: list[str]
    """Names of the CRDs applied, in file order."""
    resources: list[pulumi.Resource]

    def __init__(self, name: str, args: CrdsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:crds:Crds", name, None, opts)
        self.names = []
        self.resources = []
        for obj in load_manifests(yaml_files(args["directory"])):
            if obj["kind"] != "CustomResourceDefinition":
                raise ManifestError(
                    f"{args['directory']}: {obj['kind']} {obj['metadata'].get('name')} is not a CRD"
                )
            crd_name: str = obj["metadata"]["name"]
            self.names.append(crd_name)
            self.resources.append(
                apply_manifest(f"{name}-{crd_name}", obj, pulumi.ResourceOptions(parent=self))
            )
        self.register_outputs({"names": self.names})
