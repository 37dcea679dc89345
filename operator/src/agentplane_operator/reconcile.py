"""One idempotent reconcile per kind: desired state from the pure builders, applied, status written.

Each reconcile reads what exists, writes only what differs, and ends by writing the object's
status (only the fields that changed). Failures end in a condition with a reason and an Event;
`kopf.TemporaryError` asks kopf to retry when a dependency (Qdrant, Redis, PostgreSQL) is down.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import kopf
from pydantic import ValidationError
from qdrant_client.http.exceptions import UnexpectedResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import InterfaceError, OperationalError

from agentplane_operator.builders import (
    AGENT_LABEL,
    MANAGED_BY,
    PROMPT_LABEL,
    REVISION_ANNOTATION,
    agent_endpoint,
    agent_url,
    build_agent_children,
    build_knowledge_sync,
    build_prompt_config_maps,
    build_tenant_children,
    egress_status,
    knowledge_sync_job_name,
    prompt_config_map_name,
)
from agentplane_operator.conditions import (
    PROGRESSING,
    Cond,
    kstatus,
    merge_conditions,
    merge_patched,
    ready_reason,
    status_patch,
)
from agentplane_operator.kube import Manifest, digest, holds
from agentplane_operator.pods import PodProblem
from agentplane_operator.state import Operator, Views
from agentplane_platform import max_agents
from agentplane_platform.api.v1alpha1 import (
    Agent,
    Prompt,
    Tenant,
    Tool,
    ToolDiscovery,
    ToolStatus,
    namespace_of,
    tenant_of,
)
from agentplane_platform.config import (
    AgentConfig,
    ResolveError,
    collection_name,
    prompt_version_hash,
    quota_key_prefix,
    resolve_agent,
)
from agentplane_platform.db import TenantQuota
from agentplane_platform.knowledge import (
    CollectionSpec,
    VectorStore,
    delete_collection,
    ensure_collection,
    qdrant_unreachable,
)
from agentplane_platform.mcp import McpDenied, McpError, discover_tool, needs_discovery
from agentplane_platform.quotas import QuotaLimits
from agentplane_platform.specs import dotted
from agentplane_platform.tool_schema import parameters_problems

log = logging.getLogger("agentplane.operator")


def _meta(body: Mapping[str, Any]) -> tuple[str, str, int]:
    meta = body["metadata"]
    return meta.get("namespace") or "", meta["name"], int(meta.get("generation") or 0)


def _body(body: Mapping[str, Any]) -> kopf.Body:
    """kopf's view of an object, for `kopf.adopt` and `kopf.event` (index entries are plain dicts)."""
    if isinstance(body, kopf.Body):
        return body
    raw: kopf.RawBody = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": body["metadata"]}
    return kopf.Body(raw)


def spec_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """A kopf body as the plain dict a model validates (status excluded: it is ours to write)."""
    return {k: v for k, v in body.items() if k in ("apiVersion", "kind", "metadata", "spec")}


@dataclass(frozen=True)
class StatusWrite:
    """An object's status before a reconcile's write and as that write left it."""

    before: Mapping[str, Any]
    after: Mapping[str, Any]

    @staticmethod
    def _ready(status: Mapping[str, Any], generation: int) -> bool:
        return status.get("observedGeneration") == generation and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )

    def ready(self, generation: int) -> tuple[bool, bool]:
        """Whether the status said `Ready=True` for `generation` before the write, and after it."""
        return self._ready(self.before, generation), self._ready(self.after, generation)


def _wanted_status(
    current: Mapping[str, Any], generation: int, wanted: list[Cond], extra: Mapping[str, Any]
) -> tuple[Cond, dict[str, Any]]:
    """The Ready condition that goes with `wanted`, and the status they make of `current`."""
    failing = ready_reason(wanted)
    if failing is None:
        ready = Cond("Ready", True, "Ready", "; ".join(c.message for c in wanted if c.message))
    else:
        ready = Cond("Ready", False, failing.reason, failing.message)
    progress, drop = kstatus(wanted)
    conditions = merge_conditions(current.get("conditions") or [], [ready, *wanted, *progress], drop)
    return ready, {"observedGeneration": generation, "conditions": conditions, **extra}


