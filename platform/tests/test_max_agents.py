"""A tenant's `quotas.maxAgents`: one rule (`agentplane_platform.max_agents`) for the operator,
`validate` and `agentplane up`; here the rule and what `validate` reports with it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from agentplane_platform.api.v1alpha1 import Tenant
from agentplane_platform.max_agents import Candidate, admit, refusal
from agentplane_platform.specs import validate_paths

TENANT = """\
apiVersion: agentplane.io/v1alpha1
kind: Tenant
metadata: {name: quota}
spec:
  owners: [{name: ops@example.com}]
  allowedModels: [openai/gpt-4o-mini]
  quotas: {maxAgents: 2}
---
apiVersion: agentplane.io/v1alpha1
kind: Prompt
metadata: {name: p, namespace: tenant-quota}
spec: {version: 1, template: Be helpful.}
"""

AGENT = """\
apiVersion: agentplane.io/v1alpha1
kind: Agent
metadata:
  name: {name}
  namespace: tenant-quota
spec:
  model: {{name: openai/gpt-4o-mini}}
  prompt: {{name: p, version: 1}}
"""

NAMES = ("delta", "alpha", "charlie", "bravo")
"""Written in this order, one file each: a spec tree admits by name, not by file."""


def write_tree(root: Path) -> Path:
    """A Tenant allowing two Agents, and four of them, one file each."""
    tenant = root / "tenants" / "quota"
    (tenant / "agents").mkdir(parents=True)
    (tenant / "tenant.yaml").write_text(TENANT)
    for name in NAMES:
        (tenant / "agents" / f"{name}.yaml").write_text(AGENT.format(name=name))
    return root


def _tenant(limit: int) -> Tenant:
    return Tenant.model_validate(
        {
            "apiVersion": "agentplane.io/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": "quota"},
            "spec": {
                "owners": [{"name": "ops@example.com"}],
                "allowedModels": ["openai/gpt-4o-mini"],
                "quotas": {"maxAgents": limit},
            },
        }
    )


def test_the_oldest_are_admitted_then_by_name() -> None:
    tenant = _tenant(2)
    admission = admit(
        tenant,
        [
            Candidate.of("a-young", "2026-12-01T10:00:00Z"),
            Candidate.of("z-old", "2026-11-30T10:00:00Z"),
            Candidate.of("b-tie", "2026-12-01T09:00:00Z"),
            Candidate.of("a-tie", "2026-12-01T09:00:00Z"),
        ],
    )
    assert admission.admitted == ["z-old", "a-tie"]
    assert admission.refused == {"b-tie": refusal(tenant), "a-young": refusal(tenant)}


def test_without_timestamps_by_name_and_after_every_created_one() -> None:
    tenant = _tenant(2)
    assert admit(tenant, [Candidate(n) for n in NAMES]).admitted == ["alpha", "bravo"]
    created = Candidate("zulu", datetime(2026, 12, 1, tzinfo=UTC))
    admission = admit(tenant, [Candidate("alpha"), created, Candidate("bravo")])
    assert admission.admitted == ["zulu", "alpha"]
    assert list(admission.refused) == ["bravo"]


def test_within_the_limit_all_are_admitted_and_a_zero_limit_admits_none() -> None:
    assert admit(_tenant(5), [Candidate(n) for n in NAMES]).refused == {}
    assert admit(_tenant(0), [Candidate(n) for n in NAMES]).admitted == []


def test_refusal_says_why_and_what_to_do() -> None:
    assert refusal(_tenant(2)) == (
        "Tenant 'quota' allows 2 agent(s); this one is beyond it (agents are admitted oldest first, "
        "then by name; raise quotas.maxAgents or remove an agent)"
    )


def test_validate_reports_each_agent_beyond_the_limit_at_its_own_file(tmp_path: Path) -> None:
    report = validate_paths([write_tree(tmp_path)])
    agents = tmp_path / "tenants" / "quota" / "agents"
    assert [p.format() for p in report.problems] == [
        f"{agents / name}.yaml:4:3: Agent/{name}: metadata.name: {refusal(_tenant(2))}"
        for name in ("charlie", "delta")
    ]
    assert set(report.specs.beyond_max_agents()) == {("tenant-quota", "charlie"), ("tenant-quota", "delta")}
