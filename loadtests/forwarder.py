"""The limit of the runtime's own stack, for `loadtests/bench_runtime.py`: a FastAPI route that forwards a
chat request's body to the upstream with one pooled httpx client (a stream passed through as it comes)
and does nothing else, served by
uvicorn with uvloop and httptools as the runtime is. Whatever the runtime does per request costs what
it adds on top of this.

    uv run python loadtests/forwarder.py --port 8090 --upstream http://127.0.0.1:8091/v1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse


def create_app(upstream: str, api_key: str) -> FastAPI:
    client = httpx.AsyncClient(
        base_url=upstream,
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
        timeout=60,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def forward(request: Request) -> Response:
        body = await request.body()
        if not orjson.loads(body).get("stream"):
            answer = await client.post("/chat/completions", content=body)
            return Response(answer.content, status_code=answer.status_code, media_type="application/json")
        # a stream is passed through as its bytes arrive
        upstream = await client.send(
            client.build_request("POST", "/chat/completions", content=body), stream=True
        )
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            media_type="text/event-stream",
            background=BackgroundTask(upstream.aclose),
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the OpenAI-compatible base URL, ending in /v1")
    parser.add_argument("--api-key", default="sk-bench")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream, args.api_key),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