async def _write_status(
    op: Operator,
    kind: str,
    body: Mapping[str, Any],
    wanted: list[Cond],
    extra: Mapping[str, Any],
    *,
    known: Mapping[str, Any] | None = None,
    trusted: bool = False,
) -> StatusWrite | None:
    """Write what changed in the status; an Event for every condition that changed status or reason.
    None when the object is gone.

    The status is compared with the object as it is now, not with `body`: an event body or index
    entry may predate our own last write, and comparing with it could skip a needed write. `known`:
    the status as our own last write (or read) of it left it; when the wanted status is that, nothing
    is read or written (a resync compares with the live object again). `trusted`: `known` is the
    live status (only this operator writes it, and it wrote or read it last), so a change is written
    as a patch of it without reading the object first.
    """
    namespace, name, generation = _meta(body)  # the generation whose spec this reconcile acted on
    if known is not None and not status_patch(known, _wanted_status(known, generation, wanted, extra)[1]):
        return StatusWrite(known, known)
    uid = body["metadata"].get("uid")
    if known is not None and trusted:
        current: Mapping[str, Any] = known
    else:
        live = await op.kube.get(kind, name, namespace or None)
        if live is None or live["metadata"].get("uid") != uid:
            return None  # deleted (or replaced) meanwhile
        current = live.get("status") or {}
    ready, desired = _wanted_status(current, generation, wanted, extra)
    patch = status_patch(current, desired)
    written = StatusWrite(current, merge_patched(current, desired))
    if not patch:
        return written
    patched = await op.kube.patch_status(kind, name, namespace or None, patch)
    if patched is None or patched["metadata"].get("uid") != uid:
        return None  # deleted (or replaced: its own reconcile writes its status) meanwhile
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in current.get("conditions") or []}
    for cond in [ready, *wanted]:
        if before.get(cond.type) == (cond.status, cond.reason) or cond.reason == PROGRESSING:
            continue
        if cond.ok is False:
            op.metrics.errors.labels(kind, cond.reason).inc()
        # The news is a failure, and Ready again (its message says what each condition says). A
        # failing Ready repeats the failing condition's event; a condition met is told by Ready's.
        if (cond.type == "Ready") == bool(cond.ok):
            kopf.event(
                _body(body), type="Normal" if cond.ok else "Warning", reason=cond.reason,
                message=cond.message or f"{cond.type} is {cond.status}",
            )  # fmt: skip
    return written


# --- Tenant -----------------------------------------------------------------------------------


async def _record_quota(op: Operator, limits: QuotaLimits) -> bool:
    """Write the tenant's limits to Redis (live) and the database (durable) where they differ."""
    wrote = False
    fields = limits.redis_fields()
    if await op.redis.hgetall(limits.redis_key) != fields:
        await op.redis.hset(limits.redis_key, mapping=dict(fields.items()))
        wrote = True
    values = {
        "tokens_per_minute": limits.tokens_per_minute,
        "requests_per_minute": limits.requests_per_minute,
        "monthly_budget_usd": limits.monthly_budget_usd,
    }
    async with op.db.begin() as conn:
        row = (
            (await conn.execute(select(TenantQuota.__table__).where(TenantQuota.tenant == limits.tenant)))
            .mappings()
            .first()
        )
        if row is None or any(row[k] != v for k, v in values.items()):
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            statement = insert(TenantQuota).values(tenant=limits.tenant, **values)
            await conn.execute(statement.on_conflict_do_update(index_elements=["tenant"], set_=values))
            wrote = True
    return wrote


async def _forget_quota(op: Operator, tenant: str) -> None:
    keys = [key async for key in op.redis.scan_iter(match=f"{quota_key_prefix(tenant)}:*")]
    if keys:
        await op.redis.delete(*keys)
    async with op.db.begin() as conn:
        await conn.execute(delete(TenantQuota).where(TenantQuota.tenant == tenant))


async def _platform_llm_secret(op: Operator) -> tuple[dict[str, str] | None, Cond]:
    """The provider credentials every tenant namespace gets, and the condition saying where from."""
    settings = op.settings
    if settings.key_vault_name:
        return None, Cond(
            "CredentialsReady", True, "KeyVault",
            f"provider credentials are synced from Key Vault {settings.key_vault_name!r} by the Secrets Store CSI driver",
        )  # fmt: skip
    where = f"{settings.platform_namespace}/{settings.llm_secret}"
    secret = await op.kube.get("Secret", settings.llm_secret, settings.platform_namespace)
    if secret is None:
        return None, Cond(
            "CredentialsReady", False, "LLMSecretNotFound",
            f"Secret {where} with the LLM providers' credentials does not exist: agent pods cannot start "
            "until it does (create it with OPENAI_API_KEY, AZURE_API_KEY, ...)",
            stalled=True,
        )  # fmt: skip
    try:
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    except (binascii.Error, UnicodeDecodeError) as exc:
        return None, Cond(
            "CredentialsReady", False, "LLMSecretInvalid", f"Secret {where}: {exc}", stalled=True
        )
    return data, Cond(
        "CredentialsReady",
        True,
        "Copied",
        f"provider credentials copied from Secret {where} ({len(data)} keys)",
    )


_STORE_DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
    InterfaceError,
    OSError,
    TimeoutError,
)
"""What Redis and the database raise when they do not answer (worth retrying soon)."""


@dataclass(frozen=True)
class KnowledgeStep:
    """What the Tenant's knowledge step found: its condition, the status' `knowledgeBases`, the
    messages of the collections it created, and whether to retry soon (Qdrant did not answer)."""

    condition: Cond
    knowledge: list[dict[str, Any]]
    created: list[str]
    retry: bool


