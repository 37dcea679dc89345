"""Benchmark: the latency the agentplane runtime adds on top of its upstream, and its throughput,
side by side with LiteLLM's own proxy on the same fake upstream, at concurrency 1, 16 and 64.

Everything runs on this machine, on loopback: the fake OpenAI-compatible upstream
(tests/support/fake_llm.py), real PostgreSQL and Redis (for the runtime's API-key auth, quotas and
usage metering), the runtime (`agentplane-runtime`, one process, spans exported over OTLP/HTTP to
the fake's trace sink), and `litellm --config` (the proxy with a master key and no database: the plain chat path). The load
generator is one asyncio process with httpx. "Added latency" is a percentile of (latency through the
server) minus the same percentile measured against the upstream directly at the same concurrency.

    uv run python loadtests/bench_runtime.py [--requests 2000] [--concurrency 1,16,64] [--audit on|off]

`--audit off` starts the runtime with its audit trail off (`AGENTPLANE_AUDIT=false`), to compare. A
plain chat writes no audit record (a refusal, a tool call or a document does); the
`agentplane-401` row (a wrong API key: each request refused and recorded as `auth.failed`) shows
what recording costs on the request path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.ports import free_port  # noqa: E402
from support.services import start_postgres, start_redis  # noqa: E402

PROXY_KEY = "sk-" + "b3nch" * 12  # the proxy refuses to start without a master key

BODY = {"model": "helper", "messages": [{"role": "user", "content": "Say something short about latency."}]}


def wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up")


async def load(
    url: str, headers: dict[str, str], concurrency: int, requests: int
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    queue = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=headers) as client:
        # warm up every connection
        await asyncio.gather(*[client.post(url, json=BODY) for _ in range(concurrency)])

        async def worker() -> None:
            nonlocal errors
            for _ in queue:
                start = time.perf_counter()
                response = await client.post(url, json=BODY)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
    return latencies, len(latencies) / elapsed, errors


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--audit", choices=("on", "off"), default="on")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    work = Path(tempfile.mkdtemp(prefix="agentplane-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    postgres = start_postgres(work / "pg")
    redis = start_redis(work / "redis")
    try:
        fake_port, runtime_port, proxy_port = free_port(), free_port(), free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "support.fake_llm", "--port", str(fake_port), "--no-record"],
                env={**env, "PYTHONPATH": str(REPO / "tests")},
            )
        )
        wait_http(f"{fake_url}/v1/models")

        from agentplane_platform.config import AgentConfig

        config = AgentConfig.model_validate(
            {
                "tenant": "bench",
                "namespace": "tenant-bench",
                "agent": "helper",
                "description": "benchmark agent",
                "model": {"name": "openai/gpt-4o-mini", "fallbacks": [], "parameters": {"max_tokens": 64}},
                "prompt": {
                    "name": "p",
                    "version": 1,
                    "template": "You are {{ agent }}.",
                    "values": {},
                    "hash": "h",
                },
                "tools": [],
                "knowledge": [],
                "limits": {},
                "quota": {
                    "tenant": "bench",
                    "key_prefix": "agentplane:quota:bench",
                    "limits_key": "agentplane:quota:bench:limits",
                },
                "egress": [],
            }
        )
        config_path = work / "agent.json"
        config_path.write_text(config.canonical_json())
        import redis as redis_client

        r = redis_client.Redis.from_url(redis.url)
        r.hset(
            "agentplane:quota:bench:limits",
            mapping={"tokens_per_minute": 10**12, "requests_per_minute": 10**9, "monthly_budget_usd": 10**9},
        )
        runtime_env = {
            **env,
            "AGENTPLANE_DATABASE_URL": postgres.url,
            "AGENTPLANE_REDIS_URL": redis.url,
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_API_BASE": f"{fake_url}/v1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": fake_url,
            "OTEL_SERVICE_NAME": "agentplane-runtime-bench",
            "AGENTPLANE_LOG_LEVEL": "WARNING",
            "AGENTPLANE_STATE_DIR": str(work / "state"),
            "AGENTPLANE_QDRANT_PATH": str(work / "qdrant"),
            "AGENTPLANE_AUDIT": "true" if args.audit == "on" else "false",
        }
        processes.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "agentplane-runtime"),
                    "--config",
                    str(config_path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(runtime_port),
                ],
                env=runtime_env,
            )
        )
        proxy_config = work / "proxy.yaml"
        proxy_config.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": "helper",
                            "litellm_params": {
                                "model": "openai/gpt-4o-mini",
                                "api_base": f"{fake_url}/v1",
                                "api_key": "sk-bench",
                            },
                        }
                    ],
                    "litellm_settings": {"drop_params": True},
                    "general_settings": {"master_key": PROXY_KEY},
                }
            )
        )
        processes.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "litellm"),
                    "--config",
                    str(proxy_config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(proxy_port),
                    "--num_workers",
                    "1",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_http(f"http://127.0.0.1:{runtime_port}/healthz/startup")
        wait_http(f"http://127.0.0.1:{proxy_port}/health/liveliness")

        async def key() -> str:
            from agentplane_platform.db import create_engine
            from agentplane_platform.keys import create_api_key

            engine = create_engine(postgres.url)
            try:
                return await create_api_key(engine, tenant="bench", name="bench")
            finally:
                await engine.dispose()

        api_key = asyncio.run(key())
        targets = {
            "upstream": (f"{fake_url}/v1/chat/completions", {"Authorization": "Bearer sk-bench"}),
            "agentplane": (
                f"http://127.0.0.1:{runtime_port}/v1/chat/completions",
                {"Authorization": f"Bearer {api_key}"},
            ),
            "agentplane-401": (
                f"http://127.0.0.1:{runtime_port}/v1/chat/completions",
                {"Authorization": f"Bearer {api_key[:-4]}xxxx"},
            ),
            "litellm-proxy": (
                f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                {"Authorization": f"Bearer {PROXY_KEY}"},
            ),
        }
        rows = []
        for concurrency in levels:
            results = {}
            for name, (url, headers) in targets.items():
                latencies, rps, errors = asyncio.run(load(url, headers, concurrency, args.requests))
                results[name] = (latencies, rps, errors)
            base = results["upstream"][0]
            for name in ("agentplane", "agentplane-401", "litellm-proxy"):
                latencies, rps, errors = results[name]
                rows.append(
                    (
                        name,
                        concurrency,
                        pct(latencies, 0.5) - pct(base, 0.5),
                        pct(latencies, 0.99) - pct(base, 0.99),
                        rps,
                        errors,
                    )
                )
            rows.append(
                (
                    "upstream",
                    concurrency,
                    pct(base, 0.5),
                    pct(base, 0.99),
                    results["upstream"][1],
                    results["upstream"][2],
                )
            )
        print(f"\n{args.requests} requests per run, {os.cpu_count()} cores, audit {args.audit}")
        print(
            f"{'server':<14} {'conc':>4} {'added p50 ms':>13} {'added p99 ms':>13} {'req/s':>8} {'errors':>6}"
        )
        for name, c, p50, p99, rps, errors in rows:
            label = "(upstream p50/p99 ms)" if name == "upstream" else ""
            print(f"{name:<14} {c:>4} {p50:>13.2f} {p99:>13.2f} {rps:>8.0f} {errors:>6} {label}")
    finally:
        for process in reversed(processes):  # the fake upstream (the trace sink) last
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.stop()
        postgres.stop()


if __name__ == "__main__":
    main()
