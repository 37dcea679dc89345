"""The platform's admission policies, applied from `policies/`: what `agentplane validate` checks
before merge, the API server enforces at admission.

Every ValidatingAdmissionPolicy and binding of `policies/*.yaml`, and the parameter objects
(`TierLimits`) of one environment, `policies/params/<environment>/*.yaml`. The policies'
`policies/tests/` cases are not objects and are not applied.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pulumi

from agentplane_infra.kube import apply_manifest, resource_name
from agentplane_infra.manifests import Manifest, ManifestError, load_manifests, yaml_files
from agentplane_platform.policies import policy_environments

ADMISSION = "admissionregistration.k8s.io/v1"
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


class PoliciesArgs(TypedDict):
    directory: Path
    """`policies/`: its `*.yaml` (policies and bindings) and `params/<environment>/*.yaml`."""
    environment: str
    """Which `params/` folder holds this stack's parameters (one of `policy_environments`)."""


class Policies(pulumi.ComponentResource):
    policies: list[str]
    """Names of the ValidatingAdmissionPolicies applied."""
    bindings: list[str]
    """Names of their bindings."""
    params: list[str]
    """`Kind/name` of the parameter objects applied."""

    def __init__(self, name: str, args: PoliciesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:policies:Policies", name, None, opts)
        directory, environment = args["directory"], args["environment"]
        if environment not in policy_environments(directory):
            raise ManifestError(
                f"{directory / 'params' / environment}: no such policy environment "
                f"(environments: {', '.join(policy_environments(directory)) or 'none'})"
            )
        child = pulumi.ResourceOptions(parent=self)

        # Parameters first: a binding whose parameter is missing denies what it matches.
        self.params = []
        params: list[pulumi.Resource] = []
        for obj in load_manifests(yaml_files(directory / "params" / environment)):
            if obj["kind"] in POLICY_KINDS or obj["apiVersion"] == ADMISSION:
                raise ManifestError(
                    f"{directory / 'params' / environment}: {obj['kind']} {obj['metadata'].get('name')} "
                    "is not a parameter object (policies and bindings go in the policies directory)"
                )
            self.params.append(f"{obj['kind']}/{obj['metadata']['name']}")
            params.append(apply_manifest(resource_name(name, obj), obj, child))

        self.policies, self.bindings = [], []
        policies: list[pulumi.Resource] = []
        bindings: list[tuple[str, Manifest]] = []
        for obj in load_manifests(yaml_files(directory)):
            if obj["apiVersion"] != ADMISSION or obj["kind"] not in POLICY_KINDS:
                raise ManifestError(
                    f"{directory}: {obj['apiVersion']} {obj['kind']} {obj['metadata'].get('name')} is not "
                    f"a ValidatingAdmissionPolicy or binding ({ADMISSION})"
                )
            if obj["kind"] == "ValidatingAdmissionPolicy":
                self.policies.append(obj["metadata"]["name"])
                policies.append(apply_manifest(resource_name(name, obj), obj, child))
            else:
                self.bindings.append(obj["metadata"]["name"])
                bindings.append((resource_name(name, obj), obj))
        # A binding enforces as soon as it exists: after its policy and the parameters it refers to.
        after = pulumi.ResourceOptions(parent=self, depends_on=[*policies, *params])
        for resource, obj in bindings:
            apply_manifest(resource, obj, after)
        self.register_outputs({"policies": self.policies, "bindings": self.bindings, "params": self.params})
