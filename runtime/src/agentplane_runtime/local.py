"""`agentplane up`: every Agent of a spec tree served from one process, on embedded defaults.

The specs are validated and resolved by the platform (`validate_paths`, `resolve_agent` — the same
code the operator runs); the runtime app is the one an agent pod runs, with the agent router mounted
at `/t/{tenant}/a/{agent}/v1`. Defaults: SQLite under the state directory for API keys and usage,
in-process quota counters with each Tenant's limits, Qdrant local mode under `<state>/qdrant`,
keyword retrieval, and the offline model for agents whose provider has no credentials. Any of them
is replaced by setting the runtime's usual `AGENTPLANE_*` variables.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from fastapi import FastAPI
from sqlalchemy import select

from agentplane_platform.api.v1alpha1 import Tenant
from agentplane_platform.config import (
    AgentConfig,
    ResolvedKnowledge,
    ResolveError,
    collection_name,
    resolve_agent,
)
from agentplane_platform.db.models import ApiKey
from agentplane_platform.knowledge import CollectionSpec, ensure_collection
from agentplane_platform.quotas import QuotaLimits
from agentplane_platform.specs import Report, validate_paths
from agentplane_runtime.agents import AgentRegistry
from agentplane_runtime.auth import create_api_key, split_key
from agentplane_runtime.core.config import Settings
from agentplane_runtime.documents import DocumentError, chunk_text, detect_kind, extract_text
from agentplane_runtime.llm import has_credentials
from agentplane_runtime.quotas import StaticLimits
from agentplane_runtime.services import Runtime

KEYS_FILE = "api-keys.json"
MANIFEST_FILE = "knowledge.json"
_OWNER = "agentplane-up"
_KINDS = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")


class KeywordEmbedder:
    """No dense vectors: retrieval runs on the model-free sparse keyword vector alone."""

    async def embed(self, model: str, dimensions: int, texts: list[str]) -> list[list[float]] | None:
        return None


@dataclass
class LocalSpecs:
    """What `up` serves, derived purely from a validated spec tree."""

    report: Report
    agents: list[AgentConfig] = field(default_factory=list)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def limits(self) -> dict[str, QuotaLimits]:
        return {name: QuotaLimits.of(tenant) for name, tenant in self.tenants.items()}


def load_specs(path: Path) -> LocalSpecs:
    """Validate the tree and resolve every Agent; `errors` lists agents that do not resolve."""
    report = validate_paths([path])
    result = LocalSpecs(report)
    if not report.ok:
        return result
    result.tenants = {name: loaded.resource for name, loaded in report.specs.tenants.items()}
    for (namespace, name), loaded in sorted(report.specs.agents.items()):
        tenant = report.specs.tenant_of(namespace)
        if tenant is None:
            result.errors.append(
                f"{loaded.document.file}: Agent {namespace}/{name}: no Tenant for {namespace}"
            )
            continue
        try:
            result.agents.append(
                resolve_agent(
                    loaded.resource,
                    tenant.resource,
                    report.specs.prompts_in(namespace),
                    report.specs.tools_in(namespace),
                )
            )
        except ResolveError as exc:
            result.errors.append(f"{loaded.document.file}: Agent {namespace}/{name}: {exc}")
    return result


def local_settings(*, state: Path, host: str, port: int) -> Settings:
    """The runtime settings of `up`: the environment's, with the embedded defaults under `state`."""
    return Settings(
        state_dir=state,
        qdrant_path=state / "qdrant",
        ensure_collections=True,
        offline_model=True,
        host=host,
        port=port,
        log_json=False,
        log_level="WARNING",
        otel_traces_exporter="none",
    )


# -- API keys ---------------------------------------------------------------------------------


