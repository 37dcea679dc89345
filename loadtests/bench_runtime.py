"""Benchmark: the agentplane runtime beside the limit of its own stack and beside LiteLLM's proxy, on
one fake upstream, at concurrency 1 and 16 (more with `--concurrency`).

Everything runs on this machine, on loopback: the fake OpenAI-compatible upstream
(tests/support/fake_llm.py), real PostgreSQL and Redis (for the runtime's API-key auth, quotas and
usage metering), and four targets, each one chat request with `max_tokens` 16:

- `upstream`: the fake itself, directly;
- `forwarder`: the limit of the stack (`loadtests/forwarder.py`: FastAPI on uvicorn with uvloop and
  httptools, forwarding the body with one pooled httpx client, nothing else);
- `agentplane`: the runtime (`agentplane-runtime`, one process) with API-key auth, the Redis quota,
  PostgreSQL metering, the audit trail and OTLP trace export to the fake's trace sink;
  `agentplane-401` is the same with a wrong key (each request refused and audited);
- `litellm-proxy`: `litellm --config` with a master key and no database (its plain chat path).

The load generator is wrk (C, `apt-get install wrk`), so it is not the bottleneck: one thread, a
fixed number of connections (the concurrency) for `--seconds` each, after a warm-up. CPU per request
is the server process's (and its children's) user + system time over the run, divided by the
requests answered. Every target is loaded once per round, `--rounds` times in turn; each figure is the
median round, and the ratios are taken within each round (its targets loaded a minute apart at
most), so a drift of a shared machine's speed shows as the rounds' range instead of as a ratio.

    uv run python loadtests/bench_runtime.py [--seconds 5] [--rounds 3] [--concurrency 1,16] [--audit on|off]

`--audit off` starts the runtime with its audit trail off (`AGENTPLANE_AUDIT=false`), to compare. A
plain chat writes no audit record; the `agentplane-401` row shows what recording one costs.

`--baseline REF` compares this checkout's runtime with the one of the git revision REF instead (its
`runtime/src` and `platform/src`, on this checkout's dependencies): both run, with the same stores
and settings, and every round loads the two at the same time, one wrk each, so a swing of a shared
machine's speed meets both alike. A change worth a few percent of CPU is lost in the swings between
runs taken one after another (10-25 % from one round to the next here); side by side it shows. Each
round then measures both runtimes' time to the first token, one after the other (which goes first
alternates), and reports the difference of their p50s.

    uv run python loadtests/bench_runtime.py --baseline HEAD~1 [--rounds 8] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.ports import free_port  # noqa: E402
from support.services import start_postgres, start_redis  # noqa: E402
from support.waiting import wait_for_http  # noqa: E402

TARGETS = ("upstream", "forwarder", "agentplane", "agentplane-401", "litellm-proxy")

PROXY_KEY = "sk-" + "b3nch" * 12  # the proxy refuses to start without a master key

BODY = {
    "model": "helper",
    "messages": [{"role": "user", "content": "Say something short about latency."}],
    "max_tokens": 16,
}


@dataclass
class Run:
    """One target at one concurrency."""

    p50_ms: float
    p99_ms: float
    rps: float
    requests: int
    errors: int
    cpu_ms: float
    """Server CPU (user + system, with its children) per answered request."""


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"wrk printed a latency this script cannot read: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _cpu_seconds(pid: int) -> float:
    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        times = each.cpu_times()
        total += times.user + times.system
    return total


def wrk(
    url: str,
    headers: dict[str, str],
    concurrency: int,
    seconds: int,
    server_pid: int,
    work: Path,
    profile: Path | None = None,
) -> Run:
    """Load `url` with wrk: `concurrency` connections for `seconds` (after a 2 s warm-up); with
    `profile`, py-spy records the server meanwhile into that file."""
    script = work / f"post-{server_pid}.lua"  # one each: two targets are loaded at once with `--baseline`
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(BODY))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    script.write_text("\n".join(lines) + "\n")
    base = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script), "--latency", url]
    subprocess.run([*base[:3], "-d2s", *base[3:]], check=True, capture_output=True)  # warm-up
    spy = None
    if profile is not None:
        # on PATH, or where `uv tool install` puts it
        py_spy = (
            shutil.which("py-spy")
            or shutil.which("py-spy", path=str(Path.home() / ".local" / "bin"))
            or sys.exit("bench_runtime: py-spy is missing: uv tool install py-spy")
        )
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(server_pid), "--format", "raw", "--output", str(profile),
             "--duration", str(seconds), "--rate", "250", "--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    before = _cpu_seconds(server_pid)
    done = subprocess.run([*base[:3], f"-d{seconds}s", *base[3:]], check=True, capture_output=True, text=True)
    cpu = _cpu_seconds(server_pid) - before
    if spy is not None:
        spy.wait(timeout=60)
    out = done.stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    if set(latency) != {"50", "99"}:
        sys.exit(f"bench_runtime: no latency distribution in wrk's output for {url}:\n{out}")
    requests = int(re.search(r"^\s+(\d+) requests in", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    rps = float(re.search(r"^Requests/sec:\s+([0-9.]+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    answered = max(1, requests)
    return Run(_ms(latency["50"]), _ms(latency["99"]), rps, requests, errors, cpu * 1000 / answered)


def _first_text(line: str) -> bool:
    if not line.startswith("data:") or line.endswith("[DONE]"):
        return False
    choices = json.loads(line[5:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


def ttft(url: str, headers: dict[str, str], requests: int) -> tuple[float, float]:
    """Time to the first token of a streamed answer (the first chunk with text), `requests` in a row
    after 20 to warm up: its p50 and p99 in ms. The client is the same for every target, so the
    differences between targets are theirs."""
    body = {**BODY, "stream": True}

    async def measure() -> list[float]:
        times: list[float] = []
        async with httpx.AsyncClient(timeout=30) as client:
            for i in range(requests + 20):
                started = time.perf_counter()
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    response.raise_for_status()
                    first: float | None = None
                    async for line in response.aiter_lines():  # read to the end (the connection is reused)
                        if first is None and _first_text(line):
                            first = time.perf_counter() - started
                    if first is None:
                        raise RuntimeError(f"{url} streamed no text")
                    if i >= 20:
                        times.append(first * 1000)
        return sorted(times)

    times = asyncio.run(measure())
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


def _spread(values: list[float], unit: str) -> str:
    """`values` of the rounds as `median (low-high)`; the median alone for one round."""
    if len(values) == 1:
        return f"{values[0]:.2f}{unit}"
    return f"{median(values):.2f}{unit} ({min(values):.2f}-{max(values):.2f})"


def report(
    rounds: list[dict[tuple[str, int], Run]],
    firsts: list[dict[str, tuple[float, float]]],
    levels: list[int],
    chosen: list[str],
    args: argparse.Namespace,
) -> None:
    """Each target's round of median requests/s; the ratios of agentplane to the forwarder and to
    LiteLLM's proxy within each round (both sides loaded minutes apart at most), as their median and
    range over the rounds."""
    print(
        f"\nwrk, {args.seconds} s per run, {len(rounds)} rounds, {os.cpu_count()} cores, audit {args.audit}"
    )
    print("each row: the round of median requests/s; `rounds`: every round's requests/s")
    print(
        f"{'target':<15} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'CPU ms/req':>10} {'errors':>6}"
        "  rounds"
    )
    for c in levels:
        for name in chosen:
            runs = sorted((each[name, c] for each in rounds), key=lambda run: run.rps)
            run = runs[(len(runs) - 1) // 2]
            print(
                f"{name:<15} {c:>4} {run.p50_ms:>8.2f} {run.p99_ms:>8.2f} {run.rps:>8.0f} "
                f"{run.cpu_ms:>10.2f} {run.errors:>6}  {' '.join(f'{each[name, c].rps:.0f}' for each in rounds)}"
            )
    if firsts:
        print("\nstreamed, requests in a row: time to the first token, the median of the rounds' p50 and p99")
        print(f"{'target':<15} {'p50 ms':>8} {'p99 ms':>8}")
        for name in firsts[0]:
            p50 = median([each[name][0] for each in firsts])
            p99 = median([each[name][1] for each in firsts])
            print(f"{name:<15} {p50:>8.2f} {p99:>8.2f}")
        if {"forwarder", "agentplane"} <= firsts[0].keys():
            gaps = [each["agentplane"][0] - each["forwarder"][0] for each in firsts]
            print(f"agentplane's time to first token (p50) from the forwarder's: {_spread(gaps, ' ms')}")
    if not {"agentplane", "forwarder", "litellm-proxy"} <= set(chosen):
        return
    for c in levels:
        to_limit = [each["agentplane", c].rps / each["forwarder", c].rps for each in rounds]
        to_proxy = [each["agentplane", c].rps / each["litellm-proxy", c].rps for each in rounds]
        print(
            f"concurrency {c}: agentplane serves {_spread(to_limit, 'x')} the forwarder's requests/s "
            f"and {_spread(to_proxy, 'x')} LiteLLM proxy's (median of the rounds, their range)"
        )


def baseline_sources(ref: str, into: Path) -> str:
    """The runtime's and the platform's sources at the git revision `ref`, extracted `into` a folder:
    the PYTHONPATH that runs them (ahead of this checkout's, installed in the environment)."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "runtime/src", "platform/src"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        sys.exit(f"bench_runtime: no sources at {ref}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return os.pathsep.join(str(into / part / "src") for part in ("runtime", "platform"))


Target = tuple[str, dict[str, str], int]


def check_no_errors_counted(url: str, name: str) -> None:
    """Exit if the runtime serving `url` counted errors (`agentplane_errors_total`): one that fails open
    (its quota store unreachable, say) still answers 200, so wrk sees nothing wrong, and its figures
    would be of a runtime doing less than its work."""
    base = url.split("/v1/", 1)[0]
    counted: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith("agentplane_errors_total{"):
            labels, value = line.rsplit(" ", 1)
            found = re.search(r'type="([^"]*)"', labels)
            kind = found.group(1) if found else labels
            counted[kind] = counted.get(kind, 0.0) + float(value)
    if any(counted.values()):
        sys.exit(f"bench_runtime: {name} counted errors while it answered: {counted}; see its log")


def compare(
    current: Target,
    baseline: Target,
    ref: str,
    levels: list[int],
    rounds: int,
    seconds: int,
    work: Path,
    ttft_requests: int,
) -> None:
    """Load this checkout's runtime and `ref`'s at the same time, each with its own wrk, `rounds` times
    at each concurrency, then measure each one's time to first token (`ttft_requests` in a row, which
    goes first alternating by round); print every round and the median of the rounds' ratios."""
    ratios: dict[int, list[tuple[float, float]]] = {c: [] for c in levels}
    firsts: list[float] = []
    print(f"this checkout's runtime beside {ref}'s, loaded at the same time, {seconds} s per round")
    print(f"{'round':<6} {'conc':>4} {'req/s':>8} {'base':>8} {'CPU ms/req':>11} {'base':>8}")
    for number in range(rounds):
        for concurrency in levels:
            with ThreadPoolExecutor(max_workers=2) as pool:
                loads = [pool.submit(wrk, url, headers, concurrency, seconds, pid, work)
                         for url, headers, pid in (current, baseline)]  # fmt: skip
                now, base = (load.result() for load in loads)
            if now.errors or base.errors:
                sys.exit(f"bench_runtime: errors under load: {now.errors} here, {base.errors} at {ref}")
            ratios[concurrency].append((now.rps / base.rps, now.cpu_ms / base.cpu_ms))
            print(f"{number + 1:<6} {concurrency:>4} {now.rps:>8.0f} {base.rps:>8.0f} "
                  f"{now.cpu_ms:>11.2f} {base.cpu_ms:>8.2f}", flush=True)  # fmt: skip
        if ttft_requests:
            both = (current, baseline)
            order = (0, 1) if number % 2 == 0 else (1, 0)
            p50 = {i: ttft(both[i][0], both[i][1], ttft_requests)[0] for i in order}
            firsts.append(p50[0] - p50[1])
            print(f"{number + 1:<6} time to first token (p50): {p50[0]:.2f} ms, {p50[1]:.2f} ms at {ref}",
                  flush=True)  # fmt: skip
    check_no_errors_counted(current[0], "this checkout's runtime")
    check_no_errors_counted(baseline[0], f"{ref}'s runtime")
    for concurrency, pairs in ratios.items():
        rps = sorted(r for r, _ in pairs)
        cpu = sorted(c for _, c in pairs)
        print(
            f"concurrency {concurrency}: requests/s {median(rps):.3f}x {ref}'s ({rps[0]:.3f}-{rps[-1]:.3f}), "
            f"CPU a request {median(cpu):.3f}x ({cpu[0]:.3f}-{cpu[-1]:.3f}), the median of {len(pairs)} rounds"
        )
    if firsts:
        print(f"time to first token (p50): {median(firsts):+.2f} ms against {ref}'s "
              f"({min(firsts):+.2f} to {max(firsts):+.2f}), the median of {len(firsts)} rounds")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=int, default=5, help="how long each target is loaded at each concurrency, per round"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="how many times every target is loaded in turn; each figure is the median round",
    )
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--audit", choices=("on", "off"), default="on")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"which targets to load, comma-separated (of {', '.join(TARGETS)}); the ratios need "
        "agentplane, forwarder and litellm-proxy",
    )
    parser.add_argument(
        "--ttft-requests",
        type=int,
        default=300,
        help="streamed requests in a row per target to measure the time to first token (0: none)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="compare the runtime with the one of the git revision REF, both loaded at the same time "
        "(only those two targets; the time to first token of each, one after the other)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="record the runtime with py-spy (`uv tool install py-spy`) while wrk loads it at the first "
        "concurrency, into FILE (raw collapsed stacks of the thread holding the GIL: py-spy record --format "
        "raw --gil)",
    )
    args = parser.parse_args()
    chosen = args.targets.split(",")
    unknown = sorted(set(chosen) - set(TARGETS))
    if unknown:
        sys.exit(f"bench_runtime: no target named {', '.join(unknown)} (the targets: {', '.join(TARGETS)})")
    if shutil.which("wrk") is None:
        sys.exit("bench_runtime: wrk is missing (the load generator): apt-get install wrk")
    if args.rounds < 1:
        parser.error("--rounds is at least 1")
    levels = [int(c) for c in args.concurrency.split(",")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    work = Path(tempfile.mkdtemp(prefix="agentplane-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    postgres = start_postgres(work / "pg")
    redis = start_redis(work / "redis")
    try:
        fake_port, runtime_port, proxy_port, forwarder_port = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        )
        fake_url = f"http://127.0.0.1:{fake_port}"
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "support.fake_llm", "--port", str(fake_port), "--no-record"],
                env={**env, "PYTHONPATH": str(REPO / "tests")},
            )
        )
        wait_for_http(f"{fake_url}/v1/models")

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

        def start_runtime(port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [str(Path(sys.executable).parent / "agentplane-runtime"), "--config", str(config_path),
                 "--host", "127.0.0.1", "--port", str(port)],
                env={**runtime_env, **(extra_env or {})},
            )  # fmt: skip

        processes.append(start_runtime(runtime_port))
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
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "loadtests" / "forwarder.py"),
                    "--port",
                    str(forwarder_port),
                    "--upstream",
                    f"{fake_url}/v1",
                ],
                env=env,
            )
        )
        fake, runtime, proxy, forwarder = processes
        baseline_port = free_port()
        if args.baseline:
            # its own state (the embedded Qdrant takes a lock on its folder) and its own streams (on
            # shared ones, whichever writer reads first would write the other's records too); the
            # same stores otherwise
            baseline = start_runtime(
                baseline_port,
                {
                    "PYTHONPATH": baseline_sources(args.baseline, work / "baseline"),
                    "AGENTPLANE_STATE_DIR": str(work / "baseline-state"),
                    "AGENTPLANE_QDRANT_PATH": str(work / "baseline-qdrant"),
                    "AGENTPLANE_USAGE_STREAM": "agentplane:usage:baseline",
                    "AGENTPLANE_AUDIT_STREAM": "agentplane:audit:baseline",
                },
            )
            processes.append(baseline)
            wait_for_http(f"http://127.0.0.1:{baseline_port}/healthz/startup")
        wait_for_http(f"http://127.0.0.1:{runtime_port}/healthz/startup")
        if "litellm-proxy" in chosen:
            wait_for_http(f"http://127.0.0.1:{proxy_port}/health/liveliness")
        wait_for_http(f"http://127.0.0.1:{forwarder_port}/docs")

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
            "upstream": (f"{fake_url}/v1/chat/completions", {"Authorization": "Bearer sk-bench"}, fake.pid),
            "forwarder": (f"http://127.0.0.1:{forwarder_port}/v1/chat/completions", {}, forwarder.pid),
            "agentplane": (
                f"http://127.0.0.1:{runtime_port}/v1/chat/completions",
                {"Authorization": f"Bearer {api_key}"},
                runtime.pid,
            ),
            "agentplane-401": (
                f"http://127.0.0.1:{runtime_port}/v1/chat/completions",
                {"Authorization": f"Bearer {api_key[:-4]}xxxx"},
                runtime.pid,
            ),
            "litellm-proxy": (
                f"http://127.0.0.1:{proxy_port}/v1/chat/completions",
                {"Authorization": f"Bearer {PROXY_KEY}"},
                proxy.pid,
            ),
        }
        if args.baseline:
            baseline_target = (targets["agentplane"][0].replace(str(runtime_port), str(baseline_port)),
                               targets["agentplane"][1], baseline.pid)  # fmt: skip
            compare(
                targets["agentplane"], baseline_target, args.baseline, levels, args.rounds, args.seconds, work,
                args.ttft_requests,
            )  # fmt: skip
            return
        rounds: list[dict[tuple[str, int], Run]] = []
        firsts: list[dict[str, tuple[float, float]]] = []
        streamed = [name for name in ("forwarder", "agentplane", "litellm-proxy") if name in chosen]
        for number in range(args.rounds):
            # every target once per round, the rounds one after another: a drift of the machine's speed
            # meets every target alike, and the spread of the rounds shows how much it moved
            results: dict[tuple[str, int], Run] = {}
            for concurrency in levels:
                for name in chosen:
                    url, headers, pid = targets[name]
                    first_load = number == 0 and name == "agentplane" and concurrency == levels[0]
                    profile = args.profile if first_load else None
                    results[name, concurrency] = wrk(
                        url, headers, concurrency, args.seconds, pid, work, profile
                    )
            rounds.append(results)
            if args.ttft_requests:
                firsts.append(
                    {name: ttft(targets[name][0], targets[name][1], args.ttft_requests) for name in streamed}
                )
            print(f"round {number + 1} of {args.rounds} done", file=sys.stderr)
        if "agentplane" in chosen:
            check_no_errors_counted(targets["agentplane"][0], "the runtime")
        report(rounds, firsts, levels, chosen, args)
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