def _qdrant_reason(exc: Exception) -> str:
    """A failed Qdrant call in one line: a refusal's status and Qdrant's own error, else type and text."""
    if not isinstance(exc, UnexpectedResponse):
        return f"{type(exc).__name__}: {exc}"
    said = exc.content.decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        said = str(json.loads(said)["status"]["error"])
    return f"Qdrant answered {exc.status_code} {exc.reason_phrase}: {said[:500]}"


async def knowledge_step(
    vectors: VectorStore, tenant: Tenant, previous: list[dict[str, Any]]
) -> KnowledgeStep:
    """Ensure the Tenant's collections. Qdrant not answering is `QdrantUnavailable`, retried soon;
    a refusal (`QdrantRefused`, a 4xx) or any other failure (`CollectionFailed`) is logged with the
    tenant and collection and stalls the condition with its real reason: retrying soon would fail the
    same way, so the next try is the resync's (or a change of the Tenant). `previous` (the status'
    `knowledgeBases`) is kept when the step fails."""
    knowledge: list[dict[str, Any]] = []
    created: list[str] = []
    collection = "(listing the collections)"
    try:
        for base in tenant.spec.knowledge_bases:
            spec = CollectionSpec.of(tenant.name, base)
            collection = spec.name
            state = await ensure_collection(vectors, spec)
            knowledge.append(
                {"name": base.name, "collection": state.name, "ready": state.ready, "message": state.message}
            )
            if state.created:
                created.append(state.message)
        declared = {collection_name(tenant.name, b.name) for b in tenant.spec.knowledge_bases}
        prefix = collection_name(tenant.name, "")
        collection = "(listing the collections)"
        for existing in sorted(c.name for c in (await vectors.client.get_collections()).collections):
            if existing.startswith(prefix) and existing not in declared:
                knowledge.append({
                    "name": existing.removeprefix(prefix), "collection": existing, "ready": False,
                    "message": "no longer declared; the collection and its documents are kept (delete it by hand)",
                })  # fmt: skip
    except Exception as exc:  # every failure ends in the condition; only an outage is retried soon
        reason = _qdrant_reason(exc)
        if qdrant_unreachable(exc):
            log.warning(
                "tenant %s: Qdrant did not answer at %s (%s); retrying", tenant.name, collection, reason
            )
            return KnowledgeStep(
                Cond("KnowledgeReady", False, "QdrantUnavailable", reason), previous, created, True
            )
        refused = isinstance(exc, UnexpectedResponse)
        log.error(
            "tenant %s: collection %s failed (%s)", tenant.name, collection, reason,
            exc_info=None if refused else exc,
        )  # fmt: skip
        cond = Cond(
            "KnowledgeReady", False, "QdrantRefused" if refused else "CollectionFailed",
            f"collection {collection}: {reason}", stalled=True,
        )  # fmt: skip
        return KnowledgeStep(cond, previous, created, False)
    bad = [k for k in knowledge if not k["ready"] and k["collection"] in declared]
    cond = (
        Cond(
            "KnowledgeReady",
            False,
            "CollectionIncompatible",
            "; ".join(k["message"] for k in bad),
            stalled=True,
        )
        if bad
        else Cond("KnowledgeReady", True, "CollectionsReady", f"{len(declared)} collection(s) ready")
    )
    return KnowledgeStep(cond, knowledge, created, False)


async def reconcile_tenant(op: Operator, body: Mapping[str, Any], views: Views) -> None:
    tenant = Tenant.model_validate(spec_body(body))
    limits = QuotaLimits.of(tenant)
    op.metrics.set_tenant_limits(limits)
    llm_data, credentials = await _platform_llm_secret(op)
    tools = list(views.tools_in(tenant.namespace).values())
    children = build_tenant_children(tenant, op.settings.build(llm_secret_data=llm_data), tools)
    kopf.adopt(children, owner=_body(body))
    namespace, *rest = children
    await op.kube.apply(namespace)
    await asyncio.gather(*(op.kube.apply(child) for child in rest))
    conditions = [
        Cond("NamespaceReady", True, "Applied", f"namespace {tenant.namespace} and its policies applied"),
        credentials,
    ]

    previous = list((body.get("status") or {}).get("knowledgeBases") or [])
    step = await knowledge_step(op.vectors, tenant, previous)
    for message in step.created:
        kopf.event(_body(body), type="Normal", reason="CollectionCreated", message=message)
    conditions.append(step.condition)
    knowledge = step.knowledge
    retry = "Qdrant" if step.retry else None

    try:
        await _record_quota(op, limits)
        conditions.append(
            Cond("QuotaRecorded", True, "Recorded", "LLM limits written to Redis and the database")
        )
    except _STORE_DOWN as exc:
        conditions.append(
            Cond("QuotaRecorded", False, "QuotaStoreUnavailable", f"{type(exc).__name__}: {exc}")
        )
        retry = retry or "the quota store"
    except Exception as exc:  # not an outage: a bug; said in the condition, tried again at the resync
        log.error("tenant %s: recording the quota limits failed", tenant.name, exc_info=exc)
        conditions.append(
            Cond("QuotaRecorded", False, "QuotaRecordFailed", f"{type(exc).__name__}: {exc}", stalled=True)
        )

    agents = len(views.agents_in(tenant.namespace))
    egress = [e.model_dump(mode="json", by_alias=True) for e in egress_status(tenant)]
    await _write_status(
        op, "Tenant", body, conditions,
        {"namespace": tenant.namespace, "agents": agents, "knowledgeBases": knowledge, "egress": egress},
    )  # fmt: skip
    if retry:
        raise kopf.TemporaryError(f"{retry} unavailable; retrying", delay=15)


