"""The pure parts of the operator: the "already applied?" check, conditions, prompt ConfigMaps, and
its own deploy manifests (generated, checked in, current)."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from operator_support import least_settings
from pydantic import ValidationError

from agentplane_operator import cli, manifests
from agentplane_operator.builders import build_prompt_config_maps
from agentplane_operator.conditions import Cond, kstatus, merge_conditions, ready_reason, status_patch
from agentplane_operator.handlers import QuietEventHandlers, build_registry
from agentplane_operator.kube import digest, holds
from agentplane_operator.pods import pod_problem
from agentplane_operator.reconcile import indexed_tool, parameters_condition, tool_discovery
from agentplane_operator.settings import OperatorSettings
from agentplane_platform.api.v1alpha1 import Prompt, Tenant, Tool, ToolDiscovery
from agentplane_platform.config import prompt_version_hash
from agentplane_platform.mcp import parameters_hash
from support.mcp_server import orders_mcp

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_holds_ignores_what_the_server_adds_but_not_what_we_set() -> None:
    want = {
        "spec": {"replicas": 1, "ports": [{"port": 80, "targetPort": "http"}]},
        "metadata": {"namespace": None},
    }
    spec: dict[str, Any] = {
        "replicas": 1,
        "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}],
        "extra": True,
    }
    live: dict[str, Any] = {"metadata": {"uid": "u", "resourceVersion": "7"}, "spec": spec}
    assert holds(live, want)
    assert not holds({**live, "spec": {**spec, "replicas": 3}}, want)  # someone scaled it
    assert not holds({**live, "metadata": {"namespace": "x"}}, want)  # null means "not set"
    two_ports = {**live, "spec": {**spec, "ports": [*spec["ports"], {"port": 81}]}}
    assert not holds(two_ports, want)  # lists are compared whole, element by element
    assert not holds({"spec": {"ports": [{"port": 80}]}}, want)  # a field missing


def test_holds_compares_quantities_by_value() -> None:
    assert holds({"cpu": "1", "memory": "1Gi"}, {"cpu": "1000m", "memory": "1024Mi"})
    assert holds({"cpu": "500m"}, {"cpu": "0.5"})
    assert not holds({"cpu": "2"}, {"cpu": "1000m"})
    assert not holds({"name": "api"}, {"name": "apI"})


def test_a_manifests_fingerprint_ignores_key_order_and_follows_every_value() -> None:
    # what a dependency's reconcile compares to skip a child that stays as it was applied
    manifest = {
        "kind": "ConfigMap",
        "metadata": {"name": "a", "labels": {"x": "1", "y": None}},
        "data": {"k": "v"},
    }
    reordered = {
        "data": {"k": "v"},
        "metadata": {"labels": {"y": None, "x": "1"}, "name": "a"},
        "kind": "ConfigMap",
    }
    assert digest(manifest) == digest(reordered)
    assert digest(manifest) != digest({**manifest, "data": {"k": "w"}})
    assert digest(manifest) != digest({**manifest, "metadata": {"name": "a", "labels": {"x": "1"}}})


def test_a_digest_that_reads_as_a_huge_number_is_compared_as_text() -> None:
    """A hex config hash of digits and one `e` is a number past what Decimal holds: comparing two
    such hashes raised, and failed every reconcile of the Agent (and its Tenant's resync) until
    the hash changed again. Seen at 5,000 Agents, where a few of the hashes have that shape."""
    old, new = {"data": {"hash": "4e51234567"}}, {"data": {"hash": "8e63401952"}}
    assert not holds(old, new)
    assert holds(new, new)
    assert not holds({"data": {"hash": "1e3"}}, {"data": {"hash": "9e9999999"}})


def test_conditions_keep_their_transition_time_until_the_status_changes() -> None:
    first = merge_conditions([], [Cond("Ready", False, "Progressing", "0/1")])
    assert first[0]["status"] == "False"
    same = merge_conditions(first, [Cond("Ready", False, "Progressing", "0/1")])
    assert same == first
    assert status_patch({"conditions": first}, {"conditions": same}) == {}
    changed = merge_conditions(
        [{**first[0], "lastTransitionTime": "2020-01-01T00:00:00Z"}], [Cond("Ready", True, "Available")]
    )
    assert changed[0]["status"] == "True"
    assert changed[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    kept = merge_conditions([{"type": "Other", "status": "True"}], [Cond("Ready", None, "Unknown")])
    assert [c["type"] for c in kept] == ["Ready", "Other"]
    assert kept[0]["status"] == "Unknown"


def test_a_config_map_per_kept_prompt_version() -> None:
    prompt = Prompt.model_validate(
        {
            "metadata": {"name": "support", "namespace": "tenant-acme"},
            "spec": {
                "version": 3,
                "template": "v3 {{ who }}",
                "variables": [{"name": "who"}],
                "previousVersions": [{"version": 1, "template": "v1"}],
            },
        }
    )
    maps = build_prompt_config_maps(prompt)
    assert [m["metadata"]["name"] for m in maps] == ["prompt-support-v1", "prompt-support-v3"]
    assert maps[1]["data"]["template"] == "v3 {{ who }}"
    assert maps[1]["metadata"]["labels"]["agentplane.io/tenant"] == "acme"
    assert maps[1]["metadata"]["annotations"]["agentplane.io/prompt-hash"] == prompt_version_hash(
        prompt.spec.versions()[3]
    )


def test_the_deploy_manifests_are_current() -> None:
    """`operator/deploy/` is generated by `make generate`; a stale file fails here."""
    assert manifests.write(DEPLOY, check=True) == []


def test_the_operator_rbac_is_explicit() -> None:
    rules = manifests.RULES
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    secrets = [r for r in rules if "secrets" in r["resources"]]
    # Secrets are written (each tenant's runtime and LLM Secrets) but never listed or watched.
    assert [r["verbs"] for r in secrets] == [["get", "create", "patch"]]


def test_pod_problems_say_why_a_pod_does_not_run() -> None:
    annotation = "agentplane.io/config-hash"
    meta = {"name": "bot-7d9f", "annotations": {annotation: "abc"}}
    missing_secret = {
        "metadata": meta,
        "status": {"containerStatuses": [{"name": "runtime", "state": {"waiting": {
            "reason": "CreateContainerConfigError", "message": 'secret "agentplane-runtime" not found'}}}]},
    }  # fmt: skip
    problem = pod_problem(missing_secret, annotation)
    assert problem is not None
    assert (problem.reason, problem.stalled, problem.config_hash) == (
        "CreateContainerConfigError",
        True,
        "abc",
    )
    assert (
        problem.describe()
        == 'pod bot-7d9f: CreateContainerConfigError: secret "agentplane-runtime" not found'
    )

    crashing = {
        "metadata": meta,
        "status": {"containerStatuses": [{"name": "runtime",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 3, "reason": "Error",
                "message": "agentplane runtime cannot start: redis at redis://10.0.0.5:6379/0 unreachable\n"}}}]},
    }  # fmt: skip
    problem = pod_problem(crashing, annotation)
    assert problem is not None
    assert problem.stalled
    assert problem.message == "agentplane runtime cannot start: redis at redis://10.0.0.5:6379/0 unreachable"

    unschedulable = {"metadata": meta, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes available"}]}}  # fmt: skip
    problem = pod_problem(unschedulable, annotation)
    assert problem is not None
    assert (problem.reason, problem.stalled) == ("Unschedulable", False)

    running = {
        "metadata": meta,
        "status": {"containerStatuses": [{"name": "runtime", "state": {"running": {}}}]},
    }
    assert pod_problem(running, annotation) is None


def test_kstatus_conditions_follow_the_failures() -> None:
    stalled, drop = kstatus([Cond("ConfigResolved", False, "PromptVersionNotFound", "no v3", stalled=True)])
    assert [(c.type, c.status, c.reason) for c in stalled] == [("Stalled", "True", "PromptVersionNotFound")]
    assert drop == {"Reconciling"}
    rolling, drop = kstatus(
        [Cond("ConfigResolved", True, "Resolved"), Cond("Deployed", False, "Progressing")]
    )
    assert [(c.type, c.reason) for c in rolling] == [("Reconciling", "Progressing")]
    assert drop == {"Stalled"}
    done, drop = kstatus([Cond("Deployed", True, "Available")])
    assert done == []
    assert drop == {"Reconciling", "Stalled"}
    merged = merge_conditions(
        [{"type": "Stalled", "status": "True"}, {"type": "Ready", "status": "False"}],
        [Cond("Ready", True, "Ok")],
        drop,
    )
    assert [c["type"] for c in merged] == ["Ready"]


def test_in_a_pod_the_api_server_is_where_the_kubelet_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like client-go's in-cluster config: no cluster DNS needed to find the API server."""
    least_settings(monkeypatch)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert OperatorSettings().in_cluster_server() is None
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "198.19.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert OperatorSettings().in_cluster_server() == "https://198.19.0.1:443"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert OperatorSettings().in_cluster_server() == "https://[fd00::1]:443"


def test_agent_pods_get_the_traces_sampler_and_a_wrong_one_stops_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    least_settings(monkeypatch)
    monkeypatch.setenv("AGENTPLANE_OPERATOR_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("AGENTPLANE_OPERATOR_TRACES_SAMPLER_ARG", "0.1")
    data = OperatorSettings().runtime_stores().secret_data()
    assert data["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert data["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    for sampler, arg, why in (
        ("parentbased_traceidratio", "10%", "from 0 to 1"),
        ("parentbased_traceidratio", "1.5", "from 0 to 1"),
        ("always_on", "0.5", "the ratio of a traceidratio sampler"),
        ("sometimes", None, "none of"),
    ):
        monkeypatch.setenv("AGENTPLANE_OPERATOR_TRACES_SAMPLER", sampler)
        if arg is None:
            monkeypatch.delenv("AGENTPLANE_OPERATOR_TRACES_SAMPLER_ARG")
        else:
            monkeypatch.setenv("AGENTPLANE_OPERATOR_TRACES_SAMPLER_ARG", arg)
        with pytest.raises(ValidationError, match=why):
            OperatorSettings()
    monkeypatch.delenv("AGENTPLANE_OPERATOR_TRACES_SAMPLER")
    assert "OTEL_TRACES_SAMPLER" not in OperatorSettings().runtime_stores().secret_data()


def _tool(spec: dict[str, Any]) -> Tool:
    return Tool.model_validate(
        {"metadata": {"name": "orders", "namespace": "tenant-acme"}, "spec": {"description": "d", **spec}}
    )


def test_a_tool_with_a_broken_parameter_schema_is_not_ready() -> None:
    broken = _tool(
        {
            "type": "http",
            "url": "https://api.example.com/orders",
            "parameters": {
                "type": "object",
                "properties": {"id": {"type": "strng"}, "ref": {"$ref": "#/$defs/missing"}},
                "required": "yes",
            },
        }
    )
    cond = parameters_condition(broken)
    assert (cond.type, cond.ok, cond.reason, cond.stalled) == (
        "ParametersValid",
        False,
        "InvalidParameters",
        True,
    )
    assert cond.message == (
        "spec.parameters.properties.id.type: got 'strng' (expected a JSON Schema type: "
        "array, boolean, integer, null, number, object or string); "
        "spec.parameters.required: got 'yes' (expected an array)"
    )  # the $ref is checked once the schema itself is valid
    assert ready_reason([Cond("SecretResolved", True, "NoSecret"), cond]) == cond  # Ready=False, its reason
    pattern = _tool({"type": "builtin", "builtin": "retrieval", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "pattern": "[a-"}}}})  # fmt: skip
    assert parameters_condition(pattern).message == (
        "spec.parameters.properties.q.pattern: got '[a-', not a valid regular expression: "
        "unterminated character set at position 0"
    )
    ok = parameters_condition(_tool({"type": "builtin", "builtin": "calculator"}))
    assert (ok.ok, ok.reason) == (True, "NoParameters")
    fine = _tool({"type": "mcp", "url": "https://mcp.example.com/mcp", "tool": "lookup", "parameters": {
        "type": "object", "$defs": {"id": {"type": "string"}}, "properties": {"id": {"$ref": "#/$defs/id"}}}})  # fmt: skip
    assert (parameters_condition(fine).ok, parameters_condition(fine).reason) == (True, "SchemaValid")


