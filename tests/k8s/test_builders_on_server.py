"""The operator's builders produce objects the real API server accepts, that run (pods simulated by
kwok), and that server-side apply leaves untouched the second time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentplane_operator.builders import BuildSettings, build_agent_children, build_tenant_children
from agentplane_platform.contract import RuntimeStores
from agentplane_platform.specs import SpecSet
from support.cluster import Cluster
from support.example_specs import example_agent_and_config

FIELD_MANAGER = "agentplane-operator"
SETTINGS = BuildSettings(
    stores=RuntimeStores(
        database_url="postgresql://db/x", redis_url="redis://r/0", qdrant_url="http://q:6333"
    ),
    llm_secret_data={"OPENAI_API_KEY": "sk-test"},
)


def _apply(k8s: Cluster, manifests: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """Server-side apply each manifest; returns (kind/name, generation, time of our last write) after.

    The time of our field manager's entry moves only when our apply changed something (controllers
    writing status, like the quota controller, do not count).
    """
    seen = []
    for manifest in manifests:
        k8s.kubectl(
            "apply",
            "--server-side",
            f"--field-manager={FIELD_MANAGER}",
            "-f",
            "-",
            input=json.dumps(manifest),
        )
        namespace = manifest["metadata"].get("namespace")
        where = ["-n", namespace] if namespace else []
        got = k8s.kubectl_json(
            "get", manifest["kind"].lower(), manifest["metadata"]["name"], *where, "--show-managed-fields"
        )
        (ours,) = [m for m in got["metadata"]["managedFields"] if m["manager"] == FIELD_MANAGER]
        seen.append(
            (
                f"{manifest['kind']}/{manifest['metadata']['name']}",
                got["metadata"].get("generation", 0),
                ours["time"],
            )
        )
    return seen


@pytest.fixture(scope="module")
def globex(k8s: Cluster, specs: SpecSet) -> Iterator[list[dict[str, Any]]]:
    original = specs.tenants["globex"].resource
    # A tenant of its own, so other modules can use tenant-globex while this namespace is deleted.
    tenant = original.model_copy(
        update={"metadata": original.metadata.model_copy(update={"name": "builders"})}
    )
    manifests = build_tenant_children(tenant, SETTINGS)
    agent, config = example_agent_and_config(specs, "tenant-globex", "oncall-helper", tenant=tenant)
    manifests += build_agent_children(agent, config, SETTINGS)
    yield manifests
    k8s.kubectl("delete", "namespace", tenant.namespace, "--ignore-not-found", "--wait=false")


def test_children_are_accepted_run_and_reapply_as_no_op(k8s: Cluster, globex: list[dict[str, Any]]) -> None:
    first = _apply(k8s, globex)
    deadline = time.monotonic() + 90
    while True:
        deployment = k8s.kubectl_json("get", "deployment", "oncall-helper", "-n", "tenant-builders")
        conditions = {c["type"]: c["status"] for c in deployment.get("status", {}).get("conditions", [])}
        if conditions.get("Available") == "True" and deployment["status"].get("readyReplicas") == 1:
            break
        assert time.monotonic() < deadline, f"Deployment never became available: {deployment.get('status')}"
        time.sleep(0.5)
    pods = k8s.kubectl_json("get", "pods", "-n", "tenant-builders", "-l", "agentplane.io/agent=oncall-helper")
    (pod,) = pods["items"]
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["status"]["phase"] == "Running"
    time.sleep(1.1)  # managedFields times have one-second resolution
    second = _apply(k8s, globex)
    assert second == first, "server-side apply of unchanged manifests must not write"