async def refresh_tenant_agents(op: Operator, tenant: str, views: Views) -> None:
    """Keep the Tenant's `status.agents` current as Agents come and go (between full reconciles)."""
    body = await op.kube.get("Tenant", tenant)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    count = len(views.agents_in(namespace_of(tenant)))
    if (body.get("status") or {}).get("agents") != count:
        await op.kube.patch_status("Tenant", tenant, None, {"agents": count})


async def finalize_tenant(op: Operator, body: Mapping[str, Any]) -> str:
    """What the Tenant's deletion policy says to do with its data; the message of what was done."""
    tenant = Tenant.model_validate(spec_body(body))
    collections = [collection_name(tenant.name, b.name) for b in tenant.spec.knowledge_bases]
    if tenant.spec.deletion_policy == "Retain":
        message = (
            f"deletionPolicy Retain: kept collections {', '.join(collections) or '(none)'} "
            f"and quota records of tenant {tenant.name!r}"
        )
        kopf.event(_body(body), type="Normal", reason="DataRetained", message=message)
        return message
    try:
        prefix = collection_name(tenant.name, "")
        existing = [
            c.name
            for c in (await op.vectors.client.get_collections()).collections
            if c.name.startswith(prefix)
        ]
        deleted = [
            name
            for name in sorted(set(existing) | set(collections))
            if await delete_collection(op.vectors, name)
        ]
        await _forget_quota(op, tenant.name)
    except Exception as exc:  # the finalizer must end some day: retried, soon only after an outage
        down = qdrant_unreachable(exc) or isinstance(exc, _STORE_DOWN)
        reason = _qdrant_reason(exc)
        if not down:
            log.error("tenant %s: deleting its data failed (%s)", tenant.name, reason, exc_info=exc)
        kopf.event(_body(body), type="Warning", reason="DeletionFailed", message=reason)
        raise kopf.TemporaryError(
            f"could not delete tenant data: {reason}", delay=15 if down else 300
        ) from exc
    message = f"deletionPolicy Delete: deleted collections {', '.join(deleted) or '(none)'} and quota records"
    kopf.event(_body(body), type="Normal", reason="DataDeleted", message=message)
    return message


# --- Prompt and Tool --------------------------------------------------------------------------


async def reconcile_prompt(op: Operator, body: Mapping[str, Any]) -> None:
    prompt = Prompt.model_validate(spec_body(body))
    namespace = prompt.metadata.namespace or ""
    maps = build_prompt_config_maps(prompt)
    kopf.adopt(maps, owner=_body(body))
    await asyncio.gather(*(op.kube.apply(m) for m in maps))
    wanted = {m["metadata"]["name"] for m in maps}
    for stale in await op.kube.list("ConfigMap", namespace, labels={**MANAGED_BY, PROMPT_LABEL: prompt.name}):
        if stale["metadata"]["name"] not in wanted:
            await op.kube.delete("ConfigMap", stale["metadata"]["name"], namespace)
    versions = [
        {"version": n, "hash": prompt_version_hash(v), "configMap": prompt_config_map_name(prompt.name, n)}
        for n, v in sorted(prompt.spec.versions().items())
    ]
    listed = ", ".join(f"v{v['version']}" for v in versions)
    await _write_status(
        op, "Prompt", body, [Cond("Published", True, "VersionsPublished", f"versions {listed} published")],
        {"versions": versions},
    )  # fmt: skip


def parameters_condition(tool: Tool) -> Cond:
    """`ParametersValid`: the Tool's `parameters` is a usable JSON Schema (the rule `validate` applies)."""
    parameters = tool.spec.parameters
    if parameters is None:
        return Cond("ParametersValid", True, "NoParameters", "the tool declares no parameters")
    problems = parameters_problems(parameters)
    if not problems:
        return Cond("ParametersValid", True, "SchemaValid", "parameters are a valid JSON Schema")
    shown = [f"{dotted(('spec', 'parameters', *p.path))}: {p.message}" for p in problems[:3]]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return Cond("ParametersValid", False, "InvalidParameters", "; ".join(shown) + more, stalled=True)


