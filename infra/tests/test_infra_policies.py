"""The admission policies under Pulumi's mocks: every policy and binding of `policies/`, and the
TierLimits of the stack's `policyEnvironment`, after the CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_mocks import REPO, Registered, StackRun, run_stack

from agentplane_infra.manifests import object_key

STACKS = ("dev", "prod")
CRD = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"
ADMISSION = "kubernetes:admissionregistration.k8s.io/v1:"
RECEIVERS = {"agentplane:alertReceivers": {"page": "https://hooks.example/page"}}
"""prod refuses to run without a page receiver."""


def _objects(*paths: Path) -> dict[str, dict[str, Any]]:
    """`object_key` -> object, for every document of the YAML files."""
    return {object_key(doc): doc for path in paths for doc in yaml.safe_load_all(path.read_text()) if doc}


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


def _applied(run: StackRun) -> dict[str, Registered]:
    """`object_key` -> resource, for what the policies component applied."""
    return {object_key(r.plain): r for r in run.mocks.resources if r.name.startswith("policies-")}


def _stack_environment(stack: str) -> str:
    document = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
    environment: str = document["config"]["agentplane:policyEnvironment"]
    return environment


@pytest.fixture(scope="module", params=STACKS)
def run(request: pytest.FixtureRequest) -> StackRun:
    return run_stack(request.param, secret_config=RECEIVERS)


def test_each_stack_names_an_environment_of_policies_params() -> None:
    environments = sorted(p.name for p in (REPO / "policies" / "params").iterdir() if p.is_dir())
    assert {_stack_environment(stack) for stack in STACKS} == {"dev", "prod"} <= set(environments)


def test_the_policies_and_the_stacks_params_are_applied(run: StackRun) -> None:
    policies = REPO / "policies"
    environment = _stack_environment(run.stack)
    expected = _objects(*_files(policies), *_files(policies / "params" / environment))
    kinds = {doc["kind"] for doc in expected.values()}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "TierLimits"} <= kinds
    applied = _applied(run)
    assert set(applied) == set(expected)
    for key, resource in applied.items():
        assert resource.plain["metadata"] == expected[key]["metadata"], key
        fields = {k: v for k, v in expected[key].items() if k not in ("apiVersion", "kind", "metadata")}
        assert {k: resource.plain[k] for k in fields} == fields, key


def _hermetic_root(tmp_path: Path, policies: dict[str, Any]) -> Path:
    """A checkout whose `policies/` is `policies` (relative path -> YAML documents), the rest the repo's."""
    for part in ("specs", "operator", "dashboards"):
        (tmp_path / part).symlink_to(REPO / part)
    for relative, documents in policies.items():
        path = tmp_path / "policies" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump_all(documents))
    return tmp_path


POLICY = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "agents-per-tier"},
    "spec": {
        "paramKind": {"apiVersion": "agentplane.io/v1alpha1", "kind": "TierLimits"},
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": ["agentplane.io"],
                    "apiVersions": ["v1alpha1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["tenants"],
                }
            ]
        },
        "validations": [{"expression": "object.spec.quotas.maxAgents <= params.spec.maxAgents"}],
    },
}
BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "agents-per-tier-free"},
    "spec": {
        "policyName": "agents-per-tier",
        "validationActions": ["Deny"],
        "paramRef": {"name": "free", "parameterNotFoundAction": "Deny"},
    },
}


def _limits(name: str, max_agents: int) -> dict[str, Any]:
    return {
        "apiVersion": "agentplane.io/v1alpha1",
        "kind": "TierLimits",
        "metadata": {"name": name},
        "spec": {"maxAgents": max_agents},
    }


def test_the_environment_chooses_the_params_and_bindings_wait_for_them(tmp_path: Path) -> None:
    root = _hermetic_root(
        tmp_path,
        {
            "agents-per-tier.yaml": [POLICY, BINDING],
            "params/dev/limits.yaml": [_limits("free", 50), _limits("scratch", 1)],
            "params/prod/limits.yaml": [_limits("free", 3)],
            "tests/agents-per-tier.yaml": [{"policy": "agents-per-tier", "cases": []}],
        },
    )
    run = run_stack("dev", root=root, config={"agentplane:policyEnvironment": "prod"})
    applied = _applied(run)
    assert set(applied) == {
        "ValidatingAdmissionPolicy/agents-per-tier",
        "ValidatingAdmissionPolicyBinding/agents-per-tier-free",
        "TierLimits/free",
    }
    limits = applied["TierLimits/free"]
    assert limits.type == "kubernetes:agentplane.io/v1alpha1:TierLimits"
    assert limits.plain["spec"] == {"maxAgents": 3}
    binding = applied["ValidatingAdmissionPolicyBinding/agents-per-tier-free"]
    assert binding.type == f"{ADMISSION}ValidatingAdmissionPolicyBinding"
    assert run.mocks.waits_for(binding, limits)
    assert run.mocks.waits_for(binding, applied["ValidatingAdmissionPolicy/agents-per-tier"])
    # Parameters need their CRD (specs/crds/ holds TierLimits'): the whole component waits for the CRDs.
    crds = [r for r in run.mocks.of_type(CRD) if r.name.startswith("crds-")]
    assert crds
    for resource in applied.values():
        assert all(run.mocks.waits_for(resource, crd) for crd in crds), resource.name

    dev = _applied(run_stack("dev", root=root, config={"agentplane:policyEnvironment": "dev"}))
    assert dev["TierLimits/free"].plain["spec"] == {"maxAgents": 50}
    assert "TierLimits/scratch" in dev


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "staging",
            r"agentplane:policyEnvironment 'staging' in Pulumi\.dev\.yaml is not a folder of "
            r"policies/params/ \(one of: dev, prod\)",
        ),
        (
            "",
            r"agentplane:policyEnvironment is not set in Pulumi\.dev\.yaml: set it to the folder of "
            r"policies/params/ whose TierLimits the admission policies use in this stack \(one of: dev, prod\)",
        ),
    ],
)
def test_an_unknown_or_missing_environment_is_refused(value: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        run_stack("dev", config={"agentplane:policyEnvironment": value})


def test_a_policies_file_holding_something_else_is_refused(tmp_path: Path) -> None:
    stray = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "default"}}
    root = _hermetic_root(
        tmp_path, {"agents-per-tier.yaml": [POLICY, stray], "params/dev/limits.yaml": [_limits("free", 1)]}
    )
    with pytest.raises(Exception, match=r"v1 ConfigMap x is not a ValidatingAdmissionPolicy or binding"):
        run_stack("dev", root=root, config={"agentplane:policyEnvironment": "dev"})
