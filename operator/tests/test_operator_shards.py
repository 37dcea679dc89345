"""Shards by tenant: every object belongs to exactly one shard, the one of its tenant, decided the
same way by every instance."""

from __future__ import annotations

import collections

import pytest
from pydantic import ValidationError

from agentplane_operator.manifests import SHARD_LABEL, build_operator_manifests
from agentplane_operator.settings import OperatorSettings
from agentplane_operator.shards import Shard, shard_of

STORES = {
    "redis_url": "redis://r", "database_url": "sqlite:///x", "qdrant_path": "/tmp/q",
    "runtime_qdrant_path": "/tmp/q",
}  # fmt: skip


def test_a_tenant_and_everything_in_its_namespace_belong_to_one_shard() -> None:
    shards = [Shard(i, 3) for i in range(3)]
    for tenant in ("acme", "globex", "initech", "umbrella"):
        owners = [s.index for s in shards if s.owns(tenant, None)]
        assert len(owners) == 1
        assert [s.index for s in shards if s.owns("support-bot", f"tenant-{tenant}")] == owners
        assert [s.index for s in shards if s.owns("pod-x", f"tenant-{tenant}")] == owners
    # outside any tenant's namespace: by the namespace, still exactly one
    assert sum(s.owns("knowledge-sync-1", "agentplane-system") for s in shards) == 1


def test_the_shard_of_a_tenant_is_the_same_in_every_process() -> None:
    # a digest, not Python's per-process salted hash(): two instances must agree
    assert [shard_of(t, 4) for t in ("acme", "globex", "initech")] == [0, 3, 3]
    spread = collections.Counter(shard_of(f"tenant{i}", 4) for i in range(4000))
    assert sorted(spread) == [0, 1, 2, 3]
    assert min(spread.values()) > 900  # about a quarter each


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "1/0", "0/"])
def test_a_shard_setting_that_names_no_shard_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match=r"a shard is I/N|the index is from 0 to N-1"):
        OperatorSettings(shard=text, **STORES)  # type: ignore[arg-type]


def test_each_shard_has_its_own_peering_and_deployment() -> None:
    settings = OperatorSettings(shard="1/3", **STORES)  # type: ignore[arg-type]
    assert settings.instance_shard() == Shard(1, 3)
    assert settings.peering_name() == "agentplane-1"
    assert OperatorSettings(**STORES).peering_name() == "agentplane"  # type: ignore[arg-type]

    sharded = build_operator_manifests(shards=3)
    assert [p["metadata"]["name"] for p in sharded["15-peering.yaml"]] == [
        "agentplane-0", "agentplane-1", "agentplane-2"
    ]  # fmt: skip
    deployments = [m for m in sharded["30-deployment.yaml"] if m["kind"] == "Deployment"]
    assert len(deployments) == 3
    for index, deployment in enumerate(deployments):
        env = {
            e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["AGENTPLANE_OPERATOR_SHARD"] == f"{index}/3"
        assert deployment["spec"]["selector"]["matchLabels"][SHARD_LABEL] == str(index)
    single = build_operator_manifests()
    assert [p["metadata"]["name"] for p in single["15-peering.yaml"]] == ["agentplane"]