def indexed_tool(body: Mapping[str, Any]) -> Tool:
    """A Tool as the index keeps it: its spec, and the schema discovered for it (what resolving an
    Agent reads from its status); a status that does not parse counts as nothing discovered."""
    tool = Tool.model_validate(spec_body(body))
    found = (body.get("status") or {}).get("discovered")
    if found:
        with contextlib.suppress(ValidationError):
            discovered = ToolDiscovery.model_validate(found)
            tool = tool.model_copy(update={"status": ToolStatus(discovered=discovered)})
    return tool


DISCOVERY = "SchemaDiscovered"


async def tool_discovery(
    http: httpx.AsyncClient,
    tool: Tool,
    tenant: Tenant | None,
    *,
    previous: ToolDiscovery | None,
    secret: Cond,
    credential: str | None,
    timeout: float,
) -> tuple[Cond, ToolDiscovery | None]:
    """`SchemaDiscovered`, and what `status.discovered` should hold: for an MCP Tool without
    parameters, the schema its server lists (`agentplane_platform.mcp.discover_tool`, only where the
    Tenant's egress allowlist admits). When the server cannot be listed, the schema discovered
    before for the same server and tool is kept, and the condition says so."""
    spec = needs_discovery(tool)
    if spec is None:
        return Cond(DISCOVERY, True, "NotNeeded", ""), None
    kept = (
        previous if previous is not None and (previous.url, previous.tool) == (spec.url, spec.tool) else None
    )

    def failed(message: str, *, stalled: bool = False) -> tuple[Cond, ToolDiscovery | None]:
        if kept is not None:
            when = kept.discovered_at.strftime("%Y-%m-%dT%H:%M:%SZ")
            message += f"; Agents keep the schema discovered at {when} ({kept.parameters_hash})"
        else:
            message += "; Agents using the Tool wait for it (or declare spec.parameters)"
        return Cond(DISCOVERY, False, "DiscoveryFailed", message, stalled=stalled), kept

    namespace = tool.metadata.namespace or ""
    if tenant is None:
        return failed(f"no Tenant owns namespace {namespace}, so no egress allowlist admits {spec.url}")
    if spec.auth is not None and spec.auth.secret_ref.key_vault is not None:
        return failed(
            f"the operator does not read Key Vault secret {spec.auth.secret_ref.key_vault.name!r} "
            "(only agent pods mount it) to authenticate to the MCP server",
            stalled=True,
        )
    if secret.ok is False:
        return failed(f"the credential to list the MCP server is missing: {secret.message}", stalled=True)
    try:
        found = await discover_tool(
            http, tool, tenant.spec.egress, credential=credential, previous=kept, timeout=timeout
        )
    except McpDenied as exc:
        return failed(f"{exc}: add it to Tenant {tenant.name!r}'s spec.egress", stalled=True)
    except McpError as exc:
        return failed(f"{spec.url}: {exc}")
    return Cond(
        DISCOVERY, True, "Discovered",
        f"inputSchema of MCP tool {spec.tool!r} listed by {spec.url} ({found.parameters_hash})",
    ), found  # fmt: skip


def _secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    """A key of a Secret as the API server returns it (`data` is base64), as text."""
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    try:
        return base64.b64decode((secret.get("data") or {}).get(key) or "").decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


async def reconcile_tool(op: Operator, body: Mapping[str, Any], views: Views) -> None:
    """Check the Tool's secret reference and parameters, discover an MCP Tool's schema when it
    declares none; raises `kopf.TemporaryError` when its server cannot be listed now."""
    tool = Tool.model_validate(spec_body(body))
    namespace = tool.metadata.namespace or ""
    auth = getattr(tool.spec, "auth", None)
    credential: str | None = None
    cond = Cond("SecretResolved", True, "NoSecret", "the tool uses no credentials")
    if auth is not None and auth.secret_ref.kubernetes is not None:
        ref = auth.secret_ref.kubernetes
        secret = await op.kube.get("Secret", ref.name, namespace)
        if secret is None:
            cond = Cond(
                "SecretResolved",
                False,
                "SecretNotFound",
                f"Secret {ref.name!r} not found in namespace {namespace}",
                stalled=True,
            )
        elif ref.key not in (secret.get("data") or {}) and ref.key not in (secret.get("stringData") or {}):
            cond = Cond(
                "SecretResolved", False, "SecretKeyNotFound", f"Secret {ref.name!r} has no key {ref.key!r}",
                stalled=True,
            )  # fmt: skip
        else:
            cond = Cond("SecretResolved", True, "SecretFound", f"Secret {ref.name!r} key {ref.key!r} exists")
            credential = _secret_value(secret, ref.key) if needs_discovery(tool) else None
    elif auth is not None and auth.secret_ref.key_vault is not None:
        cond = Cond(
            "SecretResolved", True, "KeyVaultReference",
            f"Key Vault secret {auth.secret_ref.key_vault.name!r} is mounted by the CSI driver when pods start",
        )  # fmt: skip
    tenant_name = tenant_of(namespace)
    last = indexed_tool(body).status
    discovery, discovered = await tool_discovery(
        op.http,
        tool,
        views.tenant(tenant_name) if tenant_name else None,
        previous=last.discovered if last is not None else None,
        secret=cond,
        credential=credential,
        timeout=op.settings.mcp_discovery_timeout_seconds,
    )
    found = discovered.model_dump(mode="json", by_alias=True) if discovered is not None else None
    await _write_status(
        op, "Tool", body, [cond, parameters_condition(tool), discovery], {"discovered": found}
    )
    if discovery.ok is False and not discovery.stalled:
        raise kopf.TemporaryError(f"MCP discovery: {discovery.message}", delay=30)


