"""A Tenant's declared model prices (`spec.modelPrices`): validated as the API server does, and
carried into every one of its agents' configs for the runtime's price rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentplane_platform.api.v1alpha1 import Tenant
from agentplane_platform.api.v1alpha1.tenant import ModelPrice
from agentplane_platform.config import AgentConfig
from agentplane_platform.specs import SpecSet
from support.example_specs import example_agent_and_config


def _with_prices(tenant: Tenant, prices: dict[str, object]) -> Tenant:
    data = tenant.model_dump(mode="json", by_alias=True)
    data["spec"]["modelPrices"] = prices
    return Tenant.model_validate(data)


def test_a_declared_price_is_in_the_agents_config(specs: SpecSet) -> None:
    loaded = specs.tenant_of("tenant-globex")
    assert loaded is not None
    tenant = _with_prices(
        loaded.resource,
        {"ollama/llama3.1": {"inputPerMillionTokens": 0.2, "outputPerMillionTokens": 0.6}},
    )
    _, config = example_agent_and_config(specs, "tenant-globex", "oncall-helper", tenant=tenant)
    assert config.model_prices == {
        "ollama/llama3.1": ModelPrice(input_per_million_tokens=0.2, output_per_million_tokens=0.6)
    }
    assert AgentConfig.model_validate_json(config.canonical_json()) == config
    _, undeclared = example_agent_and_config(specs, "tenant-globex", "oncall-helper")
    assert undeclared.model_prices == {}
    assert undeclared.hash() != config.hash()  # a price change rolls the agent's pods


@pytest.mark.parametrize(
    "price",
    [
        {"inputPerMillionTokens": -1, "outputPerMillionTokens": 0},
        {"inputPerMillionTokens": 1},
        {"inputPerMillionTokens": 1, "outputPerMillionTokens": 1, "currency": "EUR"},
    ],
)
def test_a_price_is_two_amounts_of_at_least_zero(specs: SpecSet, price: dict[str, object]) -> None:
    loaded = specs.tenant_of("tenant-globex")
    assert loaded is not None
    with pytest.raises(ValidationError, match="modelPrices"):
        _with_prices(loaded.resource, {"openai/my-fine-tune": price})
