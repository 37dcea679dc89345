"""What the handlers share: the operator's clients (kept in kopf's memo) and views of the indexes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from agentplane_operator.builders import BuildSettings
from agentplane_operator.kube import PRIORITY, Kube, Manifest
from agentplane_operator.metrics import Metrics, ReadyClock
from agentplane_operator.pods import PodProblem
from agentplane_operator.settings import OperatorSettings
from agentplane_platform import max_agents
from agentplane_platform.api.v1alpha1 import Prompt, Tenant, Tool, tenant_of
from agentplane_platform.knowledge import VectorStore

Cause = Literal["event", "resync", "dependency", "child"]
DependencyKind = Literal["tenant", "prompt", "tool"]
Key = tuple[str, str]
"""(namespace, name) of a namespaced object."""

V = TypeVar("V")
logger = logging.getLogger(__name__)


_AGENT_PRIORITY: dict[str, int] = {"event": 1, "dependency": 1, "child": 2, "resync": 3}


def request_priority(kind: str, cause: Cause) -> int:
    """Whose API requests go first when many wait (`kube.PRIORITY`, lower first). First a change of
    a Tenant, Prompt or Tool: few, each with many Agents waiting on it. Then a change of an Agent or
    of what it uses, and the resync of a Tenant, Prompt or Tool; then an Agent's Deployment rolling
    out; last an Agent's resync, which sends no request when all is as applied. A reconcile waiting
    here holds its object's lock: the resync of a Tenant, Prompt or Tool is not put last, so that a
    change of it does not wait behind every Agent."""
    if kind != "Agent":
        return 1 if cause == "resync" else 0
    return _AGENT_PRIORITY[cause]


@dataclass
class Operator:
    """The operator's clients and per-object locks, created at startup and closed at cleanup."""

    settings: OperatorSettings
    kube: Kube
    vectors: VectorStore
    redis: Redis
    db: AsyncEngine
    metrics: Metrics
    build: BuildSettings
    """The builders' settings for Agents (a Tenant's add the platform's LLM Secret, read per reconcile)."""
    http: httpx.AsyncClient
    """Lists MCP servers (schema discovery): no redirects followed, bounded by the discovery timeout."""
    locks: defaultdict[tuple[str, str, str], asyncio.Lock] = field(
        default_factory=lambda: defaultdict(asyncio.Lock)
    )
    discovered: dict[Key, str | None] = field(default_factory=dict)
    """(namespace, tool) -> the hash of the schema in the Tool's status, as last seen by the watch."""
    deployments: dict[Key, Manifest] = field(default_factory=dict)
    """(namespace, agent) -> its Deployment as last seen, by its watch or a read (the newest wins)."""
    agent_statuses: dict[Key, tuple[str | None, Mapping[str, Any]]] = field(default_factory=dict)
    """(namespace, agent) -> (its uid, its status as our last write or read of it left it)."""
    applied: dict[Key, tuple[str | None, dict[str, str]]] = field(default_factory=dict)
    """(namespace, agent) -> (its uid, kind -> the digest of the child as we last applied it or found
    it to hold, `ABSENT` for an optional child found missing): what a dependency's reconcile need not
    read again (`reconcile._apply_agent_children`)."""
    agent_generations: dict[Key, tuple[str | None, int]] = field(default_factory=dict)
    """(namespace, agent) -> (its uid, the generation) this instance last reconciled from a watch event."""
    agent_plans: dict[Key, tuple[tuple[str | None, int], Any]] = field(default_factory=dict)
    """(namespace, agent) -> ((its uid, generation), the `reconcile.AgentPlan` last made for it)."""
    pod_problems: dict[Key, dict[str, PodProblem]] = field(default_factory=dict)
    """(namespace, agent) -> pod name -> what keeps that pod from running, from the pod watch."""
    ready_clock: ReadyClock = field(init=False)
    """Times new Agent generations to their Ready (`agentplane_operator_agent_ready_seconds`)."""
    _pending: set[Hashable] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _reconciles: set[asyncio.Task[Any]] = field(default_factory=set)
    """The tasks in a reconcile (or waiting for its lock) now: `close` ends them before the clients."""

    def __post_init__(self) -> None:
        self.ready_clock = ReadyClock(self.metrics.agent_ready)

    def soon(self, key: Hashable, delay: float, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` after `delay` seconds, once for however many calls with `key` come meanwhile."""
        if key in self._pending:
            return
        self._pending.add(key)

        async def run() -> None:
            await asyncio.sleep(delay)
            self._pending.discard(key)
            try:
                await work()
            except Exception:
                logger.exception("deferred work %r failed", key)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def saw_deployment(self, key: Key, deployment: Manifest | None) -> None:
        """Note an Agent's Deployment as a watch event or a read shows it (None: deleted). An older
        version than the one known is ignored: under load the watch lags behind the reads, and its
        late events would make a Ready Agent look like it is still rolling out."""
        if deployment is None:
            self.deployments.pop(key, None)
            return
        known = self.deployments.get(key)
        if known is None or not _older(deployment, known):
            self.deployments[key] = deployment

    def applied_children(self, key: Key, uid: str | None) -> dict[str, str]:
        """What we applied of the Agent `key` (with `uid`) so far; empty for one we have not."""
        known = self.applied.get(key)
        if known is None or known[0] != uid:
            known = self.applied[key] = (uid, {})
        return known[1]

    def forget_agent(self, key: Key) -> None:
        """An Agent is gone: what was remembered of it goes too."""
        self.agent_statuses.pop(key, None)
        self.applied.pop(key, None)
        self.agent_plans.pop(key, None)
        self.agent_generations.pop(key, None)

    def record_pod(self, key: Key, pod: str, problem: PodProblem | None) -> bool:
        """Note a pod's problem (None: it has none, or is gone); whether that changed anything."""
        pods = self.pod_problems.setdefault(key, {})
        if pods.get(pod) == problem:
            return False
        if problem is None:
            pods.pop(pod, None)
            if not pods:
                del self.pod_problems[key]
        else:
            pods[pod] = problem
        return True

    def discovery_changed(self, key: Key, digest: str | None) -> bool:
        """Note the discovered schema's hash a Tool's status shows; whether it changed since the last
        time it was seen (the first sight after a start is no change: resumed Agents read the index)."""
        changed = key in self.discovered and self.discovered[key] != digest
        self.discovered[key] = digest
        return changed

    def pod_problems_of(self, namespace: str, agent: str) -> list[PodProblem]:
        return sorted(self.pod_problems.get((namespace, agent), {}).values(), key=lambda p: p.pod)

    @asynccontextmanager
    async def reconciling(self, kind: str, name: str, namespace: str, cause: Cause) -> AsyncIterator[None]:
        """One reconcile of one object at a time (handlers, timers and dependents may race), measured."""
        depth = self.metrics.queue_depth.labels(kind)
        depth.inc()
        result = "error"
        task = asyncio.current_task()
        if task is not None:
            self._reconciles.add(task)
        priority = PRIORITY.set(request_priority(kind, cause))
        try:
            async with self.locks[(kind, namespace, name)]:
                started = time.perf_counter()
                try:
                    yield
                    result = "ok"
                finally:
                    self.metrics.duration.labels(kind).observe(time.perf_counter() - started)
        finally:
            PRIORITY.reset(priority)
            if task is not None:
                self._reconciles.discard(task)
            depth.dec()
            self.metrics.reconciles.labels(kind, cause, result).inc()

    async def close(self, grace: float = 5.0) -> None:
        """Cancel the deferred work and the reconciles under way (each is level-based: the next start
        does it again), wait up to `grace` seconds for them to end, then close the clients. Closing the
        clients first failed every one of them with an error of its own (thousands with many Agents)."""
        running = [*self._tasks, *self._reconciles]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=grace)
        await self.kube.close()
        await self.http.aclose()
        await self.vectors.close()
        await self.redis.aclose()
        await self.db.dispose()


def _older(one: Manifest, other: Manifest) -> bool:
    """Whether `one` is an older version of the same object than `other`. The API server's
    resourceVersion is etcd's revision, which only grows; a version that is not a number (another
    storage) or another uid (the object was replaced) never counts as older."""
    a, b = one["metadata"], other["metadata"]
    versions = str(a.get("resourceVersion", "")), str(b.get("resourceVersion", ""))
    return (
        a.get("uid") == b.get("uid")
        and all(v.isdigit() for v in versions)
        and int(versions[0]) < int(versions[1])
    )


def _candidate(agent: Manifest) -> max_agents.Candidate:
    metadata = agent["metadata"]
    return max_agents.Candidate.of(metadata["name"], metadata.get("creationTimestamp"))


def _first(values: Iterable[V] | None) -> V | None:
    return next(iter(values), None) if values is not None else None


@dataclass(frozen=True)
class Views:
    """Read access to kopf's indexes: the cluster's Tenants, Prompts, Tools and Agents as last seen
    (made once by the startup handler: kopf's indexes are live mappings)."""

    tenants: Mapping[str, Iterable[Tenant]]
    prompts: Mapping[str, Iterable[tuple[str, Prompt]]]
    """by namespace: (name, Prompt) of each (a reconcile reads one namespace's, never all of them)"""
    tools: Mapping[str, Iterable[tuple[str, Tool]]]
    """by namespace, as `prompts`"""
    agents: Mapping[Key, Iterable[Manifest]]
    dependents: Mapping[tuple[str, str, str], Iterable[Key]]
    """(kind, namespace, name) of a Tenant, Prompt or Tool -> the Agents whose config uses it (every
    Agent uses its namespace's Tenant: `("tenant", "", tenant_of(namespace) or "")`)"""
    children: Mapping[str, Mapping[Key, Iterable[Manifest]]] = field(default_factory=dict)
    """kind -> (namespace, agent) -> an Agent's Service or ConfigMap as its watch shows it now"""

    def tenant(self, name: str) -> Tenant | None:
        return _first(self.tenants.get(name))

    def agent(self, key: Key) -> Manifest | None:
        return _first(self.agents.get(key))

    def child(self, kind: str, key: Key) -> Manifest | None:
        """The Agent `key`'s child of `kind` (a watched one: `WATCHED_CHILDREN`) as its watch shows it
        now; None when it does not exist (kopf fills its indexes before any reconcile runs)."""
        return _first(self.children.get(kind, {}).get(key))

    def prompts_in(self, namespace: str) -> dict[str, Prompt]:
        return dict(self.prompts.get(namespace, ()))

    def tools_in(self, namespace: str) -> dict[str, Tool]:
        return dict(self.tools.get(namespace, ()))

    def agent_keys_in(self, namespace: str) -> list[Key]:
        """The keys of the namespace's Agents, sorted (from the dependents of its Tenant: an index of
        its own cost a handler call on each Agent event)."""
        found = self.dependents.get(("tenant", "", tenant_of(namespace) or ""), ())
        return sorted({key for key in found if key[0] == namespace})

    def agents_in(self, namespace: str) -> list[Manifest]:
        """The namespace's Agents in the order the tenant's `maxAgents` admits them (oldest first,
        then by name: `agentplane_platform.max_agents`)."""
        found = [a for key in self.agent_keys_in(namespace) if (a := self.agent(key)) is not None]
        return sorted(found, key=lambda a: max_agents.order_key(_candidate(a)))

    def admission(self, tenant: Tenant) -> max_agents.Admission:
        """Which of the tenant's Agents its `maxAgents` admits, and why the others are refused."""
        return max_agents.admit(tenant, (_candidate(a) for a in self.agents_in(tenant.namespace)))

    def dependents_of(
        self, kind: Literal["tenant", "prompt", "tool"], namespace: str, name: str
    ) -> list[Key]:
        """Agents whose config uses the given Tenant, Prompt or Tool."""
        return sorted(set(self.dependents.get((kind, namespace, name), ())))