# --- Agent ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentPlan:
    """What an Agent should be, decided from the indexes alone (no I/O)."""

    conditions: list[Cond]
    config: AgentConfig | None
    children: list[Manifest]


def plan_agent(op: Operator, body: Mapping[str, Any], views: Views) -> AgentPlan:
    namespace, name, _ = _meta(body)
    agent = Agent.model_validate(spec_body(body))
    tenant_name = tenant_of(namespace)
    tenant = views.tenant(tenant_name) if tenant_name else None
    if tenant is None:
        why = Cond(
            "ConfigResolved", False, "TenantNotFound", f"no Tenant owns namespace {namespace}", stalled=True
        )
        return AgentPlan([why, Cond("Deployed", False, "TenantNotFound", why.message)], None, [])
    admission = views.admission(tenant)
    if name not in admission.admitted:  # also one not indexed yet: admitted only once counted
        refused = admission.refused.get(name, max_agents.refusal(tenant))
        return AgentPlan(
            [
                Cond("ConfigResolved", False, max_agents.REASON, refused, stalled=True),
                Cond("Deployed", False, max_agents.REASON, refused),
            ],
            None, [],
        )  # fmt: skip
    try:
        config = resolve_agent(agent, tenant, views.prompts_in(namespace), views.tools_in(namespace))
    except ResolveError as exc:
        # a Tool's schema not discovered yet may come (its Tool says why); the rest needs an edit
        stalled = exc.reason != "ToolNotDiscovered"
        return AgentPlan(
            [
                Cond("ConfigResolved", False, exc.reason, exc.message, stalled=stalled),
                Cond("Deployed", False, "ConfigNotResolved", "the last resolved config (if any) keeps running"),
            ],
            None, [],
        )  # fmt: skip
    children = build_agent_children(agent, config, op.build)
    kopf.adopt(children, owner=_body(body))
    resolved = Cond(
        "ConfigResolved", True, "Resolved", f"config {config.hash()} (prompt v{config.prompt.version})"
    )
    return AgentPlan([resolved], config, children)


def _deployment_ready(
    deployment: Manifest, config: AgentConfig, problems: Sequence[PodProblem] = ()
) -> tuple[Cond, int]:
    """The `Deployed` condition: available, still rolling out, or not running and why (from the pods
    of the current config, or the Deployment's progress deadline)."""
    status = deployment.get("status") or {}
    want = int((deployment.get("spec") or {}).get("replicas") or 0)
    generation = int(deployment["metadata"].get("generation") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    # One message for the whole rollout: each distinct message would be one more status write.
    waiting = Cond("Deployed", False, PROGRESSING, f"waiting for {want} pod(s) with config {config.hash()}")
    if int(status.get("observedGeneration") or 0) < generation:
        return waiting, 0
    if updated < want or available < want or total > updated:
        current = [p for p in problems if p.config_hash == config.hash()]
        stuck = next((p for p in current if p.stalled), None) or next(iter(current), None)
        if stuck is not None:
            return Cond("Deployed", False, stuck.reason, stuck.describe(), stalled=stuck.stalled), min(
                updated, available
            )
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "Progressing"
                and condition.get("reason") == "ProgressDeadlineExceeded"
            ):
                message = str(condition.get("message") or "the rollout exceeded its progress deadline")
                return Cond("Deployed", False, "ProgressDeadlineExceeded", message, stalled=True), min(
                    updated, available
                )
        return waiting, min(updated, available)
    return Cond(
        "Deployed", True, "Available", f"{available}/{want} pods available with config {config.hash()}"
    ), available


OPTIONAL_CHILDREN = ("HorizontalPodAutoscaler", "PodDisruptionBudget")
"""An Agent's children that exist only for some specs, so may be left over from an earlier one."""
WATCHED_CHILDREN = ("ConfigMap", "Service")
"""An Agent's children kept in kopf indexes from their watch (`Views.child`), besides the Deployment
(`Operator.deployments`): compared with that, never read."""
ABSENT = "absent"
"""What `Operator.applied` remembers of an optional child found missing."""


def watched_child(body: Mapping[str, Any]) -> Manifest:
    """A watched child (Deployment, Service, ConfigMap) as the operator keeps it from its watch:
    without its managed fields, most of its size and never compared."""
    meta = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    return {**body, "metadata": meta}


