"""Thin kopf handlers: each finds its object and calls the one reconcile of its kind.

Handlers are registered on a registry made by `build_registry`, never at import time. Indexes
(`@kopf.index`) keep what every reconcile needs to read without asking the API server: the
Tenants, Prompts and Tools, the Agents, and which Agents depend on which Tenant/Prompt/Tool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import kopf
from aiohttp import web
from redis.asyncio import Redis

from agentplane_operator import budget, reconcile
from agentplane_operator.builders import AGENT_LABEL, CONFIG_HASH_ANNOTATION, KNOWLEDGE_SYNC_LABEL, MANAGED_BY
from agentplane_operator.kopf_speedups import (
    LeanDiffBaseStorage,
    LeanProgressStorage,
    end_pause_waiters,
    report_tasks_left,
)
from agentplane_operator.kube import Kube, Manifest
from agentplane_operator.metrics import Metrics, serve
from agentplane_operator.pods import pod_problem
from agentplane_operator.reconcile import spec_body
from agentplane_operator.settings import OperatorSettings
from agentplane_operator.state import Cause, DependencyKind, Key, Operator, Views
from agentplane_platform import max_agents
from agentplane_platform.api.v1alpha1 import Prompt, Tenant, Tool, tenant_of
from agentplane_platform.db import create_engine, migrate
from agentplane_platform.knowledge import VectorStore

GROUP, VERSION = "agentplane.io", "v1alpha1"


@dataclasses.dataclass
class Started:
    """What the startup handler keeps in kopf's memo for every other handler: the operator's clients,
    the views of kopf's indexes (live: kopf creates each index once, before the startup handlers),
    and the metrics server."""

    op: Operator
    views: Views
    metrics_server: web.AppRunner | None = None
    unwatch_gc: Callable[[], None] | None = None


_MEMO_KEY = "agentplane"


def started(memo: kopf.Memo) -> Started:
    """What the startup handler left in kopf's memo."""
    found = memo.get(_MEMO_KEY)
    if not isinstance(found, Started):
        raise RuntimeError("the operator's startup handler has not run")
    return found


def clients(memo: kopf.Memo) -> tuple[Operator, Views]:
    """The operator's clients and the views of kopf's indexes, from kopf's memo."""
    state = started(memo)
    return state.op, state.views


async def _reconcile_dependents(
    op: Operator, views: Views, kind: str, namespace: str | None, name: str
) -> None:
    """Re-reconcile exactly the Agents whose config uses this Tenant/Prompt/Tool."""
    keys = views.dependents_of(kind, namespace, name)  # type: ignore[arg-type]
    await asyncio.gather(*(_reconcile_agent_key(op, views, key, "dependency") for key in keys))


async def _reconcile_agent_key(
    op: Operator, views: Views, key: Key, cause: Cause, *, watched: bool = False
) -> None:
    """Reconcile the Agent `key` as the index has it. `watched`: a watch event of its Deployment asks,
    and the Deployment the watch showed last (not the one of that event: several may have queued on
    the Agent's lock meanwhile, and an older one would undo the readiness a newer one wrote) stands
    for the live one, unless it differs from what the Agent wants."""
    body = views.agent(key)
    if body is None:
        return
    async with op.reconciling("Agent", key[1], key[0], cause):
        deployment = op.deployments.get(key) if watched else None
        await reconcile.reconcile_agent(
            op, body, views, deployment=deployment, dependency=cause == "dependency"
        )


RETRY_DELAYS = (1, 2, 5, 10, 20, 40, 60)
"""Seconds before retrying a failed Agent reconcile, by attempt (the last one repeats)."""
log = logging.getLogger("agentplane.operator")


async def _reconcile_agent_generation(
    op: Operator, views: Views, key: Key, body: Mapping[str, Any], *, new: bool, attempt: int = 0
) -> None:
    """Reconcile an Agent from a watch event, unless this instance has reconciled its generation
    already (the event is one of our status writes, or a change of its labels). A failed reconcile is
    retried with backoff, from the Agent as the index has it then."""
    meta = body["metadata"]
    generation = (meta.get("uid"), int(meta.get("generation") or 0))
    if op.agent_generations.get(key) == generation:
        return
    try:
        async with op.reconciling("Agent", key[1], key[0], "event"):
            await reconcile.reconcile_agent(op, body, views, new=new)
    except Exception as exc:
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        log.warning(f"Agent {key[0]}/{key[1]}: the reconcile failed ({exc!r}); retrying in {delay} s")

        async def retry() -> None:
            latest = views.agent(key)
            if latest is not None:
                await _reconcile_agent_generation(op, views, key, latest, new=False, attempt=attempt + 1)

        op.soon(("agent-retry", *key), delay, retry)
        return
    op.agent_generations[key] = generation


