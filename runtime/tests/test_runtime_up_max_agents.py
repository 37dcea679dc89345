"""`agentplane up` and a tenant's `quotas.maxAgents`: the Agents the operator would admit are served,
the others are listed with the operator's reason; the split is the one `validate` reports."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from test_max_agents import AGENT, write_tree

from agentplane_platform.max_agents import refusal
from agentplane_platform.specs import validate_paths
from agentplane_runtime.local_specs import load_specs
from support.agentplane_up import KEYWORDS_ONLY, start

REFUSED = ("charlie", "delta")


def test_the_admitted_agents_are_served_and_the_others_listed_with_the_operators_reason(
    tmp_path: Path,
) -> None:
    tree = write_tree(tmp_path)
    report = validate_paths([tree])
    loaded = load_specs(tree)
    assert loaded.ok, loaded.problems([tree])
    assert [(c.tenant, c.agent) for c in loaded.agents] == [("quota", "alpha"), ("quota", "bravo")]
    tenant = report.specs.tenants["quota"].resource
    agents = tree / "tenants" / "quota" / "agents"
    assert loaded.errors == {
        ("quota", name): f"{agents / name}.yaml: Agent tenant-quota/{name}: {refusal(tenant)}"
        for name in REFUSED
    }
    assert loaded.refused == set(loaded.errors)
    # the verdict `validate` reports, Agent by Agent
    assert {name for _, name in report.specs.beyond_max_agents()} == set(REFUSED)
    assert {p.name for p in report.errors} == set(REFUSED)


def test_another_error_still_refuses_the_tree_and_the_refused_are_listed(tmp_path: Path) -> None:
    tree = write_tree(tmp_path)
    broken = tree / "tenants" / "quota" / "agents" / "alpha.yaml"
    broken.write_text(AGENT.format(name="alpha").replace("openai/gpt-4o-mini", "openai/gpt-9"))
    loaded = load_specs(tree)
    assert not loaded.ok
    assert loaded.agents == []
    problems = loaded.problems([tree])
    assert "model 'openai/gpt-9' is not allowed" in problems
    for name in REFUSED:
        assert (
            f"Agent tenant-quota/{name}: {refusal(loaded.report.specs.tenants['quota'].resource)}" in problems
        )


def test_up_starts_serving_the_admitted_agents(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "specs")
    up = start(tree, tmp_path / "state", tmp_path / "up.log", **KEYWORDS_ONLY)
    try:
        text = up.output()
        for name in REFUSED:
            assert f"specs: ! quota/{name} not served: " in text
            assert f"{name}.yaml: Agent tenant-quota/{name}: Tenant 'quota' allows 2 agent(s)" in text
        reply = up.client("quota", "alpha").chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "hello"}]
        )
        assert (reply.choices[0].message.content or "").startswith("[offline model]")
        with pytest.raises(openai.NotFoundError):
            up.client("quota", "charlie").chat.completions.create(
                model="charlie", messages=[{"role": "user", "content": "hello"}]
            )
    finally:
        assert up.stop() == 0