def child_drifted(op: Operator, key: tuple[str, str], child: Mapping[str, Any], *, deleted: bool) -> bool:
    """Whether a watch event shows an Agent's child no longer as this instance last planned it
    (deleted, or edited by someone else). An Agent not planned yet has its first reconcile to come."""
    planned = op.agent_plans.get(key)
    if planned is None:
        return False
    desired = next((c for c in planned[1].children if c["kind"] == child.get("kind")), None)
    if desired is None or desired["metadata"]["name"] != child["metadata"]["name"]:
        return False
    return deleted or not holds(child, desired)


async def _apply_agent_children(
    op: Operator, views: Views, key: tuple[str, str], uid: str | None, children: list[Manifest], *,
    new: bool, dependency: bool,
) -> Manifest:  # fmt: skip
    """Apply an Agent's children, its ConfigMap first (pods never start without their config), delete
    an optional child its spec no longer asks for; its Deployment as the API server has it now.

    Reads are few: a new Agent's children cannot exist yet, so are applied without reading them
    first; the Deployment, Service and ConfigMap are compared with what their watches show
    (`Operator.deployments`, `Views.child`), never read: one that differs (edited by hand) or is
    missing is applied. What each child was applied as is remembered (`Operator.applied`): a
    dependency's reconcile (its Tenant, Prompt or Tool changed) skips the children that stay as
    applied and writes the others without reading them; the optional children are read, and one
    found missing once is not looked for again."""
    namespace, name = key
    remembered = op.applied_children(key, uid)

    async def apply(child: Manifest) -> Manifest:
        kind, fingerprint = child["kind"], digest(child)
        watched = kind == "Deployment" or kind in WATCHED_CHILDREN
        seen = None
        if not new:
            seen = op.deployments.get(key) if kind == "Deployment" else views.child(kind, key)
        if seen is not None and holds(seen, child):
            live = seen  # as its watch shows it now: never read
        elif kind != "Deployment" and dependency and remembered.get(kind) == fingerprint:
            live = child  # as we applied it (a Deployment not in its watch is gone: applied again)
        else:
            read = not watched and not new and not (dependency and kind in remembered)
            live, _ = await op.kube.apply(child, read=read)
        remembered[kind] = fingerprint
        return live

    config_map, *rest = children
    await apply(config_map)
    applied = await asyncio.gather(*(apply(child) for child in rest))
    live = next(obj for obj in applied if obj["kind"] == "Deployment")
    op.saw_deployment(key, live)
    wanted = {child["kind"] for child in children}
    for kind in OPTIONAL_CHILDREN:
        if kind in wanted or remembered.get(kind) == ABSENT:
            continue
        if not new:  # a new Agent's went with their old owner
            stale = await op.kube.get(kind, name, namespace)
            if stale is not None and stale["metadata"].get("labels", {}).get(AGENT_LABEL) == name:
                await op.kube.delete(kind, name, namespace)
        remembered[kind] = ABSENT
    return live


async def reconcile_agent(
    op: Operator,
    body: Mapping[str, Any],
    views: Views,
    *,
    deployment: Manifest | None = None,
    new: bool = False,
    dependency: bool = False,
) -> None:
    """Apply the agent's children (unless `deployment`, from a watch event, shows nothing to do) and status.
    `new`: the Agent was just created, so its children are applied without reading them first.
    `dependency`: a Tenant, Prompt or Tool it uses changed; when its config stays what our last status
    write said was resolved and applied for this generation, there is nothing to do (a new Prompt
    re-reconciles every Agent naming it, mostly to find nothing changed)."""
    namespace, name, generation = _meta(body)
    created = body["metadata"].get("creationTimestamp")
    op.ready_clock.seen(namespace, name, generation, datetime.fromisoformat(created) if created else None)
    uid = body["metadata"].get("uid")
    # A Deployment event (several a rollout) reuses the plan of the last reconcile of this generation:
    # every other cause (a change of the Agent or of what it uses, a resync) plans anew.
    cached = op.agent_plans.get((namespace, name)) if deployment is not None else None
    if cached is not None and cached[0] == (uid, generation):
        plan: AgentPlan = cached[1]
    else:
        plan = plan_agent(op, body, views)
        op.agent_plans[(namespace, name)] = ((uid, generation), plan)
    # the status as our last write left it, unless the Agent was replaced since
    last = op.agent_statuses.get((namespace, name))
    said = last[1] if last is not None and last[0] == uid else None
    if dependency and plan.config is not None and said is not None:
        resolved = any(
            c.get("type") == "ConfigResolved" and c.get("status") == "True"
            for c in said.get("conditions") or []
        )
        if (
            resolved
            and said.get("configHash") == plan.config.hash()
            and said.get("observedGeneration") == generation
        ):
            return
    extra: dict[str, Any] = {}
    conditions = list(plan.conditions)
    if plan.config is not None:
        desired = {c["kind"]: c for c in plan.children}
        if deployment is not None and holds(deployment, desired["Deployment"]):
            live = deployment  # a status change of our own Deployment: only readiness to update
        else:
            deployment = None
            live = await _apply_agent_children(
                op, views, (namespace, name), uid, plan.children, new=new, dependency=dependency
            )
        deployed, replicas = _deployment_ready(live, plan.config, op.pod_problems_of(namespace, name))
        conditions.append(deployed)
        extra = {
            "endpoint": agent_endpoint(plan.config),
            "url": agent_url(plan.config, op.build),
            "configHash": plan.config.hash(),
            "replicas": replicas,
        }
    # A Deployment event's or a dependency's reconcile compares with the status as our last write left
    # it, a new Agent's with the one it was created with (none), and writes a change without reading
    # the Agent first; the others (a change of the Agent, a resync) too when the Agent as watched
    # shows that status, else (someone else wrote it, or the watch lags) with the live one.
    known = said if deployment is not None or dependency else None
    if known is None and said is not None and said == body.get("status"):
        known = said
    if new:
        known = said if said is not None else body.get("status") or {}
    written = await _write_status(op, "Agent", body, conditions, extra, known=known, trusted=True)
    if written is not None:
        op.agent_statuses[(namespace, name)] = (uid, written.after)
        was_ready, is_ready = written.ready(generation)
        op.ready_clock.written(namespace, name, generation, was_ready=was_ready, is_ready=is_ready)
    else:
        op.agent_statuses.pop((namespace, name), None)