def _tenant(port: int) -> Tenant:
    return Tenant.model_validate(
        {
            "metadata": {"name": "acme"},
            "spec": {
                "owners": [{"kind": "Group", "name": "acme-team"}],
                "allowedModels": ["openai/gpt-4o-mini"],
                "egress": [{"cidr": "127.0.0.1/32", "ports": [port]}],
            },
        }
    )


@pytest.mark.asyncio
async def test_an_mcp_tool_without_parameters_shows_its_servers_schema_or_why_not() -> None:
    no_secret = Cond("SecretResolved", True, "NoSecret")
    async with httpx.AsyncClient() as http:
        async with orders_mcp() as orders:
            (listed,) = [t for t in await orders.server().list_tools() if t.name == "lookup_order"]
            tenant = _tenant(orders.port)
            tool = _tool({"type": "mcp", "url": orders.url, "tool": "lookup_order"})

            async def discover(
                tool: Tool, tenant: Tenant | None = tenant, previous: ToolDiscovery | None = None
            ) -> tuple[Cond, ToolDiscovery | None]:
                return await tool_discovery(
                    http, tool, tenant, previous=previous, secret=no_secret, credential=None, timeout=5
                )

            cond, found = await discover(tool)
            assert found is not None
            assert (cond.type, cond.ok, cond.reason) == ("SchemaDiscovered", True, "Discovered")
            assert json.loads(found.parameters) == listed.input_schema
            assert found.parameters_hash == parameters_hash(listed.input_schema)
            assert (
                cond.message
                == f"inputSchema of MCP tool 'lookup_order' listed by {orders.url} ({found.parameters_hash})"
            )
            # the status as written and read back through the index is what Agents resolve from
            status = {"discovered": found.model_dump(mode="json", by_alias=True)}
            body = {**tool.model_dump(mode="json", by_alias=True, exclude_none=True), "status": status}
            indexed = indexed_tool(body)
            assert indexed.status is not None
            assert indexed.status.discovered == found
            # listed again, unchanged: the same status (discoveredAt kept), so nothing is written
            assert await discover(tool, previous=found) == (cond, found)

            # a server that does not list the tool: retried (not stalled), Agents wait
            cond, none = await discover(_tool({"type": "mcp", "url": orders.url, "tool": "no_such_tool"}))
            assert none is None
            assert (cond.ok, cond.reason, cond.stalled) == (False, "DiscoveryFailed", False)
            assert (
                "the MCP server lists no tool 'no_such_tool' (it lists: archived_order, count,"
                in cond.message
            )
            assert cond.message.endswith("; Agents using the Tool wait for it (or declare spec.parameters)")
            assert ready_reason([no_secret, cond]) == cond  # Ready=False, reason DiscoveryFailed
            assert kstatus([cond])[0][0].type == "Reconciling"

            # outside the Tenant's egress allowlist: not even asked, and stalled until the spec changes
            asked = len(orders.seen)
            cond, none = await discover(tool, tenant=_tenant(orders.port + 1))
            assert (cond.ok, cond.reason, cond.stalled, none) == (False, "DiscoveryFailed", True, None)
            assert f"{orders.url} is not in the tenant's egress allowlist" in cond.message
            cond, none = await discover(tool, tenant=None)
            assert (cond.ok, none) == (False, None)
            assert "no Tenant owns namespace tenant-acme" in cond.message
            assert len(orders.seen) == asked

            # a credential only agent pods can read: stalled with the reason
            vaulted = _tool({"type": "mcp", "url": orders.url, "tool": "lookup_order",
                             "auth": {"secretRef": {"keyVault": {"name": "orders-token"}}}})  # fmt: skip
            cond, none = await discover(vaulted)
            assert (cond.ok, cond.stalled, none) == (False, True, None)
            assert "does not read Key Vault secret 'orders-token'" in cond.message

        # the server gone: the schema discovered before stays in use, and the condition says since when
        cond, kept = await discover(tool, previous=found)
        assert kept == found
        assert (cond.ok, cond.reason, cond.stalled) == (False, "DiscoveryFailed", False)
        assert "could not be reached" in cond.message
        assert cond.message.endswith(
            f"; Agents keep the schema discovered at {found.discovered_at:%Y-%m-%dT%H:%M:%SZ} ({found.parameters_hash})"
        )
        # a declared schema needs no discovery
        declared = _tool({"type": "mcp", "url": orders.url, "tool": "x", "parameters": {"type": "object"}})
        assert (await discover(declared))[0] == Cond("SchemaDiscovered", True, "NotNeeded", "")