async def _resync_tenant(op: Operator, views: Views, name: str, body: kopf.Body) -> None:
    """The Tenant's periodic reconcile, then that of every Agent in its namespace (one timer per
    Tenant: a kopf timer per Agent would cost each Agent a finalizer, one more write)."""
    async with op.reconciling("Tenant", name, "", "resync"):
        await reconcile.reconcile_tenant(op, body, views)
    namespace = Tenant.model_validate(spec_body(body)).namespace
    keys = views.agent_keys_in(namespace)
    await asyncio.gather(*(_reconcile_agent_key(op, views, key, "resync") for key in keys))


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


class QuietEventHandlers(logging.Filter):
    """Drops kopf's line for each success of a handler of watch events (`Handler 'pod_changed'
    succeeded.`): one for every event of every Agent, Deployment, pod, Service and ConfigMap, two
    thirds of the operator's log while Agents converged (7,000 lines for 500 Agents) and about 3 % of
    its CPU. Their failures are still logged, as is every other handler's success."""

    def __init__(self, registry: kopf.OperatorRegistry) -> None:
        super().__init__()
        # kopf has no public list of a registry's handlers; its watching registry is where
        # `kopf.on.event` puts them (a test checks this still finds ours)
        ids = {handler.id for handler in registry._watching.get_all_handlers()}
        self.lines = frozenset(f"Handler {handler_id!r} succeeded." for handler_id in ids)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg in self.lines)