# --- Git-kept knowledge -----------------------------------------------------------------------


async def _set_knowledge_sync(op: Operator, views: Views, status_of: dict[str, dict[str, Any]]) -> None:
    """Write `status.knowledgeSync` of the Tenants in `status_of` where it differs, with an Event."""
    for name, wanted in sorted(status_of.items()):
        body = await op.kube.get("Tenant", name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            continue
        if (body.get("status") or {}).get("knowledgeSync") == wanted:
            continue
        await op.kube.patch_status("Tenant", name, None, {"knowledgeSync": wanted})
        if wanted["state"] != "Running":
            ok = wanted["state"] == "Succeeded" and not wanted["failed"]
            kopf.event(
                _body(body), type="Normal" if ok else "Warning", reason=f"KnowledgeSync{wanted['state']}",
                message=wanted["message"],
            )  # fmt: skip


def _tenants_with_knowledge(views: Views) -> list[str]:
    return sorted(name for name, found in views.tenants.items() for t in found if t.spec.knowledge_bases)


async def sync_knowledge(op: Operator, source: Mapping[str, Any], views: Views) -> None:
    """A GitOps revision arrived: start the Job that syncs its knowledge (once per revision)."""
    artifact = (source.get("status") or {}).get("artifact") or {}
    revision, url = artifact.get("revision"), artifact.get("url")
    if not revision or not url:
        return
    job = knowledge_sync_job_name(str(revision))
    if await op.kube.get("Job", job, op.settings.platform_namespace) is not None:
        return  # this revision's Job exists (running, or done and reported)
    for child in build_knowledge_sync(
        op.build, revision=str(revision), url=str(url), specs_dir=op.settings.gitops_specs_dir
    ):
        await op.kube.apply(child)
    running = {"revision": revision, "state": "Running", "job": job, "message": f"Job {job} started"}
    await _set_knowledge_sync(
        op, views, {name: {**running, "ingested": 0, "unchanged": 0, "removed": 0, "failed": []}
                    for name in _tenants_with_knowledge(views)}
    )  # fmt: skip


async def knowledge_sync_finished(op: Operator, job: Mapping[str, Any], views: Views) -> None:
    """A knowledge-sync Job ended: each Tenant's part of its summary goes into the Tenant's status."""
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" not in conditions and "Failed" not in conditions:
        return
    meta = job["metadata"]
    revision = (meta.get("annotations") or {}).get(REVISION_ANNOTATION, "")
    pods = await op.kube.list("Pod", meta["namespace"], labels={"job-name": meta["name"]})
    said = ""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            said = str(((container.get("state") or {}).get("terminated") or {}).get("message") or said)
    try:
        summary = json.loads(said)
    except ValueError:
        summary = None
    reported = summary.get("tenants", {}) if isinstance(summary, dict) else {}
    failed_job = "Failed" in conditions
    wanted: dict[str, dict[str, Any]] = {}
    for name in _tenants_with_knowledge(views):
        part = reported.get(name) or {}
        counts = {k: int(part.get(k) or 0) for k in ("ingested", "unchanged", "removed")}
        failures = [str(f) for f in part.get("failed") or []][:64]
        if failed_job or not part:
            reason = said.strip()[-500:] or str(conditions.get("Failed", {}).get("message", "no summary"))
            message = f"Job {meta['name']} failed: {reason}"
            state = "Failed"
        else:
            message = (
                f"{counts['ingested']} ingested, {counts['unchanged']} unchanged, {counts['removed']} removed"
                + (f", {len(failures)} failed" if failures else "")
            )
            state = "Succeeded"
        wanted[name] = {"revision": revision, "state": state, "job": meta["name"], "message": message,
                        "failed": failures, **counts}  # fmt: skip
    await _set_knowledge_sync(op, views, wanted)
