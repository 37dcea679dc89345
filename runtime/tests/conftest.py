"""Runtime test fixtures: the fake LLM upstream, settings pointing at the real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentplane_runtime import Settings
from support.fake_llm import FakeLLM
from support.services import Server, create_database


def pytest_configure(config: pytest.Config) -> None:
    # litellm builds pydantic models from TypedDicts with ReadOnly items; pydantic warns about it
    # on first use. Not ours to fix, and tests turn warnings into errors.
    config.addinivalue_line(
        "filterwarnings", "ignore:Item .* on TypedDict class .* is using the `ReadOnly` qualifier:UserWarning"
    )
    # qdrant-client checks the server version in a thread when it connects; the test of an
    # unreachable Qdrant makes it warn there
    config.addinivalue_line("filterwarnings", "ignore:Failed to obtain server version:UserWarning")
    # litellm's stream handler reads every attribute of a delta, including pydantic's deprecated ones
    config.addinivalue_line(
        "filterwarnings",
        "ignore:Accessing the 'model_.*' attribute on the instance is deprecated:DeprecationWarning",
    )


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLM]:
    fake = FakeLLM().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLM) -> Iterator[FakeLLM]:
    """The fake upstream, with no scripts left over from another test."""
    fake_llm_server.reset()
    yield fake_llm_server
    fake_llm_server.reset()


@pytest.fixture(scope="session")
def runtime_database(postgres: Server) -> str:
    """One PostgreSQL database for the runtime tests (each test uses its own tenants)."""
    return create_database(postgres, "runtime_tests")


FAKE_MODELS = (
    "azure/retry-probe",
    "openai/a-model",
    "openai/b-model",
    "openai/broken-model",
    "openai/flaky",
    "openai/flaky-model",
    "openai/only-model",
    "openai/primary-model",
    "openai/slow-model",
)
"""Models only the fake upstream serves: litellm has no price for them, so the tests' platform
declares one (0, as they cost before prices were required); a model without a price is refused."""


def base_settings(fake: FakeLLM, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model_prices": {
            model: {"input_per_million_tokens": 0, "output_per_million_tokens": 0} for model in FAKE_MODELS
        },
        # the tests choose their stores one by one; what they leave unset is embedded
        "stores": "embedded",
        "state_dir": tmp_path,
        "openai_api_key": "sk-test",
        "openai_api_base": fake.base_url,
        "azure_api_key": "az-test",
        "azure_api_base": fake.root_url,
        "llm_timeout_seconds": 5.0,
        "llm_retries": 1,
        "llm_backoff_seconds": 0.01,
        "otel_traces_exporter": "none",
        "usage_flush_seconds": 0.05,
        "api_key_cache_seconds": 0.0,
        "log_json": False,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def settings(fake_llm: FakeLLM, tmp_path: Path, runtime_database: str, redis_server: Server) -> Settings:
    """Production-shaped settings: PostgreSQL, Redis, Qdrant local mode (in memory), the fake upstream."""
    return base_settings(fake_llm, tmp_path, database_url=runtime_database, redis_url=redis_server.url)


@pytest.fixture
def local_settings(fake_llm: FakeLLM, tmp_path: Path) -> Settings:
    """Embedded defaults (what `agentplane up` uses): SQLite, in-process quotas and buffer."""
    return base_settings(fake_llm, tmp_path)
