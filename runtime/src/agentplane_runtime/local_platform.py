"""The platform `agentplane up` serves: the runtime app with every agent of the spec tree under
`/t/{tenant}/a/{agent}/v1`, the tenants' limits, keys and knowledge kept equal to the tree while it
is watched (the GitOps loop on one machine), each change reported in a line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from fastapi import FastAPI

from agentplane_platform.config import AgentConfig
from agentplane_platform.quotas import QuotaLimits
from agentplane_runtime.agents import AgentRegistry
from agentplane_runtime.core.config import Settings
from agentplane_runtime.embeddings import ModelEmbedder
from agentplane_runtime.knowledge_sync import SyncResult, sync_knowledge
from agentplane_runtime.local_banner import agent_url, banner, model_label
from agentplane_runtime.local_keys import tenant_keys
from agentplane_runtime.local_specs import LocalDiscovery, LocalSpecs, load_specs, local_discovery
from agentplane_runtime.quotas import StaticLimits
from agentplane_runtime.services import Runtime

log = logging.getLogger("agentplane.up")


def embedding_mode(runtime: Runtime, model: str) -> str:
    """`dense` or `keyword`: how knowledge bases of `model` are embedded by this runtime."""
    embedder = runtime.knowledge.embedder
    return embedder.mode(model) if isinstance(embedder, ModelEmbedder) else "dense"


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
                f"specs: + {key[0]}/{key[1]} {model_label(self.settings, config)} at "
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
