"""Fail closed: with `required` stores (a pod's default) the runtime refuses to start without them,
says why in its log and termination message, and serves `/metrics` on a port of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from runtime_support import free_port, make_config, serve, tenant_name

from agentplane_platform.contract import RUNTIME_SECRET_KEYS, RuntimeStores
from agentplane_runtime import AgentRegistry, Settings
from agentplane_runtime.core.telemetry import create_telemetry
from agentplane_runtime.services import build_runtime
from agentplane_runtime.startup import StartupError, redact
from support.fake_llm import FakeLLM


def required(settings: Settings, **update: object) -> Settings:
    return settings.model_copy(update={"stores": "required", "startup_timeout_seconds": 1.0, **update})


@pytest.mark.asyncio
async def test_nothing_configured_is_refused_before_anything_is_opened(
    local_settings: Settings, tmp_path: Path
) -> None:
    registry = AgentRegistry()
    registry.put(make_config(tenant_name()), default=True)
    with pytest.raises(StartupError) as refused:
        async with build_runtime(required(local_settings), registry):
            pytest.fail("the runtime started without its stores")
    message = str(refused.value)
    for name in ("AGENTPLANE_DATABASE_URL", "AGENTPLANE_REDIS_URL", "AGENTPLANE_QDRANT_URL"):
        assert name in message
    assert "agentplane-runtime" in message  # where they come from in a cluster
    assert not (tmp_path / "agentplane.db").exists()  # no embedded SQLite made on the side


@pytest.mark.asyncio
@pytest.mark.postgres
@pytest.mark.redis
async def test_an_unreachable_store_is_named_with_its_address(settings: Settings, tmp_path: Path) -> None:
    registry = AgentRegistry()
    registry.put(make_config(tenant_name()), default=True)
    dead = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    broken = required(settings, redis_url=dead, qdrant_path=tmp_path / "qdrant")
    with pytest.raises(StartupError) as refused:
        async with build_runtime(broken, registry):
            pytest.fail("the runtime started without Redis")
    message = str(refused.value)
    assert f"redis at {redact(dead)} unreachable" in message
    assert "s3cret" not in message
    assert "***" in message
    assert "database" not in message  # the database answered


@pytest.mark.asyncio
async def test_models_without_credentials_are_refused(local_settings: Settings, tmp_path: Path) -> None:
    registry = AgentRegistry()
    registry.put(make_config(tenant_name(), model="azure/gpt-4o", fallbacks=["openai/gpt-4o-mini"]))
    no_keys = required(
        local_settings,
        openai_api_key=None,
        azure_api_key=None,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        redis_url="redis://127.0.0.1:1/0",
        qdrant_path=tmp_path / "qdrant",
    )
    with pytest.raises(StartupError, match=r"no provider credentials for azure/gpt-4o, openai/gpt-4o-mini"):
        async with build_runtime(no_keys, registry):
            pytest.fail("the runtime started without provider credentials")


@pytest.mark.asyncio
@pytest.mark.postgres
@pytest.mark.redis
async def test_with_every_store_it_serves_and_metrics_have_their_own_port(
    settings: Settings, tmp_path: Path, fake_llm: FakeLLM
) -> None:
    metrics_port = free_port()
    ready = required(settings, qdrant_path=tmp_path / "qdrant", metrics_port=metrics_port)
    async with serve(ready, make_config(tenant_name())) as served, httpx.AsyncClient() as http:
        assert (await http.get(f"{served.url}/healthz/ready")).status_code == 200
        assert (await http.get(f"{served.url}/metrics")).status_code == 404  # not beside the API
        metrics = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert metrics.status_code == 200
        assert "agentplane_" in metrics.text


def test_every_key_of_the_runtime_secret_is_a_setting_the_runtime_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stores = RuntimeStores(
        database_url="postgresql://db:5432/agentplane",
        redis_url="redis://cache:6379/0",
        qdrant_url="http://qdrant:6333",
        qdrant_api_key="qk",
        otlp_endpoint="http://collector:4318",
        traces_sampler="parentbased_traceidratio",
        traces_sampler_arg="0.25",
    )
    data = stores.secret_data()
    assert set(data) <= RUNTIME_SECRET_KEYS
    for name in os.environ:
        if name.startswith(("AGENTPLANE_", "OTEL_")):
            monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.stores == "required"
    assert settings.database_url == stores.database_url
    assert settings.redis_url == stores.redis_url
    assert settings.qdrant_url == stores.qdrant_url
    assert settings.qdrant_api_key is not None
    assert settings.qdrant_api_key.get_secret_value() == "qk"
    assert settings.otel_exporter_otlp_endpoint == stores.otlp_endpoint
    assert settings.missing_stores() == []
    # the sampler is read by the OpenTelemetry SDK itself, from the same environment
    telemetry = create_telemetry(settings)
    assert telemetry.provider.sampler.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.25}")
    telemetry.shutdown()
    local = RuntimeStores(database_url="d", redis_url="r", qdrant_path=str(tmp_path))
    assert Settings.model_validate({"qdrant_path": local.secret_data()["AGENTPLANE_QDRANT_PATH"]}).qdrant_path


def test_the_entrypoint_exits_and_leaves_its_reason_in_the_termination_message(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text(make_config(tenant_name()).canonical_json())
    termination = tmp_path / "termination-log"
    termination.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTPLANE_", "OPENAI_", "AZURE_"))}
    env.update(AGENTPLANE_TERMINATION_LOG=str(termination), OPENAI_API_KEY="sk-test")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "agentplane-runtime"), "--config", str(config), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "agentplane runtime cannot start" in result.stderr
    reason = termination.read_text()
    assert reason.startswith("agentplane runtime cannot start: the runtime's stores are not configured")
    assert "AGENTPLANE_DATABASE_URL" in reason


def test_passwords_are_redacted_and_nothing_else_changes() -> None:
    assert redact("postgresql+asyncpg://app:pw@db:5432/x?ssl=require") == (
        "postgresql+asyncpg://app:***@db:5432/x?ssl=require"
    )
    assert redact("rediss://:pw@cache:6380/0") == "rediss://:***@cache:6380/0"
    assert redact("redis://cache:6379/0") == "redis://cache:6379/0"
    assert redact("sqlite:////tmp/agentplane.db") == "sqlite:////tmp/agentplane.db"
