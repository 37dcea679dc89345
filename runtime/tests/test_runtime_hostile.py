"""Hostile input gets a clean 4xx in OpenAI's error shape, with the request id, never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from runtime_support import make_config, serve, tenant_name

from agentplane_runtime import Settings

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]


def assert_clean(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    assert "Traceback" not in response.text


async def test_hostile_requests(settings: Settings) -> None:
    small = settings.model_copy(update={"max_body_bytes": 512 * 1024})
    async with serve(small, make_config(tenant_name())) as served:
        key = await served.key()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=served.base_url, headers=headers, timeout=30) as http:
            # over the body limit, announced and chunked
            big = json.dumps({"messages": [{"role": "user", "content": "x" * 600_000}]})
            assert_clean(await http.post("/chat/completions", content=big), 413)

            async def chunked() -> AsyncIterator[bytes]:
                for _ in range(600):
                    yield b" " * 1024

            assert_clean(await http.post("/chat/completions", content=chunked()), 413)
            # not JSON, wrong shapes
            invalid = await http.post("/chat/completions", content=b'{"messages": [')
            assert_clean(invalid, 400)
            assert invalid.json()["error"]["message"] == "the request body is not valid JSON"
            assert_clean(await http.post("/chat/completions", content=b"\xff\xfe\x00garbage"), 400)
            for body in (
                {"messages": "hello"},
                {"messages": [{"role": "wizard", "content": "hi"}]},
                {"messages": [{"role": "user", "content": "hi"}], "temperature": 9},
                {"messages": [{"role": "user", "content": "hi"}], "n": 3},
                {
                    "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                    ]
                },
                [1, 2, 3],
            ):
                assert_clean(await http.post("/chat/completions", json=body), 400)
            # 10,000 messages: under the byte limit, over the message limit
            many = {"messages": [{"role": "user", "content": "hi"}] * 10_000}
            response = await http.post("/chat/completions", content=json.dumps(many).encode())
            assert_clean(response, 400)
            assert "too many messages" in response.json()["error"]["message"]
            # unicode edge cases: fine ones are answered, lone surrogates refused
            for text in (
                "emoji 👩‍👩‍👧‍👦 and RTL \u202e txet",
                "e\u0301\u0301\u0301 zalgo",
                "nul \u0000 byte",
                "\ufeffbom",
                "a" * 5000,
            ):
                ok = await http.post(
                    "/chat/completions", json={"messages": [{"role": "user", "content": text}]}
                )
                assert ok.status_code == 200, (text[:20], ok.text)
            surrogate = b'{"messages": [{"role": "user", "content": "bad \\ud800 half"}]}'
            assert_clean(await http.post("/chat/completions", content=surrogate), 400)
            # the context budget is enforced on the conversation itself
            long = {"messages": [{"role": "user", "content": "word " * 11_000}]}
            too_long = await http.post("/chat/completions", json=long)
            assert_clean(too_long, 400)
            assert too_long.json()["error"]["code"] == "context_length_exceeded"
            # unknown routes and methods are JSON too
            assert_clean(await http.get("/nope"), 404)
            assert_clean(await http.get("/chat/completions"), 405)
