"""The operator, running for real against the test control plane, PostgreSQL and Redis.

One operator process serves the whole module (resync every 3 s, so drift repair and "a second
reconcile writes nothing" are observable); each test works in tenants of its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from k8s.operator_specs import agent, builtin_tool, http_tool, prompt, tenant

from agentplane_platform.api.v1alpha1 import Agent, Prompt, Tenant, Tool
from agentplane_platform.config import AgentConfig, resolve_agent
from agentplane_platform.contract import LLM_SECRET, RUNTIME_SECRET, RUNTIME_SECRET_KEYS
from agentplane_platform.mcp import parameters_hash
from support.addons import kstatus
from support.cluster import Cluster
from support.mcp_server import orders_mcp_in_thread
from support.operator_process import (
    OperatorProcess,
    apply,
    condition,
    delete_tenants,
    events,
    get,
    install_llm_secret,
    install_operator_rbac,
    start_operator,
)
from support.prometheus import check_metrics
from support.services import Server, create_database
from support.waiting import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.postgres, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]
RESYNC = 3.0


@pytest.fixture(scope="module")
def stores(postgres: Server, redis_server: Server) -> tuple[str, str]:
    """A database of this module's own and a Redis database index of its own."""
    return create_database(postgres, "operator_lifecycle"), redis_server.url.rsplit("/", 1)[0] + "/3"


