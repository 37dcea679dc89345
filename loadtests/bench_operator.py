"""Benchmark: the operator converging 50 tenants x 20 agents on a fresh control plane.

Run: uv run python loadtests/bench_operator.py [--tenants 50] [--agents 20]

Starts everything the tests use (control plane with kwok nodes, PostgreSQL, Redis), the operator
as its own ServiceAccount, then creates every Tenant, Prompt and Agent at once and measures:
- the time from the first `kubectl apply` until every Agent is Ready (its pods, simulated by kwok,
  available with the current config hash);
- write requests per Agent: the operator's own (its `agentplane_operator_api_writes_total`, for the
  kinds an Agent owns, plus its Agent status patches) and kopf's bookkeeping patches of Agents
  (from the API server's `apiserver_request_total`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from k8s.operator_specs import agent, builtin_tool, prompt, tenant  # noqa: E402

from support.cluster import Cluster, running_cluster  # noqa: E402
from support.operator_process import install_operator_rbac, start_operator  # noqa: E402
from support.services import start_postgres, start_redis  # noqa: E402
from support.waiting import wait_for  # noqa: E402

AGENT_KINDS = (
    "ConfigMap",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Agent",
)


def _ready_count(cluster: Cluster) -> int:
    listed = json.loads(cluster.kubectl("get", "agents", "-A", "-o", "json", timeout=300).stdout)["items"]
    return sum(
        1
        for a in listed
        for c in a.get("status", {}).get("conditions", [])
        if c["type"] == "Ready" and c["status"] == "True"
    )


def _hashes(cluster: Cluster, namespace: str) -> dict[str, str]:
    listed = json.loads(cluster.kubectl("get", "agents", "-n", namespace, "-o", "json").stdout)["items"]
    return {a["metadata"]["name"]: a.get("status", {}).get("configHash", "") for a in listed}


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _kopf_agent_patches(cluster: Cluster) -> float:
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'resource="agents"' in line
            and 'verb="PATCH"' in line
        ):
            if 'subresource=""' in line or "subresource=" not in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--agents", type=int, default=20)
    args = parser.parse_args()
    n_agents = args.tenants * args.agents

    with tempfile.TemporaryDirectory(prefix="agentplane-bench-op-") as tmp:
        work = Path(tmp)
        postgres, redis = start_postgres(work / "pg"), start_redis(work / "redis")
        try:
            with running_cluster(work / "cluster", REPO / "specs" / "crds") as cluster:
                kubeconfig = install_operator_rbac(cluster, work)
                operator = start_operator(
                    cluster, kubeconfig, work, redis_url=redis.url, database_url=postgres.url,
                    qdrant_path=work / "qdrant",
                )  # fmt: skip
                try:
                    names = [f"bench-{i:03}" for i in range(args.tenants)]
                    started = time.perf_counter()
                    tenants = [
                        tenant(
                            n,
                            quotas={
                                "maxAgents": args.agents,
                                "compute": {"pods": args.agents * 2, "cpu": "64", "memory": "256Gi"},
                            },
                        )
                        for n in names
                    ]
                    cluster.kubectl(
                        "apply", "-f", "-", input="\n---\n".join(json.dumps(t) for t in tenants), timeout=300
                    )
                    wait_for("namespaces", lambda: all(
                        cluster.kubectl("get", "namespace", f"tenant-{n}", check=False).returncode == 0 for n in names
                    ), timeout=300, interval=1)  # fmt: skip
                    for n in names:
                        ns = f"tenant-{n}"
                        docs = [prompt(ns, "assistant"), builtin_tool(ns)]
                        docs += [
                            agent(ns, f"agent-{i:02}", tools=[{"name": "calculator"}])
                            for i in range(args.agents)
                        ]
                        cluster.kubectl(
                            "apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs), timeout=300
                        )
                    applied = time.perf_counter() - started
                    wait_for(
                        "every Agent Ready",
                        lambda: _ready_count(cluster) == n_agents,
                        timeout=1800,
                        interval=2,
                    )
                    converged = time.perf_counter() - started
                    time.sleep(5)  # let trailing status writes land before counting
                    writes = {
                        kind: operator.total("agentplane_operator_api_writes_total", kind=kind)
                        for kind in AGENT_KINDS
                    }
                    prompt_maps = args.tenants  # one ConfigMap per Prompt version, not an Agent's
                    own = sum(writes.values()) - prompt_maps
                    kopf = _kopf_agent_patches(cluster)
                    peak_mib = _peak_rss_mib(operator.process.pid)
                    # One Prompt change: a new default for its variable changes every dependent's config.
                    ns = f"tenant-{names[0]}"
                    hashes = _hashes(cluster, ns)
                    changed_at = time.perf_counter()
                    bumped = prompt(ns, "assistant")
                    bumped["spec"]["variables"][0]["default"] = "a concise assistant"
                    cluster.kubectl("apply", "-f", "-", input=json.dumps(bumped))
                    wait_for("every dependent's new config hash", lambda: all(
                        h != hashes[n] for n, h in _hashes(cluster, ns).items()
                    ), timeout=300, interval=0.2)  # fmt: skip
                    dependents = time.perf_counter() - changed_at
                finally:
                    operator.stop()
        finally:
            postgres.stop()
            redis.stop()

    print(f"{args.tenants} tenants x {args.agents} agents = {n_agents} agents")
    print(f"  all objects applied after      {applied:6.1f} s")
    print(f"  every Agent Ready after        {converged:6.1f} s")
    print(
        f"  operator writes per Agent      {own / n_agents:6.2f}  ({', '.join(f'{k} {int(v)}' for k, v in writes.items())})"
    )
    print(f"  kopf bookkeeping per Agent     {kopf / n_agents:6.2f}  (PATCH of the Agent object)")
    print(f"  total writes per Agent         {(own + kopf) / n_agents:6.2f}")
    print(f"  operator peak memory (RSS)     {peak_mib:6.0f} MiB")
    print(f"  one Prompt change -> all {args.agents} dependents' new config hash: {dependents:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
