"""The operator killed mid-batch, run as two replicas, and deleting tenants under each policy."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from k8s.operator_specs import agent, prompt, tenant

from agentplane_platform.knowledge import VectorStore
from support.cluster import Cluster
from support.operator_process import (
    OperatorProcess,
    apply,
    condition,
    delete_tenants,
    events,
    get,
    install_operator_rbac,
    start_operator,
)
from support.services import Server, create_database
from support.waiting import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.postgres, pytest.mark.redis]


@dataclass
class Env:
    k8s: Cluster
    kubeconfig: Path
    workdir: Path
    database_url: str
    redis_url: str

    def start(self, qdrant: str = "qdrant") -> OperatorProcess:
        """An operator; replicas need a `qdrant` path each (local mode is single-process; in
        production they share a Qdrant server)."""
        return start_operator(
            self.k8s, self.kubeconfig, self.workdir, redis_url=self.redis_url,
            database_url=self.database_url, qdrant_path=self.workdir / qdrant,
        )  # fmt: skip


@pytest.fixture
def env(k8s: Cluster, postgres: Server, redis_server: Server, tmp_path: Path) -> Env:
    database = create_database(postgres, f"operator_{tmp_path.name.replace('-', '_')[:40]}")
    return Env(
        k8s,
        install_operator_rbac(k8s, tmp_path),
        tmp_path,
        database,
        redis_server.url.rsplit("/", 1)[0] + "/4",
    )


def _deployments(k8s: Cluster, namespace: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(
        k8s.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout
    )["items"]
    return listed


def _all_ready(k8s: Cluster, namespace: str, count: int) -> bool:
    return len(_ready_agents(k8s, namespace)) == count


def _tenant_ready(k8s: Cluster, name: str) -> bool:
    return condition(get(k8s, "tenant", name)).get("status") == "True"


def _ready_agents(k8s: Cluster, namespace: str) -> list[str]:
    listed = json.loads(k8s.kubectl("get", "agents", "-n", namespace, "-o", "json").stdout)["items"]
    return [a["metadata"]["name"] for a in listed if condition(a).get("status") == "True"]


def test_killed_mid_batch_it_converges_without_duplicates(env: Env) -> None:
    k8s, per_tenant = env.k8s, 12
    names = ("crash-a", "crash-b")
    first = env.start()
    delete_tenants(k8s, *names)  # leftovers of an earlier run on a reused cluster
    for name in names:
        apply(k8s, tenant(name, quotas={"maxAgents": per_tenant, "compute": {"pods": 100}}))
    wait_for("namespaces", lambda: all(get(k8s, "namespace", f"tenant-{n}") for n in names))
    for name in names:
        ns = f"tenant-{name}"
        apply(k8s, prompt(ns, "assistant"), *(agent(ns, f"agent-{i:02}") for i in range(per_tenant)))
    wait_for(
        "a few Deployments",
        lambda: sum(len(_deployments(k8s, f"tenant-{n}")) for n in names) >= 3,
        timeout=60,
        interval=0.05,
    )
    first.kill()
    done_before = sum(len(_ready_agents(k8s, f"tenant-{n}")) for n in names)
    assert done_before < per_tenant * len(names), "the kill came too late to interrupt anything"

    second = env.start()
    try:
        for name in names:
            ns = f"tenant-{name}"
            wait_for(
                f"every agent of {name} Ready",
                partial(_all_ready, k8s, ns, per_tenant),
                timeout=120,
            )
            deployments = _deployments(k8s, ns)
            assert sorted(d["metadata"]["name"] for d in deployments) == [
                f"agent-{i:02}" for i in range(per_tenant)
            ]
            for i in range(per_tenant):
                obj = get(k8s, "agent", f"agent-{i:02}", ns)
                config_map = get(k8s, "configmap", f"agent-agent-{i:02}", ns)
                deployment = get(k8s, "deployment", f"agent-{i:02}", ns)
                assert obj is not None
                assert config_map is not None
                assert deployment is not None
                annotation = "agentplane.io/config-hash"
                assert obj["status"]["configHash"] == config_map["metadata"]["annotations"][annotation]
                assert (
                    deployment["spec"]["template"]["metadata"]["annotations"][annotation]
                    == obj["status"]["configHash"]
                )
                assert [o["uid"] for o in deployment["metadata"]["ownerReferences"]] == [
                    obj["metadata"]["uid"]
                ]
            services = json.loads(k8s.kubectl("get", "services", "-n", ns, "-o", "json").stdout)["items"]
            assert len(services) == per_tenant
        assert "Traceback" not in second.log_text()
    finally:
        delete_tenants(k8s, *names)
        second.stop()


def test_two_replicas_one_active(env: Env) -> None:
    k8s = env.k8s
    resuming = "Resuming operations after the pause"
    first = env.start()
    second: OperatorProcess | None = None
    try:
        wait_for("the first replica active", lambda: resuming in first.log_text())
        second = env.start(qdrant="qdrant-2")
        # The newcomer either stands by from the start (lower priority: it never resumes) or takes
        # over (higher priority: the first one pauses in its favour).
        deadline = time.monotonic() + 10
        wait_for(
            "one replica standing by",
            lambda: (
                "Pausing operations in favour of" in first.log_text()
                or (time.monotonic() > deadline and resuming not in second.log_text())
            ),
        )
        replicas = (first, second)
        before = [o.reconciles(kind="Tenant") for o in replicas]
        apply(k8s, tenant("duo"))
        wait_for("tenant duo Ready", partial(_tenant_ready, k8s, "duo"))
        done = sorted(o.reconciles(kind="Tenant") - b for o, b in zip(replicas, before, strict=True))
        assert done[0] == 0  # the standby did nothing
        assert done[1] >= 1
        delete_tenants(k8s, "duo")
        # SIGTERM: kopf stops, and the process exits 0 without the interpreter's teardown, its log
        # written to the end
        first.stop()
        assert first.process.returncode == 0
        assert first.log_text().rstrip().splitlines()[-1].endswith("the operator stopped")
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def _collections(path: Path) -> set[str]:
    store = VectorStore.connect(path=path)
    try:
        return {c.name for c in (await store.client.get_collections()).collections}
    finally:
        await store.close()


def test_deleting_a_tenant_follows_its_deletion_policy(env: Env) -> None:
    k8s = env.k8s
    kb = [{"name": "kb", "embeddingModel": "local/all-MiniLM-L6-v2", "dimensions": 384}]
    operator = env.start()
    try:
        apply(k8s, tenant("keeper", knowledgeBases=kb, deletionPolicy="Retain"))
        apply(k8s, tenant("wiper", knowledgeBases=kb, deletionPolicy="Delete"))
        for name in ("keeper", "wiper"):
            wait_for(f"{name} Ready", partial(_tenant_ready, k8s, name))
        delete_tenants(k8s, "keeper", "wiper")
        reasons = {name: {r: m for _, r, m in events(k8s, "default", name)} for name in ("keeper", "wiper")}
    finally:
        operator.stop()
    assert "keeper--kb" in reasons["keeper"]["DataRetained"]
    assert "wiper--kb" in reasons["wiper"]["DataDeleted"]
    collections = asyncio.run(_collections(env.workdir / "qdrant"))
    assert "keeper--kb" in collections
    assert "wiper--kb" not in collections
    client = redis.Redis.from_url(env.redis_url, decode_responses=True)
    try:
        assert client.exists("agentplane:quota:keeper:limits") == 1
        assert client.exists("agentplane:quota:wiper:limits") == 0
    finally:
        client.close()
    with psycopg.connect(env.database_url) as conn:
        rows = conn.execute("SELECT tenant FROM tenant_quotas ORDER BY tenant").fetchall()
    assert rows == [("keeper",)]
