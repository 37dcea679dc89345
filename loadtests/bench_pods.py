"""Agents on real pods: what a platform team sees on its first `pulumi up`, measured on the test
cluster's real node (containerd, runc, CNI, kube-proxy, kube-router; 2 cores shared by everything).

    uv run python loadtests/bench_pods.py [--chats 16] [--seconds 20]

Deploys the platform as the end-to-end tests do (tests/support/platform_deploy.py: the operator
in-cluster from its image, Traefik as the gateway, PostgreSQL, Redis and the fake LLM provider on
the host), then reports, as a markdown table:

- the images' sizes (the docker-archive tars the node loads);
- for one new Agent in a ready Tenant, the time from `kubectl apply` to its Ready condition and to
  its first answer through the gateway (image present on the node, nothing pulled);
- its pod's memory (resident set of the container's processes) idle after its first answer, and
  the peak while `--chats` clients send chats through the gateway for `--seconds` seconds, with
  the requests/s and p50/p99 latency they saw.

Needs root and the real node's packages (`make system-deps`); the first run builds the images.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.cluster import running_cluster  # noqa: E402
from support.node import RealNode  # noqa: E402
from support.platform_deploy import Platform, deployed_platform  # noqa: E402
from support.waiting import wait_for  # noqa: E402

MIB = 1024 * 1024


def pod_rss(node: RealNode, pod_uid: str) -> int:
    """Resident bytes of the processes in one pod's cgroups (its containers, not the sandbox's pause).

    Containers have PID namespaces of their own, nested in the node's: every process of the machine
    is looked at, by its cgroup (`.../kubepods/.../pod<uid>/...`)."""
    assert node.alive()
    total, found = 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            cgroups = Path(f"/proc/{pid}/cgroup").read_text()
            if f"pod{pod_uid}" not in cgroups and f"pod{pod_uid.replace('-', '_')}" not in cgroups:
                continue
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pause":
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    found += 1
        except OSError:
            continue
    if not found:
        raise RuntimeError(f"no process of pod {pod_uid} found on this machine")
    return total


def tenant(name: str) -> dict[str, object]:
    return {
        "apiVersion": "agentplane.io/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "owners": [{"kind": "Group", "name": "bench"}],
            "allowedModels": ["openai/*"],
            "quotas": {
                "llm": {"tokensPerMinute": 10**9, "requestsPerMinute": 10**6, "monthlyBudgetUsd": 10**6}
            },
            "deletionPolicy": "Delete",
        },
    }


def agent_objects(name: str) -> list[dict[str, object]]:
    ns = "tenant-bench"
    return [
        {"apiVersion": "agentplane.io/v1alpha1", "kind": "Prompt", "metadata": {"name": "assistant", "namespace": ns},
         "spec": {"version": 1, "template": "You are a benchmark agent."}},
        {"apiVersion": "agentplane.io/v1alpha1", "kind": "Agent", "metadata": {"name": name, "namespace": ns},
         "spec": {"model": {"name": "openai/gpt-4o-mini"}, "prompt": {"name": "assistant", "version": 1},
                  "runtime": {"replicas": 1, "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                                           "limits": {"memory": "1Gi"}}}}},
    ]  # fmt: skip


def chat(url: str, key: str, client: httpx.Client) -> int:
    response = client.post(
        f"{url}/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": "bench",
            "messages": [{"role": "user", "content": "How fast are you?"}],
            "max_tokens": 16,
        },
        timeout=60,
    )
    return response.status_code


def load(
    platform: Platform, url: str, key: str, pod_uid: str, chats: int, seconds: float
) -> dict[str, float]:
    """`chats` clients chatting for `seconds`; peak pod memory sampled meanwhile."""
    latencies: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def client_loop() -> None:
        nonlocal errors
        with httpx.Client() as client:
            while time.monotonic() < stop:
                started = time.perf_counter()
                status = chat(url, key, client)
                with lock:
                    if status == 200:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1

    threads = [threading.Thread(target=client_loop) for _ in range(chats)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        peak = max(peak, pod_rss(platform.node, pod_uid))
        time.sleep(0.25)
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "peak": peak,
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan"),
        "errors": errors,
        "requests": len(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--chats", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long they chat (default 20)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentplane-bench-pods-")))
        cluster = stack.enter_context(
            running_cluster(work / "cluster", REPO / "specs" / "crds", real_node=True)
        )
        platform = stack.enter_context(deployed_platform(cluster, work / "platform"))
        print(
            f"platform ready ({', '.join(f'{k} {v:.1f}s' for k, v in platform.timings.items())})",
            file=sys.stderr,
        )
        platform.apply(tenant("bench"))
        platform.wait(
            "the bench tenant Ready", lambda: _ready(platform, "tenant", "bench", None), timeout=120
        )
        key = platform.create_key("bench")

        started = time.monotonic()
        platform.apply(*agent_objects("bench"))
        platform.wait(
            "the agent Ready", lambda: _ready(platform, "agent", "bench", "tenant-bench"), timeout=300
        )
        to_ready = time.monotonic() - started
        url = platform.route_url("bench", "bench")

        def answered() -> bool:
            try:
                with httpx.Client() as client:
                    return chat(url, key, client) == 200
            except httpx.HTTPError:
                return False

        wait_for("the first answer", answered, timeout=120, interval=0.1)
        to_answer = time.monotonic() - started
        (pod,) = platform.agent_pods("tenant-bench", "bench")
        uid = pod["metadata"]["uid"]
        time.sleep(5)
        idle = pod_rss(platform.node, uid)
        loaded = load(platform, url, key, uid, args.chats, args.seconds)

    print("| what | figure |")
    print("|---|---|")
    print(f"| runtime image (docker-archive tar) | {platform.runtime.size / MIB:.0f} MiB |")
    print(f"| operator image | {platform.operator.size / MIB:.0f} MiB |")
    print(f"| `kubectl apply` of an Agent to Ready (image on the node) | {to_ready:.1f} s |")
    print(f"| `kubectl apply` of an Agent to its first answer through the gateway | {to_answer:.1f} s |")
    print(f"| agent pod memory, idle after its first answer | {idle / MIB:.0f} MiB |")
    print(
        f"| agent pod memory, peak under {args.chats} concurrent chats ({args.seconds:.0f} s through the gateway) "
        f"| {loaded['peak'] / MIB:.0f} MiB; {loaded['rps']:.1f} req/s, p50 {loaded['p50']:.0f} ms, "
        f"p99 {loaded['p99']:.0f} ms, {loaded['errors']:.0f} errors |"
    )
    return 0


def _ready(platform: Platform, kind: str, name: str, namespace: str | None) -> bool:
    obj = platform.get(kind, name, namespace)
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


if __name__ == "__main__":
    sys.exit(main())