def test_the_operator_leaves_its_import_heap_out_of_collections_and_collects_young_objects_less_often() -> (
    None
):
    """What `agentplane-operator run` does before it watches: the objects of its imports (kopf, the
    Kubernetes, Qdrant and SQL clients) frozen, never walked by a full collection again, and a young
    generation large enough that a watch event's parsed object does not start a collection."""
    before = gc.get_threshold()
    try:
        cli.prepare_process()
        assert gc.get_freeze_count() > 100_000
        assert gc.get_threshold() == cli.GC_THRESHOLDS
        assert cli.GC_THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_kopf_logs_no_line_for_each_watch_event_handled_but_still_each_change_and_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    least_settings(monkeypatch)
    quiet = QuietEventHandlers(build_registry(OperatorSettings()))

    def kept(message: str, level: int = logging.INFO) -> bool:
        return quiet.filter(logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None))

    for handler in (
        "agent_event",
        "pod_changed",
        "deployment_changed",
        "config_map_changed",
        "service_changed",
    ):
        assert not kept(f"Handler {handler!r} succeeded.")
    assert kept("Handler 'tenant_changed' succeeded.")  # a Tenant's change, handled: said once
    assert kept("Timer 'tenant_resync' succeeded.")
    assert kept("Handler 'pod_changed' failed with an exception. Will retry.", logging.ERROR)
