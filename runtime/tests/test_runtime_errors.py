"""An error nobody planned for still leaves as the API's JSON error, with the request's id."""

from __future__ import annotations

import httpx
import pytest
from runtime_support import make_config, serve, tenant_name

from agentplane_runtime import Settings
from agentplane_runtime.auth import Principal

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


async def test_an_unhandled_error_is_a_json_500_with_the_request_id(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(settings, make_config(tenant_name())) as served:

        async def broken(authorization: str | None) -> Principal:
            raise RuntimeError("a bug with a secret detail")

        monkeypatch.setattr(served.runtime.authenticator, "authenticate", broken)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as http:
            response = await http.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"X-Request-Id": "req-unplanned-1", "Authorization": "Bearer x"},
            )
            anonymous = await http.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": "Bearer x"},
            )

    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "api_error"
    assert error["request_id"] == "req-unplanned-1"
    assert response.headers["x-request-id"] == "req-unplanned-1"
    assert "secret detail" not in response.text
    # without one sent, the id the runtime made is in the body and the header alike
    made = anonymous.json()["error"]["request_id"]
    assert made
    assert anonymous.headers["x-request-id"] == made
    assert "a bug with a secret detail" in caplog.text  # logged for the operator, not shown
