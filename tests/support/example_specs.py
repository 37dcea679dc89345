"""The example specs (`specs/tenants/`) as the tests use them: the `specs` fixture (registered by the
root conftest), and an example agent resolved into its config as the operator resolves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentplane_platform.api.v1alpha1 import Agent, Tenant
from agentplane_platform.config import AgentConfig, resolve_agent
from agentplane_platform.specs import SpecSet, validate_paths

EXAMPLE_TENANTS = Path(__file__).resolve().parents[2] / "specs" / "tenants"


def load_example_specs() -> SpecSet:
    """The example tenants' specs, which must be valid."""
    report = validate_paths([EXAMPLE_TENANTS])
    assert report.ok, [problem.format() for problem in report.problems]
    return report.specs


@pytest.fixture(scope="module")
def specs() -> SpecSet:
    """The example specs, loaded once per test module."""
    return load_example_specs()


def _resolve(
    specs: SpecSet, namespace: str, name: str, tenant: Tenant | None, changes: dict[str, object]
) -> tuple[Agent, AgentConfig]:
    agent = specs.agents[(namespace, name)].resource
    if changes:
        agent = agent.model_copy(update={"spec": agent.spec.model_copy(update=changes)})
    if tenant is None:
        loaded = specs.tenant_of(namespace)
        assert loaded is not None, f"no example tenant owns {namespace}"
        tenant = loaded.resource
    return agent, resolve_agent(agent, tenant, specs.prompts_in(namespace), specs.tools_in(namespace))


def example_agent_and_config(
    specs: SpecSet, namespace: str, name: str, *, tenant: Tenant | None = None
) -> tuple[Agent, AgentConfig]:
    """An example Agent and its resolved config, in its own tenant or in `tenant`."""
    return _resolve(specs, namespace, name, tenant, {})


def example_config(specs: SpecSet, namespace: str, name: str, **changes: object) -> AgentConfig:
    """An example Agent's resolved config, its spec updated with `changes`."""
    return _resolve(specs, namespace, name, None, changes)[1]
