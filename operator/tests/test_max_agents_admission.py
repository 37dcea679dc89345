"""The operator admits a tenant's Agents under `quotas.maxAgents` by the platform's rule
(`agentplane_platform.max_agents`): the same split as `validate` for the same tree, then by age."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from test_max_agents import write_tree

from agentplane_operator.kube import Manifest
from agentplane_operator.state import Key, Views
from agentplane_platform.api.v1alpha1 import Tenant
from agentplane_platform.max_agents import refusal
from agentplane_platform.specs import SpecSet, validate_paths

NAMESPACE = "tenant-quota"


def _views(tenant: Tenant, agents: Mapping[str, str]) -> Views:
    """The operator's indexes holding `tenant` and its Agents (name -> creationTimestamp)."""
    manifests: dict[Key, Iterable[Manifest]] = {
        (NAMESPACE, name): [
            {"metadata": {"name": name, "namespace": NAMESPACE, "creationTimestamp": created}, "spec": {}}
        ]
        for name, created in agents.items()
    }
    return Views(
        tenants={tenant.name: [tenant]},
        prompts={},
        tools={},
        agents=manifests,
        dependents={("tenant", "", tenant.name): list(manifests)},
    )


def _tree(tmp_path: Path) -> SpecSet:
    report = validate_paths([write_tree(tmp_path)])
    return report.specs


def test_a_tree_applied_at_once_is_split_as_validate_splits_it(tmp_path: Path) -> None:
    specs = _tree(tmp_path)
    tenant = specs.tenants["quota"].resource
    names = [name for _, name in specs.agents]
    # applied in one go (kubectl apply, a Flux revision): the same second for every Agent
    views = _views(tenant, dict.fromkeys(names, "2026-12-01T02:00:00Z"))
    admission = views.admission(tenant)
    beyond = specs.beyond_max_agents()
    assert admission.admitted == ["alpha", "bravo"]
    assert {(NAMESPACE, name) for name in admission.refused} == set(beyond)
    for key, problem in beyond.items():
        assert admission.refused[key[1]] == problem.message == refusal(tenant)


def test_in_a_cluster_the_oldest_are_admitted(tmp_path: Path) -> None:
    tenant = _tree(tmp_path).tenants["quota"].resource
    created = {
        "delta": "2026-11-01T00:00:00Z",
        "charlie": "2026-11-02T00:00:00Z",
        "alpha": "2026-11-03T00:00:00Z",
        "bravo": "2026-11-03T00:00:00Z",
    }
    views = _views(tenant, created)
    assert [a["metadata"]["name"] for a in views.agents_in(NAMESPACE)] == [
        "delta",
        "charlie",
        "alpha",
        "bravo",
    ]
    admission = views.admission(tenant)
    assert admission.admitted == ["delta", "charlie"]
    assert list(admission.refused) == ["alpha", "bravo"]
