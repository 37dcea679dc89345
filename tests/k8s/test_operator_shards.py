"""Two operator instances as two shards of the tenants, on one control plane: each reconciles only
its own tenants, under a peering of its own, and together they serve every tenant."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from k8s.operator_specs import agent, prompt, tenant

from agentplane_operator.manifests import build_operator_manifests
from agentplane_operator.shards import shard_of
from support.cluster import Cluster
from support.operator_process import (
    OperatorProcess,
    apply,
    condition,
    delete_tenants,
    get,
    install_operator_rbac,
    start_operator,
)
from support.services import Server, create_database
from support.waiting import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.postgres, pytest.mark.redis]

CANDIDATES = ("hydra", "ursa", "cetus", "draco", "lepus", "pyxis", "carina", "volans")
# a tenant of each shard of two (the shard of a name is fixed: `shards.shard_of`)
TENANTS = tuple(next(t for t in CANDIDATES if shard_of(t, 2) == index) for index in (0, 1))


@pytest.fixture
def shards(
    k8s: Cluster, postgres: Server, redis_server: Server, tmp_path: Path
) -> Iterator[list[OperatorProcess]]:
    kubeconfig = install_operator_rbac(k8s, tmp_path)
    apply(k8s, *build_operator_manifests(shards=2)["15-peering.yaml"])
    database = create_database(postgres, "operator_shards")
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/6"
    delete_tenants(k8s, *TENANTS)
    running: list[OperatorProcess] = []
    try:
        for index in (0, 1):
            running.append(
                start_operator(
                    k8s,
                    kubeconfig,
                    tmp_path,
                    redis_url=redis_url,
                    database_url=database,
                    qdrant_path=tmp_path / f"qdrant-{index}",
                    extra_env={"AGENTPLANE_OPERATOR_SHARD": f"{index}/2"},
                )
            )
        yield running
        delete_tenants(k8s, *TENANTS)
    finally:
        for operator in running:
            operator.stop()


def _ready(k8s: Cluster, kind: str, name: str, namespace: str | None = None) -> bool:
    return condition(get(k8s, kind, name, namespace)).get("status") == "True"


def test_each_shard_reconciles_its_own_tenants_and_together_every_tenant(
    k8s: Cluster, shards: list[OperatorProcess]
) -> None:
    for name in TENANTS:
        apply(k8s, tenant(name))
    for name in TENANTS:  # its namespace is the shard's to create: wait for it
        wait_for(f"Tenant {name} Ready", partial(_ready, k8s, "tenant", name))
        ns = f"tenant-{name}"
        apply(k8s, prompt(ns, "assistant"), agent(ns, "helper"))
    for ns in (f"tenant-{name}" for name in TENANTS):
        wait_for(f"Agent {ns}/helper Ready", partial(_ready, k8s, "agent", "helper", ns))
    for index, operator in enumerate(shards):
        own, other = TENANTS[index], TENANTS[1 - index]
        # the Agent's time to Ready is observed by the shard that wrote its Ready
        ready = "agentplane_operator_agent_ready_seconds_count"
        assert operator.total(ready, namespace=f"tenant-{own}") == 1, f"shard {index} never readied its Agent"
        assert operator.total(ready, namespace=f"tenant-{other}") == 0, f"shard {index} readied the other's"
        limits = "agentplane_tenant_tokens_per_minute"  # set by the Tenant's reconcile
        assert (operator.total(limits, tenant=own), operator.total(limits, tenant=other)) == (5000, 0)
        assert f"tenant-{other}" not in operator.log_text(), f"shard {index} touched the other shard's tenant"
    # each keeps its own peering alive (of a shard's replicas, one is active)
    for index in (0, 1):
        peering = get(k8s, "clusterkopfpeering", f"agentplane-{index}")
        assert peering is not None
        assert len(peering.get("status") or {}) == 1, peering
