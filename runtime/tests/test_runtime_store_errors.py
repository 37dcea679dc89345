"""A store that does not answer is said so: readiness names the store and why in the log (once per
outage, not per probe), and an upload while Qdrant is down is a 503 with the API's error body."""

from __future__ import annotations

import logging

import httpx
import pytest
from runtime_support import free_port, make_config, serve, tenant_name

from agentplane_runtime import Settings
from support.fake_llm import FakeLLM

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


def _warnings(caplog: pytest.LogCaptureFixture, store: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "agentplane.runtime" and store in r.getMessage()
    ]


async def test_an_unreachable_qdrant_is_reported_and_logged_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    down = settings.model_copy(update={"qdrant_url": f"http://127.0.0.1:{free_port()}"})
    async with serve(down, make_config(tenant_name())) as served:
        caplog.set_level(logging.INFO, logger="agentplane.runtime")
        async with httpx.AsyncClient(base_url=served.url) as http:
            for _ in range(3):
                response = await http.get("/healthz/ready")
                # ready all the same by default: answers go on without context (`ready_optional`)
                assert response.status_code == 200
                assert response.json()["checks"] == {
                    "database": "ok",
                    "quota_store": "ok",
                    "vector_store": "unreachable",
                }
    logged = _warnings(caplog, "vector_store")
    assert len(logged) == 1, logged  # the outage, not every probe
    assert "ResponseHandlingException" in logged[0]
    assert "All connection attempts failed" in logged[0]  # the transport's reason


async def test_an_unreachable_redis_is_not_ready_and_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    async with serve(down, make_config(tenant_name())) as served:
        caplog.set_level(logging.INFO, logger="agentplane.runtime")
        async with httpx.AsyncClient(base_url=served.url) as http:
            response = await http.get("/healthz/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["quota_store"] == "unreachable"
    logged = _warnings(caplog, "quota_store")
    assert len(logged) == 1, logged
    assert "ConnectionError" in logged[0]
    assert f"127.0.0.1:{port}" in logged[0]  # the address it tried


async def test_an_upload_while_qdrant_is_unreachable_is_a_503_with_a_request_id(settings: Settings) -> None:
    down = settings.model_copy(update={"qdrant_url": f"http://127.0.0.1:{free_port()}"})
    async with serve(down, make_config(tenant_name(), knowledge=["docs"])) as served:
        key = await served.key(roles=["admin"], subject="dana")
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            response = await http.post(
                "/knowledge/docs/documents",
                files={"file": ("guide.md", b"# Returns\n\nWithin 30 days.", "text/markdown")},
                headers={"Authorization": f"Bearer {key}", "X-Request-ID": "upload-during-outage"},
            )
            auth = {"Authorization": f"Bearer {key}"}
            listed = await http.get("/knowledge/docs/documents", headers=auth)
            deleted = await http.delete("/knowledge/docs/documents/guide", headers=auth)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-request-id"] == "upload-during-outage"
    error = response.json()["error"]
    assert error["type"] == "api_error"
    assert "knowledge store is unavailable" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["request_id"]
    for other in (listed, deleted):  # the other document routes alike
        assert other.status_code == 503, other.text
        assert other.json()["error"]["request_id"] == other.headers["x-request-id"]


async def test_a_chat_while_redis_is_unreachable_is_admitted_and_the_reason_logged(
    settings: Settings, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    config = make_config(tenant_name())
    async with serve(down, config) as served:
        key = await served.key()
        caplog.set_level(logging.WARNING, logger="agentplane.runtime")
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            response = await http.post(
                "/chat/completions",
                json={"model": "helper", "messages": [{"role": "user", "content": "hello"}]},
                headers={"Authorization": f"Bearer {key}"},
            )
    assert response.status_code == 200, response.text  # fails open
    logged = [r.getMessage() for r in caplog.records if "request admitted" in r.getMessage()]
    assert logged, [r.getMessage() for r in caplog.records]
    assert f"{config.tenant}/helper" in logged[0]
    assert f"127.0.0.1:{port}" in logged[0]  # the reason, not only its type
