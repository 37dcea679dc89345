"""Thin kopf handlers: each finds its object and calls the one reconcile of its kind.

Handlers are registered on a registry made by `build_registry`, never at import time. Indexes
(`@kopf.index`) keep what every reconcile needs to read without asking the API server: the
Tenants, Prompts and Tools, the Agents, and which Agents depend on which Tenant/Prompt/Tool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import httpx
import kopf
from redis.asyncio import Redis

from agentplane_operator import reconcile
from agentplane_operator.builders import AGENT_LABEL, CONFIG_HASH_ANNOTATION, KNOWLEDGE_SYNC_LABEL, MANAGED_BY
from agentplane_operator.kube import Kube
from agentplane_operator.metrics import Metrics, serve
from agentplane_operator.pods import pod_problem
from agentplane_operator.reconcile import spec_body
from agentplane_operator.settings import OperatorSettings
from agentplane_operator.state import Cause, DependencyKind, Key, Operator, Views
from agentplane_platform.api.v1alpha1 import Agent, Prompt, Tenant, Tool, tenant_of
from agentplane_platform.db import create_engine, migrate
from agentplane_platform.knowledge import VectorStore

GROUP, VERSION = "agentplane.io", "v1alpha1"


def _op(kwargs: dict[str, Any]) -> Operator:
    """The operator's clients, from kopf's memo among a handler's keyword arguments."""
    operator: Operator = kwargs["memo"]["operator"]
    return operator


async def _reconcile_dependents(
    op: Operator, views: Views, kind: str, namespace: str | None, name: str
) -> None:
    """Re-reconcile exactly the Agents whose config uses this Tenant/Prompt/Tool."""
    keys = views.dependents_of(kind, namespace, name)  # type: ignore[arg-type]
    await asyncio.gather(*(_reconcile_agent_key(op, views, key, "dependency") for key in keys))


async def _reconcile_agent_key(op: Operator, views: Views, key: Key, cause: Cause, **kw: Any) -> None:
    body = views.agent(key)
    if body is None:
        return
    async with op.reconciling("Agent", key[1], key[0], cause):
        await reconcile.reconcile_agent(op, body, views, **kw)


