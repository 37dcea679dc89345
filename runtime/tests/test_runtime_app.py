"""The pod's path: the config file the operator mounts, loaded by `create_app(settings)`; probes; OpenAPI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import uvicorn
from runtime_support import free_port, make_config, tenant_name

from agentplane_runtime import Settings, create_app
from agentplane_runtime.cli import main
from support.waiting import wait_until_serving

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


async def test_serves_the_mounted_config_file(settings: Settings, tmp_path: Path) -> None:
    config = make_config(tenant_name(), agent="support-bot")
    path = tmp_path / "agent.json"
    path.write_text(config.canonical_json())
    app = create_app(settings.model_copy(update={"config": path}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        await wait_until_serving("the runtime server", server, task)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for probe in ("/healthz/startup", "/healthz/live", "/healthz/ready"):
                assert (await http.get(probe)).status_code == 200, probe
            ready = (await http.get("/healthz/ready")).json()
            assert ready["checks"] == {"database": "ok", "quota_store": "ok", "vector_store": "ok"}
            assert (await http.get("/v1/models")).status_code == 401
            openapi = (await http.get("/openapi.json")).json()
            assert "/v1/chat/completions" in openapi["paths"]
            assert "/v1/knowledge/{kb}/documents" in openapi["paths"]
            assert "/v1/knowledge/{kb}/query" in openapi["paths"]
        assert app.state.runtime.agents.get().config == config
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def test_cli_refuses_to_start_without_a_config() -> None:
    with pytest.raises(SystemExit):
        main([])