async def tenant_keys(runtime: Runtime, state: Path, tenants: list[str]) -> dict[str, str]:
    """One local API key per tenant: reused while its record is in the database, else created.
    The database keeps only the hash, so the plain keys are kept in `<state>/api-keys.json` (0600)."""
    path = state / KEYS_FILE
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    keys: dict[str, str] = {}
    async with runtime.engine.connect() as connection:
        for tenant in tenants:
            key = saved.get(tenant)
            parts = split_key(key) if key else None
            if key and parts is not None:
                row = (
                    await connection.execute(
                        select(ApiKey.id).where(
                            ApiKey.id == parts[0], ApiKey.tenant == tenant, ApiKey.revoked_at.is_(None)
                        )
                    )
                ).first()
                if row is not None:
                    keys[tenant] = key
                    continue
            keys[tenant] = await create_api_key(runtime.engine, tenant=tenant, name="agentplane-up")
    path.write_text(json.dumps(keys, indent=2) + "\n")
    path.chmod(0o600)
    return keys


# -- knowledge --------------------------------------------------------------------------------


@dataclass
class IngestResult:
    added: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[str] = field(default_factory=list)


def _knowledge_files(specs: Path, tenant: str, kb: str) -> list[Path]:
    folder = specs / "tenants" / tenant / "knowledge" / kb
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _KINDS)


async def ingest_knowledge(
    runtime: Runtime,
    specs: Path,
    state: Path,
    tenants: dict[str, Tenant],
    progress: Callable[[str], None],
) -> IngestResult:
    """Ingest `specs/tenants/<tenant>/knowledge/<kb>/` into the tenant's knowledge bases, only the
    files whose content hash changed since the last start; files that are gone are deleted."""
    path = state / MANIFEST_FILE
    manifest: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    result = IngestResult()
    seen: set[str] = set()
    jobs: list[tuple[str, ResolvedKnowledge, Path, str]] = []
    bases: dict[str, ResolvedKnowledge] = {}
    for tenant_name, tenant in sorted(tenants.items()):
        for base in tenant.spec.knowledge_bases:
            kb = ResolvedKnowledge(
                name=base.name,
                collection=collection_name(tenant_name, base.name),
                embedding_model=base.embedding_model,
                dimensions=base.dimensions,
                distance=base.distance,
                top_k=5,
                min_score=0.0,
            )
            bases[f"{tenant_name}/{base.name}"] = kb
            files = _knowledge_files(specs, tenant_name, base.name)
            if files:
                await ensure_collection(runtime.vectors, CollectionSpec.of(tenant_name, base))
            for file in files:
                jobs.append(
                    (tenant_name, kb, file, file.relative_to(specs / "tenants" / tenant_name).as_posix())
                )
    total = len(jobs)
    for n, (tenant_name, kb, file, relative) in enumerate(jobs, 1):
        key = f"{tenant_name}/{relative}"
        seen.add(key)
        data = file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if manifest.get(key) == digest:
            result.unchanged += 1
            continue
        progress(_bar(n, total, key))
        try:
            text = extract_text(data, detect_kind(file.name, None))
        except DocumentError as exc:
            result.failed.append(f"{file}: {exc}")
            continue
        await runtime.knowledge.add_document(
            tenant_name,
            kb,
            chunk_text(text),
            source=relative,
            owner=_OWNER,
            visibility="org",
            shared_with=[],
            doc_id=_doc_id(key),
        )
        manifest[key] = digest
        result.added += 1
    for key in sorted(set(manifest) - seen):
        tenant_name, _, relative = key.partition("/")
        kb_name = relative.split("/")[1] if relative.count("/") >= 2 else ""
        gone = bases.get(f"{tenant_name}/{kb_name}")
        if gone is not None:
            await runtime.knowledge.delete_document(tenant_name, gone, _doc_id(key))
        del manifest[key]
        result.removed += 1
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return result


def _doc_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _bar(n: int, total: int, what: str, width: int = 24) -> str:
    done = width * n // max(total, 1)
    return f"  knowledge [{'#' * done}{'.' * (width - done)}] {n}/{total} {what}"


# -- the banner -------------------------------------------------------------------------------


