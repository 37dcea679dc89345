"""The pure builders: deterministic manifests with the fields production relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentplane_operator.builders import (
    CONFIG_HASH_ANNOTATION,
    BuildSettings,
    build_agent_children,
    build_agent_deployment,
    build_tenant_children,
)
from agentplane_platform.api.v1alpha1 import Agent
from agentplane_platform.config import AgentConfig, resolve_agent
from agentplane_platform.specs import SpecSet, validate_paths

REPO = Path(__file__).resolve().parents[2]
SETTINGS = BuildSettings(runtime_image="registry.example/agentplane/runtime:1.2.3")


@pytest.fixture(scope="module")
def specs() -> SpecSet:
    report = validate_paths([REPO / "specs" / "tenants"])
    assert report.ok
    return report.specs


def _config(specs: SpecSet, namespace: str, name: str) -> tuple[Agent, AgentConfig]:
    agent = specs.agents[(namespace, name)].resource
    tenant = specs.tenant_of(namespace)
    assert tenant is not None
    prompts = specs.prompts_in(namespace)
    tools = specs.tools_in(namespace)
    return agent, resolve_agent(agent, tenant.resource, prompts, tools)


def test_tenant_children(specs: SpecSet) -> None:
    children = build_tenant_children(specs.tenants["acme"].resource, SETTINGS)
    kinds = [c["kind"] for c in children]
    assert kinds == [
        "Namespace",
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
        "NetworkPolicy",
        "ServiceAccount",
        "RoleBinding",
    ]
    namespace, quota = children[0], children[1]
    assert namespace["metadata"]["name"] == "tenant-acme"
    assert namespace["metadata"]["labels"]["agentplane.io/tier"] == "premium"
    assert quota["spec"]["hard"] == {
        "requests.cpu": "16",
        "requests.memory": "32Gi",
        "limits.memory": "32Gi",
        "pods": "60",
    }
    deny = children[3]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    allow = children[4]
    assert allow["metadata"]["annotations"]["agentplane.io/egress-hosts"] == (
        "orders.acme.example,docs-mcp.acme.example,*.openai.azure.com"
    )
    binding = children[6]
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "acme-support-platform"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dana.lee@acme.example"},
    ]
    assert build_tenant_children(specs.tenants["acme"].resource, SETTINGS) == children


def test_autoscaled_agent_gets_hpa_and_pdb_but_no_replicas(specs: SpecSet) -> None:
    agent, config = _config(specs, "tenant-acme", "support-bot")
    children = build_agent_children(agent, config, SETTINGS)
    assert [c["kind"] for c in children] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    deployment = children[1]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = children[3]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    config_map = children[0]
    assert AgentConfig.model_validate_json(config_map["data"]["agent.json"]) == config


def test_single_replica_agent_has_neither_hpa_nor_pdb(specs: SpecSet) -> None:
    agent, config = _config(specs, "tenant-acme", "legacy-support-bot")
    kinds = [c["kind"] for c in build_agent_children(agent, config, SETTINGS)]
    assert kinds == ["ConfigMap", "Deployment", "Service"]


def test_deployment_is_hardened_and_rolls_with_the_config(specs: SpecSet) -> None:
    agent, config = _config(specs, "tenant-acme", "support-bot")
    deployment = build_agent_deployment(agent, config, SETTINGS)
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example/agentplane/runtime:1.2.3"
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= container.keys()
    assert pod["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == config.hash()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/run/agentplane/secrets/order-lookup" in mounts, (
        "the http tool's Kubernetes Secret is mounted"
    )
    assert "/var/run/agentplane/secrets/product-docs" not in mounts, (
        "Key Vault secrets come through the CSI driver"
    )

    _, legacy = _config(specs, "tenant-acme", "legacy-support-bot")
    other = build_agent_deployment(agent, legacy, SETTINGS)
    assert other["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] != config.hash()