async def _reconcile_tenant_named(op: Operator, views: Views, name: str) -> None:
    body = await op.kube.get("Tenant", name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    async with op.reconciling("Tenant", name, "", "dependency"):
        await reconcile.reconcile_tenant(op, body, views)


def _login(settings: kopf.OperatorSettings, ours: OperatorSettings) -> kopf.ConnectionInfo | None:
    """In a pod, its service account; elsewhere, the kubeconfig.

    In a pod the API server is addressed as the kubelet says (`KUBERNETES_SERVICE_HOST`/`_PORT`),
    as client-go does: kopf's own login names `kubernetes.default.svc`, which needs cluster DNS.
    """
    info = kopf.login_with_service_account(settings=settings)
    if info is None:
        return kopf.login_with_kubeconfig(settings=settings)
    server = ours.in_cluster_server()
    return dataclasses.replace(info, server=server) if server else info


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a registry of its own."""
    registry = kopf.OperatorRegistry()
    on = kopf.on
    resync = settings.resync_seconds
    tenants = (GROUP, VERSION, "tenants")
    prompts = (GROUP, VERSION, "prompts")
    tools = (GROUP, VERSION, "tools")
    agents = (GROUP, VERSION, "agents")

    @on.startup(registry=registry, id="start")
    async def start(settings: kopf.OperatorSettings, logger: kopf.Logger, **kw: Any) -> None:
        memo = kw["memo"]
        ours: OperatorSettings = memo["settings"]
        settings.persistence.finalizer = ours.finalizer
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.peering.name = ours.peering
        settings.peering.standalone = ours.standalone
        settings.peering.mandatory = not ours.standalone
        settings.peering.clusterwide = True
        settings.peering.lifetime = ours.peering_lifetime_seconds
        settings.posting.level = logging.WARNING  # our own Events say what happened; kopf's only warn
        settings.posting.reporting_component = "agentplane-operator"
        settings.execution.max_workers = 4
        settings.scanning.disabled = True  # the CRDs are known; no cluster-wide CRD read rights needed
        settings.batching.worker_limit = ours.worker_limit
        settings.batching.error_delays = (1, 2, 5, 10, 20, 40, 60)
        settings.networking.error_backoffs = (1, 2, 5, 10, 20)
        info = _login(settings, ours)
        if info is None:
            raise kopf.PermanentError("no service account and no kubeconfig to reach the API server")
        metrics = Metrics()
        db = create_engine(ours.database_url.get_secret_value(), pool_pre_ping=True)
        await migrate(db)
        key = ours.qdrant_api_key.get_secret_value() if ours.qdrant_api_key else None
        memo["operator"] = Operator(
            settings=ours,
            kube=Kube.connect(info, field_manager=ours.field_manager, on_write=metrics.count_write),
            vectors=VectorStore.connect(url=ours.qdrant_url, path=ours.qdrant_path, api_key=key),
            redis=Redis.from_url(ours.redis_url.get_secret_value(), decode_responses=True),
            db=db,
            metrics=metrics,
            build=ours.build(),
            http=httpx.AsyncClient(
                timeout=httpx.Timeout(ours.mcp_discovery_timeout_seconds), follow_redirects=False
            ),
        )
        memo["http"] = await serve(metrics, ours.metrics_host, ours.metrics_port)
        logger.info(f"metrics and health on {ours.metrics_host}:{ours.metrics_port}")

    @on.login(registry=registry, id="login")
    def login(settings: kopf.OperatorSettings, **kw: Any) -> kopf.ConnectionInfo | None:
        return _login(settings, kw["memo"]["settings"])

    @on.cleanup(registry=registry, id="stop")
    async def stop(**kw: Any) -> None:
        memo = kw["memo"]
        if "http" in memo:
            await memo["http"].cleanup()
        if "operator" in memo:
            await _op(kw).close()

    # --- indexes: what reconciles read instead of asking the API server ---------------------------

    @kopf.index(*tenants, registry=registry, id="tenant_index")
    def tenant_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Tenant]:
        return {name: Tenant.model_validate(spec_body(body))}

    @kopf.index(*prompts, registry=registry, id="prompt_index")
    def prompt_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Prompt]:
        return {(namespace or "", name): Prompt.model_validate(spec_body(body))}

    @kopf.index(*tools, registry=registry, id="tool_index")
    def tool_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Tool]:
        return {(namespace or "", name): reconcile.indexed_tool(body)}

    @kopf.index(*agents, registry=registry, id="agent_index")
    def agent_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
        return {(namespace or "", name): {**spec_body(body), "status": dict(body.get("status") or {})}}

    @kopf.index(*agents, registry=registry, id="namespace_agent_index")
    def namespace_agent_index(namespace: str | None, name: str, **_: Any) -> dict[str, Key]:
        return {namespace or "": (namespace or "", name)}

    @kopf.index(*agents, registry=registry, id="dependent_index")
    def dependent_index(
        namespace: str | None, name: str, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str, str, str], Key]:
        ns = namespace or ""
        agent = Agent.model_validate({"metadata": {"name": name, "namespace": ns}, "spec": dict(spec)})
        key = (ns, name)
        found = {
            ("tenant", "", tenant_of(ns) or ""): key,
            ("prompt", ns, agent.spec.prompt.name): key,
        }
        found.update({("tool", ns, tool.name): key for tool in agent.spec.tools})
        return found

    # --- Tenant ------------------------------------------------------------------------------

    @on.resume(*tenants, registry=registry, id="tenant_changed")
    @on.create(*tenants, registry=registry, id="tenant_changed")
    @on.update(*tenants, registry=registry, id="tenant_changed")
    async def tenant_changed(name: str, body: kopf.Body, reason: str, **kw: Any) -> None:
        op, views = _op(kw), Views.of(kw)
        async with op.reconciling("Tenant", name, "", "event"):
            await reconcile.reconcile_tenant(op, body, views)
        if reason != "resume":  # on resume every Agent resumes too
            await _reconcile_dependents(op, views, "tenant", "", name)

    @kopf.timer(*tenants, interval=resync, initial_delay=resync, registry=registry, id="tenant_resync")
    async def tenant_resync(name: str, body: kopf.Body, **kw: Any) -> None:
        op = _op(kw)
        async with op.reconciling("Tenant", name, "", "resync"):
            await reconcile.reconcile_tenant(op, body, Views.of(kw))

    @on.delete(*tenants, registry=registry, id="tenant_deleted")
    async def tenant_deleted(name: str, body: kopf.Body, logger: kopf.Logger, **kw: Any) -> None:
        op = _op(kw)
        async with op.reconciling("Tenant", name, "", "event"):
            logger.info(await reconcile.finalize_tenant(op, body))
        op.metrics.forget_tenant(name)

    # --- Prompt and Tool: reconcile, then the Agents that use them -------------------------------

    @on.resume(*prompts, registry=registry, id="dependency_changed")
    @on.create(*prompts, registry=registry, id="dependency_changed")
    @on.update(*prompts, registry=registry, id="dependency_changed")
    @on.resume(*tools, registry=registry, id="dependency_changed")
    @on.create(*tools, registry=registry, id="dependency_changed")
    @on.update(*tools, registry=registry, id="dependency_changed")
    async def dependency_changed(
        namespace: str | None, name: str, body: kopf.Body, reason: str, resource: kopf.Resource, **kw: Any
    ) -> None:
        op, views, ns = _op(kw), Views.of(kw), namespace or ""
        retry = False
        if resource.plural == "prompts":
            async with op.reconciling("Prompt", name, ns, "event"):
                await reconcile.reconcile_prompt(op, body)
        else:
            try:
                async with op.reconciling("Tool", name, ns, "event"):
                    await reconcile.reconcile_tool(op, body, views)
            except kopf.TemporaryError:
                # its MCP server cannot be listed now: the Agents still learn of the change (a Tool
                # they can no longer resolve, say), and kopf retries the discovery
                retry = True
        if reason != "resume":
            kind: DependencyKind = "prompt" if resource.plural == "prompts" else "tool"
            await _reconcile_dependents(op, views, kind, ns, name)
        if resource.plural == "tools" and op.settings.key_vault_name and (tenant := tenant_of(ns)):
            # the tenant's SecretProviderClass mounts the Key Vault secrets of its namespace's tools
            op.soon(("tenant", tenant), 1.0, lambda: _reconcile_tenant_named(op, views, tenant))
        if retry:
            raise kopf.TemporaryError("the Tool's MCP server could not be listed; retrying", delay=30)

    @on.event(*prompts, registry=registry, id="dependency_deleted")
    @on.event(*tools, registry=registry, id="dependency_deleted")
    async def dependency_deleted(
        event: kopf.RawEvent, namespace: str | None, name: str, resource: kopf.Resource, **kw: Any
    ) -> None:
        if event["type"] == "DELETED":  # the Agents using it now fail to resolve: say so
            kind: DependencyKind = "prompt" if resource.plural == "prompts" else "tool"
            await _reconcile_dependents(_op(kw), Views.of(kw), kind, namespace or "", name)

    @on.event(*tools, registry=registry, id="tool_discovered")
    async def tool_discovered(event: kopf.RawEvent, namespace: str | None, name: str, **kw: Any) -> None:
        # A schema newly discovered for an MCP Tool (the index holds it by now) changes the configs
        # of the Agents using the Tool; the status write is the event that says so.
        key = (namespace or "", name)
        op = _op(kw)
        if event["type"] == "DELETED":
            op.discovered.pop(key, None)
            return
        status = event["object"].get("status") or {}
        if op.discovery_changed(key, (status.get("discovered") or {}).get("parametersHash")):
            await _reconcile_dependents(op, Views.of(kw), "tool", key[0], name)

    @kopf.timer(*prompts, interval=resync, initial_delay=resync, registry=registry, id="prompt_resync")
    async def prompt_resync(namespace: str | None, name: str, body: kopf.Body, **kw: Any) -> None:
        op = _op(kw)
        async with op.reconciling("Prompt", name, namespace or "", "resync"):
            await reconcile.reconcile_prompt(op, body)

    @kopf.timer(*tools, interval=resync, initial_delay=resync, registry=registry, id="tool_resync")
    async def tool_resync(namespace: str | None, name: str, body: kopf.Body, **kw: Any) -> None:
        op = _op(kw)
        async with op.reconciling("Tool", name, namespace or "", "resync"):
            await reconcile.reconcile_tool(op, body, Views.of(kw))

    # --- Agent -------------------------------------------------------------------------------

    @on.resume(*agents, registry=registry, id="agent_changed")
    @on.create(*agents, registry=registry, id="agent_changed")
    @on.update(*agents, registry=registry, id="agent_changed")
    async def agent_changed(namespace: str | None, name: str, body: kopf.Body, **kw: Any) -> None:
        op = _op(kw)
        async with op.reconciling("Agent", name, namespace or "", "event"):
            await reconcile.reconcile_agent(op, body, Views.of(kw))

    @kopf.timer(*agents, interval=resync, initial_delay=resync, registry=registry, id="agent_resync")
    async def agent_resync(namespace: str | None, name: str, body: kopf.Body, **kw: Any) -> None:
        op = _op(kw)
        async with op.reconciling("Agent", name, namespace or "", "resync"):
            await reconcile.reconcile_agent(op, body, Views.of(kw))

    @on.event(*agents, registry=registry, id="agent_event")
    async def agent_event(event: kopf.RawEvent, namespace: str | None, name: str, **kw: Any) -> None:
        op, views, ns = _op(kw), Views.of(kw), namespace or ""
        tenant = tenant_of(ns)
        if tenant and event["type"] in ("ADDED", "DELETED"):
            op.soon(("agents", tenant), 2.0, lambda: reconcile.refresh_tenant_agents(op, tenant, views))
        if event["type"] != "DELETED":
            return
        op.ready_clock.forget(ns, name)
        # A freed slot under the tenant's maxAgents: admit the Agents that waited for one.
        waiting = [
            (ns, a["metadata"]["name"])
            for a in views.agents_in(ns)
            if any(c.get("reason") == "QuotaExceeded" for c in a["status"].get("conditions") or [])
        ]
        await asyncio.gather(*(_reconcile_agent_key(op, views, key, "dependency") for key in waiting))

    @on.event(
        "",
        "v1",
        "pods",
        labels={**MANAGED_BY, AGENT_LABEL: kopf.PRESENT},
        registry=registry,
        id="pod_changed",
    )
    async def pod_changed(
        event: kopf.RawEvent, namespace: str | None, name: str, labels: kopf.Labels, **kw: Any
    ) -> None:
        # Why pods do not run (a missing Secret, a crashing runtime) goes into the Agent's status.
        if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
            return
        op, key = _op(kw), (namespace or "", labels[AGENT_LABEL])
        problem = None if event["type"] == "DELETED" else pod_problem(event["object"], CONFIG_HASH_ANNOTATION)
        if op.record_pod(key, name, problem):
            views = Views.of(kw)
            op.soon(("pods", *key), 1.0, lambda: _reconcile_agent_key(op, views, key, "child"))

    @on.event(
        "apps",
        "v1",
        "deployments",
        labels={**MANAGED_BY, AGENT_LABEL: kopf.PRESENT},
        registry=registry,
        id="deployment_changed",
    )
    async def deployment_changed(
        event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, **kw: Any
    ) -> None:
        # Readiness follows the Deployment; a deleted or edited one is put back at once.
        if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
            return
        deployment = dict(event["object"]) if event["type"] != "DELETED" else None
        key = (namespace or "", labels[AGENT_LABEL])
        await _reconcile_agent_key(_op(kw), Views.of(kw), key, "child", deployment=deployment)

    # --- Git-kept knowledge: each GitOps revision syncs the tenants' knowledge ----------------------

    if settings.gitops_source:
        source_namespace, source_name = settings.gitops_source.split("/")

        @on.event(
            "source.toolkit.fluxcd.io", "v1", "gitrepositories", field="metadata.name", value=source_name,
            registry=registry, id="gitops_source",
        )  # fmt: skip
        async def gitops_source(event: kopf.RawEvent, namespace: str | None, **kw: Any) -> None:
            if namespace != source_namespace or event["type"] not in ("ADDED", "MODIFIED"):
                return
            op = _op(kw)
            async with op.reconciling("GitRepository", source_name, source_namespace, "event"):
                await reconcile.sync_knowledge(op, event["object"], Views.of(kw))

        @on.event(
            "batch",
            "v1",
            "jobs",
            labels={**MANAGED_BY, KNOWLEDGE_SYNC_LABEL: "true"},
            registry=registry,
            id="knowledge_job",
        )
        async def knowledge_job(event: kopf.RawEvent, name: str, namespace: str | None, **kw: Any) -> None:
            if event["type"] not in ("ADDED", "MODIFIED"):
                return
            op = _op(kw)
            async with op.reconciling("Job", name, namespace or "", "child"):
                await reconcile.knowledge_sync_finished(op, event["object"], Views.of(kw))

    return registry