@pytest.fixture(scope="module")
def operator(
    k8s: Cluster, stores: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    kubeconfig = install_operator_rbac(k8s, workdir)
    database_url, redis_url = stores
    running = start_operator(
        k8s, kubeconfig, workdir, redis_url=redis_url, database_url=database_url,
        qdrant_path=workdir / "qdrant", resync_seconds=RESYNC,
    )  # fmt: skip
    yield running
    running.stop()


TENANTS = (
    "acme", "globex", "orbit", "vega", "lyra", "nova", "sirius", "deneb", "rigel", "altair", "kappa", "mira",
    "polaris",
)  # fmt: skip
"""Every tenant this module creates; each test works in its own."""


@pytest.fixture(scope="module", autouse=True)
def clean_tenants(k8s: Cluster, operator: OperatorProcess) -> Iterator[None]:
    """Start from no tenants of ours (a reused cluster may hold them) and leave none behind."""
    delete_tenants(k8s, *TENANTS)
    yield
    delete_tenants(k8s, *TENANTS)


def ready(
    k8s: Cluster, kind: str, name: str, namespace: str | None = None, timeout: float = 60
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(k8s, kind, name, namespace)
        ok = condition(obj).get("status") == "True"
        generation = (obj or {}).get("metadata", {}).get("generation")
        return obj if ok and (obj or {}).get("status", {}).get("observedGeneration") == generation else None

    return wait_for(f"{kind} {namespace or ''}/{name} Ready", probe, timeout=timeout)


def until(
    k8s: Cluster, what: str, kind: str, name: str, namespace: str | None,
    predicate: Callable[[dict[str, Any]], bool], timeout: float = 60,
) -> dict[str, Any]:  # fmt: skip
    """Wait until the object exists and `predicate` holds for it."""

    def probe() -> dict[str, Any] | None:
        obj = get(k8s, kind, name, namespace)
        return obj if obj is not None and predicate(obj) else None

    return wait_for(what, probe, timeout=timeout)


def not_ready(k8s: Cluster, kind: str, name: str, namespace: str, reason: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(k8s, kind, name, namespace)
        return obj if condition(obj).get("reason") == reason else None

    return wait_for(f"{kind} {namespace}/{name} Ready=False {reason}", probe)


def test_the_example_specs_converge(k8s: Cluster, operator: OperatorProcess) -> None:
    """`kubectl apply` of specs/ as a tenant team or Flux would: Tenants first, then the rest."""
    examples = REPO / "specs" / "tenants"
    for name in ("acme", "globex"):
        k8s.kubectl("apply", "-f", str(examples / name / "tenant.yaml"))
    acme = ready(k8s, "tenant", "acme")
    ready(k8s, "tenant", "globex")
    k8s.kubectl("apply", "-R", "-f", str(examples))
    for namespace, name in (
        ("tenant-acme", "support-bot"),
        ("tenant-acme", "legacy-support-bot"),
        ("tenant-acme", "billing-assistant"),
        ("tenant-globex", "oncall-helper"),
    ):
        ready(k8s, "agent", name, namespace, timeout=120)
    assert [(kb["collection"], kb["ready"]) for kb in acme["status"]["knowledgeBases"]] == [
        ("acme--help-center", True),
        ("acme--billing-policies", True),
    ]
    assert _resolved(k8s, "tenant-acme", "legacy-support-bot").prompt.version == 1
    assert _resolved(k8s, "tenant-acme", "support-bot").prompt.version == 2
    assert get(k8s, "hpa", "support-bot", "tenant-acme") is not None
    assert get(k8s, "pdb", "billing-assistant", "tenant-acme") is not None
    assert get(k8s, "pdb", "legacy-support-bot", "tenant-acme") is None
    support = ready(k8s, "prompt", "support", "tenant-acme")
    assert [v["configMap"] for v in support["status"]["versions"]] == [
        "prompt-support-v1",
        "prompt-support-v2",
    ]
    # The examples reference Secrets nobody created: the Tools say so.
    not_ready(k8s, "tool", "order-lookup", "tenant-acme", "SecretNotFound")
    not_ready(k8s, "tool", "incident-timeline", "tenant-globex", "SecretNotFound")
    ready(k8s, "tool", "calculator", "tenant-globex")


def test_a_tenant_becomes_its_namespace_policies_collections_and_quota_records(
    k8s: Cluster, operator: OperatorProcess, stores: tuple[str, str]
) -> None:
    spec = tenant(
        "orbit",
        knowledgeBases=[
            {"name": "manuals", "embeddingModel": "local/all-MiniLM-L6-v2", "dimensions": 384},
            {
                "name": "tickets",
                "embeddingModel": "azure/text-embedding-3-small",
                "dimensions": 1536,
                "distance": "Dot",
            },
        ],
        egress=[{"host": "api.orbit.example"}],
    )
    apply(k8s, spec)
    obj = ready(k8s, "tenant", "orbit")
    status = obj["status"]
    assert status["namespace"] == "tenant-orbit"
    assert [(kb["collection"], kb["ready"]) for kb in status["knowledgeBases"]] == [
        ("orbit--manuals", True),
        ("orbit--tickets", True),
    ]
    assert "agentplane.io/finalizer" in obj["metadata"]["finalizers"]

    namespace = get(k8s, "namespace", "tenant-orbit")
    assert namespace is not None
    assert namespace["metadata"]["labels"]["agentplane.io/tenant"] == "orbit"
    assert namespace["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    quotas = json.loads(k8s.kubectl("get", "resourcequota", "-n", "tenant-orbit", "-o", "json").stdout)[
        "items"
    ]
    assert quotas
    assert quotas[0]["spec"]["hard"]["pods"] == "50"
    policies = {
        p["metadata"]["name"]
        for p in json.loads(k8s.kubectl("get", "networkpolicy", "-n", "tenant-orbit", "-o", "json").stdout)[
            "items"
        ]
    }
    assert len(policies) >= 2
    binding = json.loads(k8s.kubectl("get", "rolebinding", "-n", "tenant-orbit", "-o", "json").stdout)[
        "items"
    ][0]
    assert binding["roleRef"]["name"] == "agentplane-tenant-editor"
    assert binding["subjects"][0]["name"] == "orbit-team"

    database_url, redis_url = stores
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.hgetall("agentplane:quota:orbit:limits") == {
            "tokens_per_minute": "5000",
            "requests_per_minute": "60",
            "monthly_budget_usd": "25.0",
        }
    finally:
        client.close()
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT tokens_per_minute, requests_per_minute, monthly_budget_usd FROM tenant_quotas WHERE tenant = 'orbit'"
        ).fetchone()
    assert row == (5000, 60, 25.0)

    # A quota change is written through to both stores; no pods roll for it.
    apply(
        k8s,
        tenant(
            "orbit",
            quotas={"llm": {"tokensPerMinute": 9000}},
            knowledgeBases=spec["spec"]["knowledgeBases"],
            egress=spec["spec"]["egress"],
        ),
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        wait_for(
            "new limits in Redis",
            lambda: client.hget("agentplane:quota:orbit:limits", "tokens_per_minute") == "9000",
        )
    finally:
        client.close()


def test_an_incompatible_knowledge_base_change_is_reported_not_applied(
    k8s: Cluster, operator: OperatorProcess
) -> None:
    kbs = [{"name": "docs", "embeddingModel": "local/all-MiniLM-L6-v2", "dimensions": 384}]
    apply(k8s, tenant("vega", knowledgeBases=kbs, deletionPolicy="Delete"))
    ready(k8s, "tenant", "vega")
    kbs[0]["dimensions"] = 768
    apply(k8s, tenant("vega", knowledgeBases=kbs, deletionPolicy="Delete"))
    obj = not_ready(k8s, "tenant", "vega", "", "CollectionIncompatible")
    (kb,) = obj["status"]["knowledgeBases"]
    assert kb["ready"] is False
    assert "384 dimensions" in kb["message"]
    assert "768" in kb["message"]
    assert ("Warning", "CollectionIncompatible") in [(t, r) for t, r, _ in events(k8s, "default", "vega")]


def _resolved(k8s: Cluster, namespace: str, name: str) -> AgentConfig:
    config_map = get(k8s, "configmap", f"agent-{name}", namespace)
    assert config_map is not None
    return AgentConfig.model_validate_json(config_map["data"]["agent.json"])


def test_an_agent_runs_with_its_resolved_config(k8s: Cluster, operator: OperatorProcess) -> None:
    ns = "tenant-lyra"
    apply(k8s, tenant("lyra"))
    ready(k8s, "tenant", "lyra")
    apply(k8s, prompt(ns, "assistant"), builtin_tool(ns))
    apply(
        k8s,
        agent(ns, "helper", tools=[{"name": "calculator"}], runtime={"replicas": 2}),
        agent(ns, "scaler", runtime={"autoscaling": {"minReplicas": 2, "maxReplicas": 4}}),
    )
    helper = ready(k8s, "agent", "helper", ns)
    config = _resolved(k8s, ns, "helper")
    expected = resolve_agent(
        Agent.model_validate(helper),
        Tenant.model_validate(get(k8s, "tenant", "lyra")),
        {"assistant": Prompt.model_validate(get(k8s, "prompt", "assistant", ns))},
        {"calculator": Tool.model_validate(get(k8s, "tool", "calculator", ns))},
    )
    assert config == expected
    status = helper["status"]
    assert status["configHash"] == config.hash()
    assert status["endpoint"] == "http://helper.tenant-lyra.svc.cluster.local/v1"
    assert status["replicas"] == 2
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "ConfigResolved": "True",
        "Deployed": "True",
    }

    deployment = get(k8s, "deployment", "helper", ns)
    assert deployment is not None
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["agentplane.io/config-hash"] == config.hash()
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.test/agentplane/runtime:test"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= set(container)
    assert deployment["metadata"]["ownerReferences"][0]["name"] == "helper"
    assert get(k8s, "service", "helper", ns) is not None
    assert get(k8s, "pdb", "helper", ns) is not None
    assert get(k8s, "hpa", "helper", ns) is None

    ready(k8s, "agent", "scaler", ns)
    assert get(k8s, "hpa", "scaler", ns) is not None
    # Autoscaling off again: the HPA goes, the Deployment gets a fixed replica count.
    apply(k8s, agent(ns, "scaler", runtime={"replicas": 1}))
    wait_for("the HPA removed", lambda: get(k8s, "hpa", "scaler", ns) is None)
    wait_for("the PDB removed", lambda: get(k8s, "pdb", "scaler", ns) is None)
    ready(k8s, "agent", "scaler", ns)


def test_a_prompt_publishes_a_config_map_per_version(k8s: Cluster, operator: OperatorProcess) -> None:
    ns = "tenant-lyra"
    ready(k8s, "tenant", "lyra")
    apply(k8s, prompt(ns, "greeter", version=1, template="Hello from v1, {{ persona }}."))
    ready(k8s, "prompt", "greeter", ns)
    apply(
        k8s,
        prompt(
            ns, "greeter", version=2, template="Hello from v2, {{ persona }}.",
            previousVersions=[{"version": 1, "template": "Hello from v1, {{ persona }}.", "variables": [{"name": "persona", "default": "a helpful assistant"}]}],
        ),
    )  # fmt: skip
    obj = until(
        k8s, "two versions in status", "prompt", "greeter", ns,
        lambda p: len(p.get("status", {}).get("versions", [])) == 2,
    )  # fmt: skip
    assert [(v["version"], v["configMap"]) for v in obj["status"]["versions"]] == [
        (1, "prompt-greeter-v1"),
        (2, "prompt-greeter-v2"),
    ]
    v2 = get(k8s, "configmap", "prompt-greeter-v2", ns)
    assert v2 is not None
    assert v2["data"]["template"] == "Hello from v2, {{ persona }}."
    # Dropping v1 from the kept versions removes its ConfigMap.
    apply(k8s, prompt(ns, "greeter", version=2, template="Hello from v2, {{ persona }}."))
    wait_for("v1's ConfigMap removed", lambda: get(k8s, "configmap", "prompt-greeter-v1", ns) is None)


def test_failures_end_in_conditions_and_events(k8s: Cluster, operator: OperatorProcess) -> None:
    ns = "tenant-nova"
    apply(k8s, tenant("nova", allowedTools=["calculator"], quotas={"maxAgents": 2}))
    ready(k8s, "tenant", "nova")
    apply(k8s, prompt(ns, "assistant"), builtin_tool(ns), http_tool(ns, "lookup", secret="lookup-api"))
    apply(k8s, agent(ns, "no-prompt", prompt_name="missing"))
    apply(k8s, agent(ns, "bad-model", model={"name": "anthropic/claude-3"}))
    not_ready(k8s, "agent", "no-prompt", ns, "PromptNotFound")
    bad = not_ready(k8s, "agent", "bad-model", ns, "ModelNotAllowed")
    assert condition(bad, "ConfigResolved")["status"] == "False"
    # what will not fix itself is Stalled (kstatus: Failed), so a GitOps health check fails at once
    assert (condition(bad, "Stalled")["status"], condition(bad, "Stalled")["reason"]) == (
        "True",
        "ModelNotAllowed",
    )
    assert condition(bad, "Reconciling") == {}
    assert ("Warning", "ModelNotAllowed") in [(t, r) for t, r, _ in events(k8s, ns, "bad-model")]
    apply(k8s, agent(ns, "over-quota"))  # the third Agent of a tenant allowing two
    not_ready(k8s, "agent", "over-quota", ns, "QuotaExceeded")
    assert get(k8s, "deployment", "over-quota", ns) is None

    # Freeing a slot admits it; fixing the model makes the other resolve.
    k8s.kubectl("delete", "agent", "no-prompt", "-n", ns)
    ready(k8s, "agent", "over-quota", ns)
    apply(k8s, agent(ns, "bad-model", tools=[{"name": "lookup"}]))
    not_ready(k8s, "agent", "bad-model", ns, "ToolNotAllowed")

    # A Tool whose Secret is missing says so, and recovers when the Secret appears.
    tool = not_ready(k8s, "tool", "lookup", ns, "SecretNotFound")
    assert "lookup-api" in condition(tool)["message"]
    assert ("Warning", "SecretNotFound") in [(t, r) for t, r, _ in events(k8s, ns, "lookup")]
    k8s.kubectl("create", "secret", "generic", "lookup-api", "-n", ns, "--from-literal=token=s3cret")
    ready(k8s, "tool", "lookup", ns, timeout=RESYNC * 5)
    log = operator.log_text()
    assert "Traceback" not in log
    # a line for each change handled, none for each watch event
    assert "Handler 'tenant_changed' succeeded." in log
    assert "Handler 'agent_event' succeeded." not in log


def test_an_mcp_tools_schema_is_discovered_into_its_status_and_agents(
    k8s: Cluster, operator: OperatorProcess
) -> None:
    ns = "tenant-mira"

    def mcp_tool(name: str, url: str, tool: str) -> dict[str, Any]:
        spec = {"type": "mcp", "description": "Orders", "url": url, "tool": tool,
                "auth": {"header": "X-Api-Key", "scheme": "", "secretRef": {"kubernetes": {"name": "orders-mcp", "key": "token"}}}}  # fmt: skip
        return {"apiVersion": "agentplane.io/v1alpha1", "kind": "Tool",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}  # fmt: skip

    with orders_mcp_in_thread() as orders:
        (listed,) = [t for t in asyncio.run(orders.server().list_tools()) if t.name == "lookup_order"]
        apply(k8s, tenant("mira", egress=[{"cidr": "127.0.0.1/32", "ports": [orders.port]}]))
        ready(k8s, "tenant", "mira")
        k8s.kubectl("create", "secret", "generic", "orders-mcp", "-n", ns, "--from-literal=token=s3cret")
        apply(k8s, prompt(ns, "assistant"), mcp_tool("orders", orders.url, "lookup_order"))
        apply(k8s, agent(ns, "clerk", tools=[{"name": "orders"}]))
        tool = ready(k8s, "tool", "orders", ns)
        found = tool["status"]["discovered"]
        assert json.loads(found["parameters"]) == listed.input_schema
        assert found["parametersHash"] == parameters_hash(listed.input_schema)
        assert (found["tool"], found["url"]) == ("lookup_order", orders.url)
        assert condition(tool, "SchemaDiscovered")["reason"] == "Discovered"
        assert {s.api_key for s in orders.seen if s.rpc_method == "tools/list"} == {"s3cret"}
        ready(k8s, "agent", "clerk", ns)
        (resolved,) = _resolved(k8s, ns, "clerk").tools
        assert resolved.parameters == listed.input_schema

        # a tool the server does not list: the Tool says why (and is retried), its Agent waits for it
        apply(
            k8s,
            mcp_tool("renamed", orders.url, "no_such_tool"),
            agent(ns, "waiter", tools=[{"name": "renamed"}]),
        )
        renamed = not_ready(k8s, "tool", "renamed", ns, "DiscoveryFailed")
        assert "lists no tool 'no_such_tool'" in condition(renamed)["message"]
        assert "discovered" not in renamed["status"]
        waiter = not_ready(k8s, "agent", "waiter", ns, "ToolNotDiscovered")
        assert condition(waiter, "Reconciling")["reason"] == "ToolNotDiscovered"  # not Stalled: it may come
        # the server lists it once the Tool names it: discovered, and the waiting Agent resolves
        apply(k8s, mcp_tool("renamed", orders.url, "lookup_order"))
        ready(k8s, "agent", "waiter", ns, timeout=RESYNC * 10)
    assert "Traceback" not in operator.log_text()


def test_a_dependency_change_reconciles_exactly_its_agents(k8s: Cluster, operator: OperatorProcess) -> None:
    ns = "tenant-sirius"
    apply(k8s, tenant("sirius"))
    ready(k8s, "tenant", "sirius")
    apply(k8s, prompt(ns, "assistant"), prompt(ns, "other"))
    apply(
        k8s,
        agent(ns, "pinned-v2", version=2),
        agent(ns, "pinned-v1"),
        agent(ns, "unrelated", prompt_name="other"),
    )
    not_ready(k8s, "agent", "pinned-v2", ns, "PromptVersionNotFound")
    v1 = ready(k8s, "agent", "pinned-v1", ns)
    ready(k8s, "agent", "unrelated", ns)

    before = operator.reconciles(kind="Agent", cause="dependency")
    apply(
        k8s,
        prompt(
            ns, "assistant", version=2, template="Version two, {{ persona }}.",
            previousVersions=[{"version": 1, "template": "You are {{ persona }}.", "variables": [{"name": "persona", "default": "a helpful assistant"}]}],
        ),
    )  # fmt: skip
    v2 = ready(k8s, "agent", "pinned-v2", ns)
    assert _resolved(k8s, ns, "pinned-v2").prompt.template == "Version two, {{ persona }}."
    wait_for(
        "both dependents reconciled",
        lambda: operator.reconciles(kind="Agent", cause="dependency") - before >= 2,
    )
    assert operator.reconciles(kind="Agent", cause="dependency") - before == 2  # not "unrelated"
    # The agent pinned to v1 kept its config (and so its pods).
    still = get(k8s, "agent", "pinned-v1", ns)
    assert still is not None
    assert still["status"]["configHash"] == v1["status"]["configHash"]
    assert v2["status"]["configHash"] != v1["status"]["configHash"]


def _resource_versions(k8s: Cluster, namespace: str) -> dict[str, str]:
    kinds = "configmap,deployment,service,serviceaccount,networkpolicy,rolebinding,resourcequota,limitrange,agents,prompts,tools"
    listed = json.loads(k8s.kubectl("get", kinds, "-n", namespace, "-o", "json").stdout)["items"]
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
        for o in listed
        if o["kind"] != "Deployment"
    }


def test_an_unchanged_reconcile_writes_nothing(k8s: Cluster, operator: OperatorProcess) -> None:
    ns = "tenant-deneb"
    apply(k8s, tenant("deneb", knowledgeBases=[{"name": "kb", "embeddingModel": "m", "dimensions": 8}]))
    ready(k8s, "tenant", "deneb")
    apply(k8s, prompt(ns, "assistant"), builtin_tool(ns))
    apply(k8s, agent(ns, "quiet", tools=[{"name": "calculator"}], runtime={"replicas": 2}))
    ready(k8s, "agent", "quiet", ns)
    until(k8s, "the tenant's agent count", "tenant", "deneb", None, lambda t: t["status"].get("agents") == 1)
    # Let in-flight work settle: no write for one resync interval.
    last = {"writes": operator.writes(), "since": time.monotonic()}

    def quiet() -> bool:
        """No write for a whole resync interval."""
        writes = operator.writes()
        if writes != last["writes"]:
            last.update(writes=writes, since=time.monotonic())
        return time.monotonic() - last["since"] >= RESYNC

    wait_for("writes to settle", quiet, timeout=60, interval=0.5)
    versions = _resource_versions(k8s, ns)
    writes = operator.writes()
    resyncs = operator.reconciles(cause="resync")
    wait_for(
        "two more resync rounds",
        lambda: operator.reconciles(cause="resync") >= resyncs + 8,
        timeout=RESYNC * 6,
    )
    assert operator.writes() == writes
    assert _resource_versions(k8s, ns) == versions


def test_a_new_agent_costs_few_writes_and_carries_no_finalizer(
    k8s: Cluster, operator: OperatorProcess
) -> None:
    """Its three children applied once, its status written at most twice (progressing, then ready),
    nothing read again by a resync once it is Ready, and no finalizer: its children go by garbage collection, and it is resynced by its Tenant's
    timer (a kopf timer of its own would need a finalizer, a write more for every Agent)."""
    ns = "tenant-polaris"
    apply(k8s, tenant("polaris"))
    ready(k8s, "tenant", "polaris")
    apply(k8s, prompt(ns, "assistant"))
    until(k8s, "the Prompt's ConfigMap", "configmap", "prompt-assistant-v1", ns, lambda _: True)
    kinds = ("ConfigMap", "Deployment", "Service", "Agent")

    def writes() -> dict[str, float]:
        return {kind: operator.total("agentplane_operator_api_writes_total", kind=kind) for kind in kinds}

    before = writes()
    names = [f"lean-{i}" for i in range(3)]
    apply(k8s, *(agent(ns, name) for name in names))
    for name in names:
        ready(k8s, "agent", name, ns)

    def reads() -> dict[str, float]:
        # not ConfigMaps: the Prompt's resync reads its own version maps
        return {k: operator.total("agentplane_operator_api_reads_total", kind=k) for k in kinds[1:]}

    settled = reads()
    time.sleep(RESYNC * 2)  # a resync round more: it writes nothing, and reads none of them
    written = {kind: count - before[kind] for kind, count in writes().items()}
    assert {kind: written[kind] for kind in kinds[:3]} == {kind: len(names) for kind in kinds[:3]}
    assert written["Agent"] <= 2 * len(names)
    assert reads() == settled
    for name in names:
        found = get(k8s, "agent", name, ns)
        assert found is not None
        assert not found["metadata"].get("finalizers")


def test_drift_is_repaired(k8s: Cluster, operator: OperatorProcess) -> None:
    ns = "tenant-rigel"
    apply(k8s, tenant("rigel"))
    ready(k8s, "tenant", "rigel")
    apply(k8s, prompt(ns, "assistant"))
    apply(k8s, agent(ns, "steady"))
    ready(k8s, "agent", "steady", ns)
    original = get(k8s, "configmap", "agent-steady", ns)
    assert original is not None

    k8s.kubectl("delete", "deployment", "steady", "-n", ns)
    wait_for("the Deployment back", lambda: get(k8s, "deployment", "steady", ns))
    k8s.kubectl(
        "patch", "configmap", "agent-steady", "-n", ns, "--type=merge", "-p", '{"data": {"agent.json": "{}"}}'
    )
    until(
        k8s, "the ConfigMap restored", "configmap", "agent-steady", ns,
        lambda cm: cm["data"] == original["data"], timeout=RESYNC * 5,
    )  # fmt: skip
    k8s.kubectl("delete", "service", "steady", "-n", ns)
    wait_for("the Service back", lambda: get(k8s, "service", "steady", ns), timeout=RESYNC * 5)
    policies = json.loads(k8s.kubectl("get", "networkpolicy", "-n", ns, "-o", "json").stdout)["items"]
    victim = policies[0]["metadata"]["name"]
    k8s.kubectl("delete", "networkpolicy", victim, "-n", ns)
    wait_for("the NetworkPolicy back", lambda: get(k8s, "networkpolicy", victim, ns), timeout=RESYNC * 5)
    k8s.kubectl("scale", "deployment", "steady", "-n", ns, "--replicas=3")
    until(
        k8s, "the replica count restored", "deployment", "steady", ns,
        lambda d: d["spec"]["replicas"] == 1, timeout=RESYNC * 5,
    )  # fmt: skip
    ready(k8s, "agent", "steady", ns)


def test_metrics_and_health(k8s: Cluster, operator: OperatorProcess) -> None:
    samples = operator.metrics()
    names = {name for name, _ in samples}
    assert {
        "agentplane_operator_reconcile_total",
        "agentplane_operator_reconcile_duration_seconds_bucket",
        "agentplane_operator_queue_depth",
        "agentplane_operator_api_writes_total",
        "process_cpu_seconds_total",
    } <= names
    assert operator.reconciles(kind="Agent", result="ok") > 0
    assert operator.total("agentplane_operator_reconcile_duration_seconds_count", kind="Tenant") > 0
    # time to Ready of each new Agent generation: lyra's helper, scaler, and scaler's second spec
    assert operator.total("agentplane_operator_agent_ready_seconds_count", namespace="tenant-lyra") == 3
    # each Tenant's limits from its spec, until the Tenant is deleted
    lyra = frozenset({("tenant", "lyra")})
    assert samples[("agentplane_tenant_monthly_budget_usd", lyra)] == 25
    assert samples[("agentplane_tenant_tokens_per_minute", lyra)] == 5000
    assert samples[("agentplane_tenant_requests_per_minute", lyra)] == 60
    assert operator.total("agentplane_tenant_tokens_per_minute", tenant="vega") == 5000
    delete_tenants(k8s, "vega")
    wait_for(
        "vega's gauges removed",
        lambda: (
            ("agentplane_tenant_tokens_per_minute", frozenset({("tenant", "vega")})) not in operator.metrics()
        ),
    )
    with urllib.request.urlopen(operator.metrics_url.replace("/metrics", "/healthz"), timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    check_metrics(text)


def _secret_data(k8s: Cluster, name: str, namespace: str) -> dict[str, str]:
    secret = get(k8s, "secret", name, namespace)
    assert secret is not None, f"Secret {namespace}/{name} missing"
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def test_a_tenant_namespace_gets_the_runtime_and_provider_secrets(
    k8s: Cluster, operator: OperatorProcess, stores: tuple[str, str]
) -> None:
    ns = "tenant-altair"
    egress = [{"host": "api.altair.example"}, {"cidr": "203.0.113.0/24", "ports": [8443]}]
    apply(k8s, tenant("altair", egress=egress))
    obj = ready(k8s, "tenant", "altair")
    assert obj["status"]["egress"] == [
        {"destination": "api.altair.example", "ports": [443], "enforcedBy": "runtime"},
        {"destination": "203.0.113.0/24", "ports": [8443], "enforcedBy": "network"},
    ]
    runtime = _secret_data(k8s, RUNTIME_SECRET, ns)
    assert set(runtime) <= RUNTIME_SECRET_KEYS
    database_url, redis_url = stores
    assert (runtime["AGENTPLANE_DATABASE_URL"], runtime["AGENTPLANE_REDIS_URL"]) == (database_url, redis_url)
    assert runtime["AGENTPLANE_STORES"] == "required"
    assert _secret_data(k8s, LLM_SECRET, ns) == {"OPENAI_API_KEY": "sk-test"}

    # A rotated platform Secret reaches the tenant's copy (at the latest at the next resync).
    install_llm_secret(k8s, {"OPENAI_API_KEY": "sk-rotated"})
    wait_for(
        "the rotated key copied",
        lambda: _secret_data(k8s, LLM_SECRET, ns) == {"OPENAI_API_KEY": "sk-rotated"},
        timeout=RESYNC * 5,
    )
    # Without the platform's Secret the tenant's agents cannot start: the Tenant is Stalled, says why.
    k8s.kubectl("delete", "secret", LLM_SECRET, "-n", "agentplane-system")
    try:
        stalled = not_ready(k8s, "tenant", "altair", "", "LLMSecretNotFound")
        assert condition(stalled, "Stalled")["status"] == "True"
        assert "agentplane-system/agentplane-llm" in condition(stalled, "Stalled")["message"]
    finally:
        install_llm_secret(k8s, {"OPENAI_API_KEY": "sk-test"})
    recovered = ready(k8s, "tenant", "altair", timeout=RESYNC * 5)
    assert condition(recovered, "Stalled") == {}


def test_health_checks_read_the_status_as_flux_does(k8s: Cluster, operator: OperatorProcess) -> None:
    """kstatus (what Flux's and Argo CD's health checks compute): Failed at once with the reason for
    what will not fix itself, InProgress while pods cannot run yet, Current when Ready."""
    ns = "tenant-kappa"
    apply(k8s, tenant("kappa", quotas={"compute": {"cpu": "500", "memory": "64Gi", "pods": 20}}))
    assert kstatus(ready(k8s, "tenant", "kappa")).status == "Current"
    apply(k8s, prompt(ns, "assistant"))
    apply(
        k8s,
        agent(ns, "fine"),
        agent(ns, "pinned", version=3),
        agent(ns, "too-big", runtime={"resources": {"requests": {"cpu": "200"}}}),
    )
    assert kstatus(ready(k8s, "agent", "fine", ns)).status == "Current"
    pinned = not_ready(k8s, "agent", "pinned", ns, "PromptVersionNotFound")
    verdict = kstatus(pinned)
    assert verdict.status == "Failed"
    assert "has no version 3" in verdict.message
    # no node has 200 CPUs: the pod cannot be scheduled, which a new node could change
    big = until(
        k8s, "too-big reconciling with a reason", "agent", "too-big", ns,
        lambda a: condition(a, "Reconciling").get("status") == "True" and condition(a, "Deployed")["reason"] != "Progressing",
    )  # fmt: skip
    assert condition(big, "Deployed")["reason"] == "Unschedulable"
    assert "Insufficient cpu" in condition(big, "Deployed")["message"]
    assert kstatus(big).status == "InProgress"
    # fixing the pin makes it Current, without waiting for a health check's timeout
    apply(k8s, agent(ns, "pinned"))
    assert kstatus(ready(k8s, "agent", "pinned", ns)).status == "Current"