def banner(settings: Settings, agents: list[AgentConfig], keys: dict[str, str], base: str) -> str:
    rows = [("TENANT", "AGENT", "MODEL", "BASE URL", "API KEY")]
    for config in agents:
        live = has_credentials(settings, config.model.name)
        model = f"{config.model.name} ({'live' if live else 'offline'})"
        rows.append(
            (
                config.tenant,
                config.agent,
                model,
                f"{base}/t/{config.tenant}/a/{config.agent}/v1",
                keys[config.tenant],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    table = "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    lines = [f"agentplane up: {len(agents)} agent{'s' if len(agents) != 1 else ''} on {base}", "", table, ""]
    if any(not has_credentials(settings, a.model.name) for a in agents):
        lines.append(
            "  offline: no provider key is set (OPENAI_API_KEY, or AZURE_API_KEY + AZURE_API_BASE), so those "
            "agents answer with the offline model from their knowledge and tools."
        )
        lines.append("")
    if agents:
        first = agents[0]
        url = f"{base}/t/{first.tenant}/a/{first.agent}/v1"
        key = keys[first.tenant]
        lines += [
            "Try it:",
            f"  curl -s {url}/chat/completions -H 'Authorization: Bearer {key}' \\",
            "    -H 'Content-Type: application/json' \\",
            f'    -d \'{{"model": "{first.agent}", "messages": [{{"role": "user", "content": "How do I return an item?"}}]}}\'',
            "",
            "  from openai import OpenAI",
            f"  client = OpenAI(base_url={url!r}, api_key={key!r})",
            f"  reply = client.chat.completions.create(model={first.agent!r}, messages=[{{'role': 'user', 'content': 'How do I return an item?'}}])",
            "  print(reply.choices[0].message.content)",
            "",
        ]
    lines.append("Press Ctrl-C to stop (state is kept in " + str(settings.state_dir) + ").")
    return "\n".join(lines)


# -- the app ----------------------------------------------------------------------------------


def create_local_app(
    settings: Settings, specs_path: Path, loaded: LocalSpecs, out: TextIO, base_url: str
) -> FastAPI:
    """The runtime app serving every agent of `loaded` under `/t/{tenant}/a/{agent}/v1`, with the
    tenants' keys and knowledge prepared at startup."""
    from agentplane_runtime.app import agent_router, create_app

    registry = AgentRegistry()
    for config in loaded.agents:
        registry.put(config)
    app = create_app(
        settings, agents=registry, limits=StaticLimits(loaded.limits), embedder=KeywordEmbedder()
    )
    app.include_router(agent_router(), prefix="/t/{tenant}/a/{agent}/v1")
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            runtime: Runtime = app.state.runtime

            def progress(line: str) -> None:
                out.write(line + "\n")
                out.flush()

            ingested = await ingest_knowledge(
                runtime, specs_path, settings.state_dir, loaded.tenants, progress
            )
            out.write(
                f"knowledge: {ingested.added} ingested, {ingested.unchanged} unchanged, {ingested.removed} removed\n"
            )
            for failure in ingested.failed:
                out.write(f"knowledge: skipped {failure}\n")
            keys = await tenant_keys(runtime, settings.state_dir, sorted(loaded.tenants))
            out.write(banner(settings, loaded.agents, keys, base_url) + "\n")
            out.flush()
            yield

    app.router.lifespan_context = lifespan
    return app


def up(specs: Path, *, host: str, port: int, state: Path, out: TextIO | None = None) -> int:
    """Validate, resolve and serve; returns the exit code (1 when the specs are invalid)."""
    out = out or sys.stdout
    from agentplane_platform.cli import format_report

    loaded = load_specs(specs)
    if not loaded.report.ok or loaded.errors:
        out.write(format_report(loaded.report, [specs]))
        for error in loaded.errors:
            out.write(error + "\n")
        out.write("agentplane up: not starting, fix the problems above\n")
        return 1
    state.mkdir(parents=True, exist_ok=True)
    settings = local_settings(state=state, host=host, port=port)
    # bind first: a busy port fails at once, before any state is touched or a banner is printed
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        out.write(f"agentplane up: cannot listen on {host}:{port}: {exc.strerror} (use --port)\n")
        return 1

    import uvicorn

    from agentplane_runtime.core.logging import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    app = create_local_app(settings, specs, loaded, out, f"http://{host}:{port}")
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=5
        )
    )
    with sock, contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutting down
        server.run(sockets=[sock])
    out.write("agentplane up: stopped\n")
    return 0
