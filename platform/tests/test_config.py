"""Resolving Agents into the config document the runtime serves."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agentplane_platform.api.v1alpha1 import Agent, McpTool, Tenant, ToolDiscovery, ToolStatus
from agentplane_platform.config import AgentConfig, ResolvedMcpTool, ResolveError, resolve_agent
from agentplane_platform.mcp import canonical_json, parameters_hash
from agentplane_platform.specs import SpecSet
from support.example_specs import example_config


def test_every_example_agent_resolves(specs: SpecSet) -> None:
    for namespace, name in specs.agents:
        config = example_config(specs, namespace, name)
        assert config.agent == name
        assert AgentConfig.model_validate_json(config.canonical_json()) == config


def test_support_bot_config(specs: SpecSet) -> None:
    config = example_config(specs, "tenant-acme", "support-bot")
    assert config.tenant == "acme"
    assert config.model.fallbacks == ["openai/gpt-4o-mini"]
    assert config.prompt.version == 2
    assert config.prompt.values == {"persona": "Ava", "product": "Acme Home", "max_sentences": "6"}
    assert [t.type for t in config.tools] == ["http", "mcp"]
    http = config.tools[0]
    assert http.function_name == "order_lookup"
    assert http.type == "http"
    assert http.auth is not None
    assert http.auth.secret.kubernetes is not None
    assert http.auth.secret.kubernetes.name == "orders-api"
    (kb,) = config.knowledge
    assert (kb.collection, kb.dimensions, kb.top_k) == ("acme--help-center", 1536, 6)
    assert config.quota.limits_key == "agentplane:quota:acme:limits"
    assert "orders.acme.example" in {rule.host for rule in config.egress}


def test_hash_is_stable_and_follows_the_pinned_version(specs: SpecSet) -> None:
    v2 = example_config(specs, "tenant-acme", "support-bot")
    assert v2.hash() == example_config(specs, "tenant-acme", "support-bot").hash()
    legacy = example_config(specs, "tenant-acme", "legacy-support-bot")
    assert legacy.prompt.version == 1
    assert legacy.prompt.hash != v2.prompt.hash
    agent: Agent = specs.agents[("tenant-acme", "support-bot")].resource
    bumped = agent.spec.prompt.model_copy(update={"version": 1})
    assert example_config(specs, "tenant-acme", "support-bot", prompt=bumped).hash() != v2.hash()


def test_a_copy_with_changes_hashes_its_own_content(specs: SpecSet) -> None:
    # the canonical form is kept once made: a changed copy must not inherit it (its pods would
    # never roll)
    config = example_config(specs, "tenant-acme", "support-bot")
    before = config.hash()
    changed = config.model_copy(update={"description": "another description"})
    assert changed.hash() != before
    assert json.loads(changed.canonical_json())["description"] == "another description"
    assert config.hash() == before
    assert config.model_copy().hash() == before


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"prompt": {"name": "nope", "version": 1}}, "PromptNotFound"),
        ({"prompt": {"name": "support", "version": 9}}, "PromptVersionNotFound"),
        ({"prompt": {"name": "support", "version": 2}}, "VariableMissing"),
        ({"tools": [{"name": "nope"}]}, "ToolNotFound"),
        ({"model": {"name": "anthropic/claude-3-opus"}}, "ModelNotAllowed"),
        ({"knowledge": [{"name": "wiki"}]}, "KnowledgeBaseNotFound"),
    ],
)
def test_resolve_errors_carry_condition_reasons(
    specs: SpecSet, change: dict[str, object], reason: str
) -> None:
    agent = specs.agents[("tenant-acme", "support-bot")].resource
    data = agent.model_dump(mode="json", exclude_none=True)
    data["spec"].update(change)
    broken = Agent.model_validate(data)
    tenant = specs.tenants["acme"].resource
    prompts = specs.prompts_in("tenant-acme")
    tools = specs.tools_in("tenant-acme")
    with pytest.raises(ResolveError) as error:
        resolve_agent(broken, tenant, prompts, tools)
    assert error.value.reason == reason


def test_tool_outside_allowed_tools(specs: SpecSet) -> None:
    tenant: Tenant = specs.tenants["acme"].resource
    narrowed = tenant.model_copy(
        update={"spec": tenant.spec.model_copy(update={"allowed_tools": ["calculator"]})}
    )
    agent = specs.agents[("tenant-acme", "support-bot")].resource
    prompts = specs.prompts_in("tenant-acme")
    tools = specs.tools_in("tenant-acme")
    with pytest.raises(ResolveError) as error:
        resolve_agent(agent, narrowed, prompts, tools)
    assert error.value.reason == "ToolNotAllowed"


def test_an_mcp_tool_without_parameters_resolves_only_with_its_discovered_schema(specs: SpecSet) -> None:
    agent = specs.agents[("tenant-acme", "support-bot")].resource
    tenant = specs.tenants["acme"].resource
    prompts = specs.prompts_in("tenant-acme")
    declared = specs.tools_in("tenant-acme")["product-docs"]
    spec = declared.spec
    assert isinstance(spec, McpTool)
    bare = declared.model_copy(update={"spec": spec.model_copy(update={"parameters": None})})
    tools = {**specs.tools_in("tenant-acme"), "product-docs": bare}
    with pytest.raises(ResolveError) as error:
        resolve_agent(agent, tenant, prompts, tools)
    assert error.value.reason == "ToolNotDiscovered"
    assert "'product-docs'" in error.value.message
    assert "search_manuals" in error.value.message

    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    found = ToolDiscovery(
        tool=spec.tool,
        url=spec.url,
        parameters=canonical_json(schema),
        parameters_hash=parameters_hash(schema),
        discovered_at=datetime(2026, 5, 1, tzinfo=UTC),
    )
    discovered = bare.model_copy(update={"status": ToolStatus(discovered=found)})
    config = resolve_agent(agent, tenant, prompts, {**tools, "product-docs": discovered})
    (mcp,) = [t for t in config.tools if isinstance(t, ResolvedMcpTool)]
    assert mcp.parameters == schema
    assert mcp.parameters_hash == parameters_hash(schema) == found.parameters_hash
    assert mcp.parameters_hash.startswith("sha256:")
    assert len(mcp.parameters_hash) == 71

    # a schema listed by another server (or for another tool name) is not this Tool's
    moved = discovered.model_copy(
        update={"spec": bare.spec.model_copy(update={"url": "https://other.acme.example/mcp"})}
    )
    with pytest.raises(ResolveError) as error:
        resolve_agent(agent, tenant, prompts, {**tools, "product-docs": moved})
    assert error.value.reason == "ToolNotDiscovered"

    # declared parameters win, and need no discovery
    config = resolve_agent(agent, tenant, prompts, specs.tools_in("tenant-acme"))
    (mcp,) = [t for t in config.tools if isinstance(t, ResolvedMcpTool)]
    assert mcp.parameters == spec.parameters
    assert mcp.parameters_hash is None