def build_registry(ours: OperatorSettings) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a registry of its own."""
    registry = kopf.OperatorRegistry()
    on = kopf.on
    resync = ours.resync_seconds
    tenants = (GROUP, VERSION, "tenants")
    prompts = (GROUP, VERSION, "prompts")
    tools = (GROUP, VERSION, "tools")
    agents = (GROUP, VERSION, "agents")
    # As one of several shards, this instance handles only its tenants' objects (every shard indexes
    # every Tenant: they are few, and the platform-wide jobs below look at all of them).
    shard = ours.instance_shard()
    mine = shard.when() if shard is not None else None

    # kopf passes its indexes as keyword arguments that its ActivityFn protocol does not list
    @on.startup(registry=registry, id="start")  # type: ignore[arg-type]
    async def start(
        settings: kopf.OperatorSettings,
        logger: kopf.Logger,
        memo: kopf.Memo,
        tenant_index: kopf.Index[str, Tenant],
        prompt_index: kopf.Index[str, tuple[str, Prompt]],
        tool_index: kopf.Index[str, tuple[str, Tool]],
        agent_index: kopf.Index[Key, Manifest],
        dependent_index: kopf.Index[tuple[str, str, str], Key],
        service_index: kopf.Index[Key, Manifest],
        config_map_index: kopf.Index[Key, Manifest],
        **_: Any,
    ) -> None:
        settings.persistence.finalizer = ours.finalizer
        settings.persistence.progress_storage = LeanProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = LeanDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        # Only our children's watch events reach us (filtered by the API server, not after parsing)
        ours_only = ",".join([*(f"{k}={v}" for k, v in MANAGED_BY.items()), AGENT_LABEL])
        settings.watching.label_selectors[("", "pods")] = ours_only
        settings.watching.label_selectors[("apps", "deployments")] = ours_only
        settings.watching.label_selectors[("", "services")] = ours_only
        settings.watching.label_selectors[("", "configmaps")] = ours_only
        settings.watching.label_selectors[("batch", "jobs")] = ",".join(
            [*(f"{k}={v}" for k, v in MANAGED_BY.items()), f"{KNOWLEDGE_SYNC_LABEL}=true"]
        )
        settings.peering.name = ours.peering_name()
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
        op = Operator(
            settings=ours,
            kube=Kube.connect(
                info,
                field_manager=ours.field_manager,
                on_write=metrics.count_write,
                on_read=metrics.count_read,
                concurrency=ours.api_concurrency,
            ),
            vectors=VectorStore.connect(url=ours.qdrant_url, path=ours.qdrant_path, api_key=key),
            redis=Redis.from_url(ours.redis_url.get_secret_value(), decode_responses=True),
            db=db,
            metrics=metrics,
            build=ours.build(),
            http=httpx.AsyncClient(
                timeout=httpx.Timeout(ours.mcp_discovery_timeout_seconds), follow_redirects=False
            ),
        )
        views = Views(
            tenants=tenant_index,
            prompts=prompt_index,
            tools=tool_index,
            agents=agent_index,
            dependents=dependent_index,
            children={"Service": service_index, "ConfigMap": config_map_index},
        )
        memo[_MEMO_KEY] = state = Started(op, views)  # before serving: cleanup closes what there is
        state.metrics_server = await serve(metrics, ours.metrics_host, ours.metrics_port)
        state.unwatch_gc = metrics.watch_gc()
        logger.info(f"metrics and health on {ours.metrics_host}:{ours.metrics_port}")

    @on.login(registry=registry, id="login")
    def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
        return _login(settings, ours)

    @on.cleanup(registry=registry, id="stop")
    async def stop(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        if _MEMO_KEY not in memo:  # the startup handler failed before it made the clients
            return
        state = started(memo)
        if state.unwatch_gc is not None:
            state.unwatch_gc()
        if state.metrics_server is not None:
            await state.metrics_server.cleanup()
        await state.op.close()
        if left := end_pause_waiters():
            logger.info(f"ended {left} watch stream pause waiter(s) kopf left running")
        report_tasks_left(log)

    # --- indexes: what reconciles read instead of asking the API server ---------------------------

    @kopf.index(*tenants, registry=registry, id="tenant_index")
    async def tenant_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Tenant]:
        return {name: Tenant.model_validate(spec_body(body))}

    @kopf.index(*prompts, registry=registry, id="prompt_index", when=mine)
    async def prompt_index(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[str, tuple[str, Prompt]]:
        return {namespace or "": (name, Prompt.model_validate(spec_body(body)))}

    @kopf.index(*tools, registry=registry, id="tool_index", when=mine)
    async def tool_index(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[str, tuple[str, Tool]]:
        return {namespace or "": (name, reconcile.indexed_tool(body))}

    @kopf.index(*agents, registry=registry, id="agent_index", when=mine)
    async def agent_index(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[Key, dict[str, Any]]:
        return {(namespace or "", name): {**spec_body(body), "status": dict(body.get("status") or {})}}

    @kopf.index(*agents, registry=registry, id="dependent_index", when=mine)
    async def dependent_index(
        namespace: str | None, name: str, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str, str, str], Key]:
        # read from the spec as it is (the CRD's schema holds its shape): validating the whole Agent
        # on each of its events was the most of this index's cost
        ns, key = namespace or "", (namespace or "", name)
        found = {
            ("tenant", "", tenant_of(ns) or ""): key,
            ("prompt", ns, str((spec.get("prompt") or {}).get("name") or "")): key,
        }
        found.update({("tool", ns, str(tool.get("name") or "")): key for tool in spec.get("tools") or []})
        return found

    # An Agent's Service and ConfigMap as their watches show them: a reconcile compares with these
    # and never reads them (kopf fills its indexes before it runs any other handler)
    async def child_index(
        namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
    ) -> dict[Key, Manifest]:
        return {(namespace or "", labels[AGENT_LABEL]): reconcile.watched_child(body)}

    async def child_changed(
        event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
    ) -> None:
        # One edited or deleted by hand is put back at once (not at the next resync)
        if event["type"] not in ("MODIFIED", "DELETED"):
            return
        (op, views), key = clients(memo), (namespace or "", labels[AGENT_LABEL])
        if reconcile.child_drifted(op, key, event["object"], deleted=event["type"] == "DELETED"):
            op.soon(("child", *key), 1.0, lambda: _reconcile_agent_key(op, views, key, "child"))

    agents_children: dict[str, Any] = {**MANAGED_BY, AGENT_LABEL: kopf.PRESENT}
    for plural, handler_id in (("services", "service"), ("configmaps", "config_map")):
        kopf.index(
            "", "v1", plural, labels=agents_children, registry=registry, id=f"{handler_id}_index", when=mine
        )(child_index)
        on.event(
            "", "v1", plural, labels=agents_children, registry=registry, id=f"{handler_id}_changed", when=mine
        )(child_changed)

    # --- Tenant ------------------------------------------------------------------------------

    @on.resume(*tenants, registry=registry, id="tenant_changed", when=mine)
    @on.create(*tenants, registry=registry, id="tenant_changed", when=mine)
    @on.update(*tenants, registry=registry, id="tenant_changed", when=mine)
    async def tenant_changed(name: str, body: kopf.Body, reason: str, memo: kopf.Memo, **_: Any) -> None:
        op, views = clients(memo)
        async with op.reconciling("Tenant", name, "", "event"):
            await reconcile.reconcile_tenant(op, body, views)
        if reason != "resume":  # on resume every Agent resumes too
            await _reconcile_dependents(op, views, "tenant", "", name)

    @kopf.timer(
        *tenants, interval=resync, initial_delay=resync, registry=registry, id="tenant_resync", when=mine
    )
    async def tenant_resync(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await _resync_tenant(*clients(memo), name, body)

    @kopf.timer(
        *tenants, interval=ours.budget_check_seconds, registry=registry, id="tenant_budget", when=mine
    )
    async def tenant_budget(name: str, memo: kopf.Memo, **_: Any) -> None:
        # Timers run on the active replica only (kopf's peering); status.budget keeps it once a month.
        op = started(memo).op
        try:
            await budget.check_budget(op, name)
        except budget.DATABASE_DOWN as exc:
            raise kopf.TemporaryError(f"the usage database is unavailable: {exc}", delay=30) from exc

    if ours.audit_retention_days:

        @kopf.timer(
            *tenants, interval=budget.AUDIT_PRUNE_INTERVAL.total_seconds(), registry=registry,
            id="audit_retention", when=mine,
        )  # fmt: skip
        async def audit_retention(name: str, logger: kopf.Logger, memo: kopf.Memo, **_: Any) -> None:
            # One job for the whole audit trail, run by one timer: that of the first Tenant by name,
            # on the active replica (kopf's peering pauses every other replica's timers). A deleted
            # first Tenant hands the job to the next one's timer.
            op, views = clients(memo)
            if name != min(views.tenants, default=None):
                return
            removed = await budget.prune_audit(op.db, ours.audit_retention_days)
            logger.info(
                f"audit retention: {removed} records older than {ours.audit_retention_days} days removed"
            )

    @on.delete(*tenants, registry=registry, id="tenant_deleted", when=mine)
    async def tenant_deleted(
        name: str, body: kopf.Body, logger: kopf.Logger, memo: kopf.Memo, **_: Any
    ) -> None:
        op = started(memo).op
        async with op.reconciling("Tenant", name, "", "event"):
            logger.info(await reconcile.finalize_tenant(op, body))
        op.metrics.forget_tenant(name)

    # --- Prompt and Tool: reconcile, then the Agents that use them -------------------------------

    @on.resume(*prompts, registry=registry, id="dependency_changed", when=mine)
    @on.create(*prompts, registry=registry, id="dependency_changed", when=mine)
    @on.update(*prompts, registry=registry, id="dependency_changed", when=mine)
    @on.resume(*tools, registry=registry, id="dependency_changed", when=mine)
    @on.create(*tools, registry=registry, id="dependency_changed", when=mine)
    @on.update(*tools, registry=registry, id="dependency_changed", when=mine)
    async def dependency_changed(
        namespace: str | None,
        name: str,
        body: kopf.Body,
        reason: str,
        resource: kopf.Resource,
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        (op, views), ns = clients(memo), namespace or ""
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

    @on.event(*prompts, registry=registry, id="dependency_deleted", when=mine)
    @on.event(*tools, registry=registry, id="dependency_deleted", when=mine)
    async def dependency_deleted(
        event: kopf.RawEvent,
        namespace: str | None,
        name: str,
        resource: kopf.Resource,
        memo: kopf.Memo,
        **_: Any,
    ) -> None:
        if event["type"] == "DELETED":  # the Agents using it now fail to resolve: say so
            kind: DependencyKind = "prompt" if resource.plural == "prompts" else "tool"
            await _reconcile_dependents(*clients(memo), kind, namespace or "", name)

    @on.event(*tools, registry=registry, id="tool_discovered", when=mine)
    async def tool_discovered(
        event: kopf.RawEvent, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
    ) -> None:
        # A schema newly discovered for an MCP Tool (the index holds it by now) changes the configs
        # of the Agents using the Tool; the status write is the event that says so.
        key = (namespace or "", name)
        op, views = clients(memo)
        if event["type"] == "DELETED":
            op.discovered.pop(key, None)
            return
        status = event["object"].get("status") or {}
        if op.discovery_changed(key, (status.get("discovered") or {}).get("parametersHash")):
            await _reconcile_dependents(op, views, "tool", key[0], name)

    @kopf.timer(
        *prompts, interval=resync, initial_delay=resync, registry=registry, id="prompt_resync", when=mine
    )
    async def prompt_resync(
        namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        op = started(memo).op
        async with op.reconciling("Prompt", name, namespace or "", "resync"):
            await reconcile.reconcile_prompt(op, body)

    @kopf.timer(*tools, interval=resync, initial_delay=resync, registry=registry, id="tool_resync", when=mine)
    async def tool_resync(
        namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        op, views = clients(memo)
        async with op.reconciling("Tool", name, namespace or "", "resync"):
            await reconcile.reconcile_tool(op, body, views)

    # --- Agent -------------------------------------------------------------------------------

    # An Agent is reconciled from its watch events, not kopf's create/update handlers: those cost
    # every Agent a bookkeeping write (its last handled spec, as an annotation) and every event of
    # it a comparison with that. A spec change is a new generation; our own status writes are not.
    @on.event(*agents, registry=registry, id="agent_event", when=mine)
    async def agent_event(
        event: kopf.RawEvent, namespace: str | None, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        (op, views), ns = clients(memo), namespace or ""
        tenant = tenant_of(ns)
        if tenant and event["type"] in ("ADDED", "DELETED"):
            op.soon(("agents", tenant), 2.0, lambda: reconcile.refresh_tenant_agents(op, tenant, views))
        if event["type"] != "DELETED":
            # ADDED: created while we watch (its children cannot exist yet); None: listed at start
            await _reconcile_agent_generation(op, views, (ns, name), body, new=event["type"] == "ADDED")
            return
        op.ready_clock.forget(ns, name)
        op.forget_agent((ns, name))
        # A freed slot under the tenant's maxAgents: admit the Agents that waited for one.
        waiting = [
            (ns, a["metadata"]["name"])
            for a in views.agents_in(ns)
            if any(c.get("reason") == max_agents.REASON for c in a["status"].get("conditions") or [])
        ]
        await asyncio.gather(*(_reconcile_agent_key(op, views, key, "dependency") for key in waiting))

    @on.event(
        "",
        "v1",
        "pods",
        labels={**MANAGED_BY, AGENT_LABEL: kopf.PRESENT},
        registry=registry,
        id="pod_changed",
        when=mine,
    )
    async def pod_changed(
        event: kopf.RawEvent, namespace: str | None, name: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any
    ) -> None:
        # Why pods do not run (a missing Secret, a crashing runtime) goes into the Agent's status.
        if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
            return
        (op, views), key = clients(memo), (namespace or "", labels[AGENT_LABEL])
        problem = None if event["type"] == "DELETED" else pod_problem(event["object"], CONFIG_HASH_ANNOTATION)
        if op.record_pod(key, name, problem):
            op.soon(("pods", *key), 1.0, lambda: _reconcile_agent_key(op, views, key, "child"))

    @on.event(
        "apps",
        "v1",
        "deployments",
        labels={**MANAGED_BY, AGENT_LABEL: kopf.PRESENT},
        registry=registry,
        id="deployment_changed",
        when=mine,
    )
    async def deployment_changed(
        event: kopf.RawEvent, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
    ) -> None:
        # Readiness follows the Deployment; a deleted or edited one is put back at once.
        if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
            return
        (op, views), key = clients(memo), (namespace or "", labels[AGENT_LABEL])
        op.saw_deployment(
            key, reconcile.watched_child(event["object"]) if event["type"] != "DELETED" else None
        )
        await _reconcile_agent_key(op, views, key, "child", watched=True)

    # --- Git-kept knowledge: each GitOps revision syncs the tenants' knowledge ----------------------

    if ours.gitops_source:
        source_namespace, source_name = ours.gitops_source.split("/")

        @on.event(
            "source.toolkit.fluxcd.io", "v1", "gitrepositories", field="metadata.name", value=source_name,
            registry=registry, id="gitops_source", when=mine,
        )  # fmt: skip
        async def gitops_source(
            event: kopf.RawEvent, namespace: str | None, memo: kopf.Memo, **_: Any
        ) -> None:
            if namespace != source_namespace or event["type"] not in ("ADDED", "MODIFIED"):
                return
            op, views = clients(memo)
            async with op.reconciling("GitRepository", source_name, source_namespace, "event"):
                await reconcile.sync_knowledge(op, event["object"], views)

        @on.event(
            "batch",
            "v1",
            "jobs",
            labels={**MANAGED_BY, KNOWLEDGE_SYNC_LABEL: "true"},
            registry=registry,
            id="knowledge_job",
            when=mine,
        )
        async def knowledge_job(
            event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
        ) -> None:
            if event["type"] not in ("ADDED", "MODIFIED"):
                return
            op, views = clients(memo)
            async with op.reconciling("Job", name, namespace or "", "child"):
                await reconcile.knowledge_sync_finished(op, event["object"], views)

    return registry
