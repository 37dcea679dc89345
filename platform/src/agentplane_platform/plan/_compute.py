"""The plan of a merge, computed from two loaded spec trees (pure: no git, no files, no cluster)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

from agentplane_platform.api.v1alpha1 import Agent, Prompt, Resource, Tenant, namespace_of, tenant_of
from agentplane_platform.config import AgentConfig, ResolveError, collection_name, resolve_agent
from agentplane_platform.jsontypes import JsonObject, JsonValue
from agentplane_platform.schemas import openapi_schema
from agentplane_platform.specs import Loaded, Problem, SpecSet, tenant_dir
from agentplane_platform.transition import check_transition

from ._model import Action, Base, Change, FieldChange, Plan, Roll, TenantPlan
from ._tree import SpecTree

Transitions = Callable[[Loaded[Resource], Mapping[str, JsonValue]], list[Problem]]
"""Problems of updating an object (the new one, loaded) from its old content: the CRD's transition rules."""


def _list_key(items: list[JsonValue]) -> str | None:
    """The field that names the items of a list of objects (`name`, else `version`), when unique."""
    for key in ("name", "version"):
        if _indexed(items, key) is not None:
            return key
    return None


def _indexed(items: list[JsonValue], key: str) -> dict[str | int, JsonValue] | None:
    """The items by their `key` field, when every item is an object holding a distinct string or
    number there; None otherwise."""
    indexed: dict[str | int, JsonValue] = {}
    for item in items:
        if not isinstance(item, dict):
            return None
        ident = item.get(key)
        if not isinstance(ident, str | int) or ident in indexed:
            return None
        indexed[ident] = item
    return indexed


def _empty(value: JsonValue) -> bool:
    return value is None or value == {} or value == []


def diff(before: JsonValue, after: JsonValue, prefix: str = "") -> list[FieldChange]:
    """The leaves that differ between two JSON values, in document order. Lists of objects with a
    `name` (or `version`) are compared item by item (`tools[order-lookup].url`); an item or object
    present on one side only is one change; None, `{}` and `[]` count as absent."""
    if _empty(before) and _empty(after):
        return []
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[FieldChange] = []
        for key in [*before, *(k for k in after if k not in before)]:
            where = f"{prefix}.{key}" if prefix else str(key)
            changes.extend(diff(before.get(key), after.get(key), where))
        return changes
    if isinstance(before, list) and isinstance(after, list):
        name_field = _list_key(before or after)
        old = _indexed(before, name_field) if name_field is not None else None
        new = _indexed(after, name_field) if name_field is not None else None
        if old is not None and new is not None:
            changes = []
            for ident in [*old, *(i for i in new if i not in old)]:
                where = f"{prefix}[{ident}]"
                if ident in old and ident in new:
                    changes.extend(diff(old[ident], new[ident], where))
                else:
                    changes.append(FieldChange(where, old.get(ident), new.get(ident)))
            return changes
    if before == after:
        return []
    return [FieldChange(prefix, None if _empty(before) else before, None if _empty(after) else after)]


def _content(resource: Resource) -> JsonObject:
    """What a spec says, with defaults filled in (so writing a default out is no change)."""
    data = resource.model_dump(mode="json", by_alias=True, exclude={"status"})
    metadata = data.get("metadata") or {}
    return {
        "metadata": {k: metadata[k] for k in ("labels", "annotations") if metadata.get(k)},
        "spec": data.get("spec"),
    }


def _resolve(specs: SpecSet, agent: Loaded[Agent]) -> AgentConfig | ResolveError | None:
    """The agent's config as the operator resolves it; None when it has no Tenant."""
    namespace = agent.resource.metadata.namespace or ""
    tenant = specs.tenant_of(namespace)
    if tenant is None:
        return None
    try:
        return resolve_agent(
            agent.resource, tenant.resource, specs.prompts_in(namespace), specs.tools_in(namespace)
        )
    except ResolveError as exc:
        return exc


def _objects(specs: SpecSet, namespace: str) -> Iterator[tuple[str, str, Loaded[Resource]]]:
    yield from _of_namespace(specs.agents, "Agent", namespace)
    yield from _of_namespace(specs.tools, "Tool", namespace)
    yield from _of_namespace(specs.prompts, "Prompt", namespace)


def _of_namespace(
    table: Mapping[tuple[str, str], Loaded[Resource]], kind: str, namespace: str
) -> Iterator[tuple[str, str, Loaded[Resource]]]:
    for (ns, name), loaded in sorted(table.items(), key=lambda item: item[0]):
        if ns == namespace:
            yield kind, name, loaded


K = TypeVar("K")
V = TypeVar("V")


def _put_back(table: dict[K, V], old: Mapping[K, V], key: K) -> None:
    """`table[key]` as `old` has it: copied, or removed when `old` has none."""
    if key in old:
        table[key] = old[key]
    else:
        table.pop(key, None)


def _reverted(new: SpecSet, base: SpecSet, kind: str, namespace: str, name: str) -> SpecSet:
    """`new` with one object as it is in `base` (or without it, when `base` has none)."""
    reverted = replace(
        new,
        tenants=dict(new.tenants),
        agents=dict(new.agents),
        tools=dict(new.tools),
        prompts=dict(new.prompts),
    )
    if kind == "Tenant":
        _put_back(reverted.tenants, base.tenants, name)
    elif kind == "Tool":
        _put_back(reverted.tools, base.tools, (namespace, name))
    elif kind == "Prompt":
        _put_back(reverted.prompts, base.prompts, (namespace, name))
    else:
        _put_back(reverted.agents, base.agents, (namespace, name))
    return reverted


def crd_transitions(new: Loaded[Resource], old: Mapping[str, JsonValue]) -> list[Problem]:
    """The CRD's transition rules (generated from the models) on updating `old` to the new object."""
    kind: type[Resource] = type(new.resource)
    schema = openapi_schema(kind)
    return [
        new.at(
            violation.path,
            f"{violation.message} (the CRD's rule `{violation.rule}` refuses this update of the object "
            "as it is at the base)",
        )
        for violation in check_transition(schema, old, new.document.data)
    ]


def _describe_resolve(exc: ResolveError) -> str:
    return f"{exc.reason}: {exc.message}"


class _TenantPlanner:
    """Builds one TenantPlan from the two trees."""

    def __init__(self, name: str, base: SpecTree, new: SpecTree, transitions: Transitions | None) -> None:
        self.name = name
        self.namespace = namespace_of(name)
        self.base = base
        self.new = new
        self.transitions = transitions
        self.old_tenant = base.specs.tenants.get(name)
        self.new_tenant = new.specs.tenants.get(name)
        action: Action | None = None
        if self.old_tenant is None and self.new_tenant is not None:
            action = "added"
        elif self.old_tenant is not None and self.new_tenant is None:
            action = "removed"
        self.plan = TenantPlan(name, self.namespace, action)
        self.changed: set[tuple[str, str]] = set()
        """(kind, name) of the objects whose content changes or that are removed."""

    def build(self) -> TenantPlan:
        self._tenant()
        self._objects()
        self._knowledge()
        self._agents()
        if self.plan.action is None and (self.plan.changes or self.plan.rolls or self.plan.quotas):
            self.plan.action = "changed"
        return self.plan

    def _transition(self, kind: str, name: str, old: Loaded[Resource], new: Loaded[Resource]) -> None:
        if self.transitions is None:
            return
        old_data = old.document.data
        if isinstance(old_data, dict):
            self.plan.problems.extend(self.transitions(new, old_data))

    # --- the Tenant ---------------------------------------------------------------------------

    def _tenant(self) -> None:
        old, new = self.old_tenant, self.new_tenant
        plan = self.plan
        if new is not None and old is None:
            spec = new.resource.spec
            plan.changes.append(
                Change("Tenant", self.name, "added", notes=(f"namespace {self.namespace} created",))
            )
            plan.notes.append(
                f"new tenant: namespace {self.namespace} with its quota, limits, network policies and "
                f"service account; owners {', '.join(o.name for o in spec.owners)}"
            )
            plan.quotas.extend(_leaves(_quota_content(new.resource), "quotas"))
            for kb in spec.knowledge_bases:
                plan.changes.append(
                    Change("KnowledgeBase", kb.name, "added", notes=(self._created(kb.name),))
                )
            return
        if old is not None and new is None:
            spec = old.resource.spec
            collections = [collection_name(self.name, kb.name) for kb in spec.knowledge_bases]
            plan.changes.append(
                Change(
                    "Tenant",
                    self.name,
                    "removed",
                    notes=(f"namespace {self.namespace} and everything in it deleted",),
                )
            )
            listed = ", ".join(collections) or "none"
            if spec.deletion_policy == "Retain":
                plan.notes.append(
                    f"deletionPolicy Retain: its collections ({listed}), quota records and usage "
                    "records are kept"
                )
            else:
                plan.notes.append(
                    f"deletionPolicy Delete: its collections ({listed}) and quota records are deleted "
                    "(usage records are kept)"
                )
            for kb in spec.knowledge_bases:
                plan.changes.append(Change("KnowledgeBase", kb.name, "removed"))
            return
        if old is None or new is None:
            return
        self._transition("Tenant", self.name, old, new)
        before, after = _content(old.resource), _content(new.resource)
        for content in (before, after):
            content_spec = content.get("spec")
            if isinstance(content_spec, dict):
                for part in ("quotas", "knowledgeBases"):
                    content_spec.pop(part, None)
        fields = diff(before, after)
        plan.quotas.extend(diff(_quota_content(old.resource), _quota_content(new.resource), "quotas"))
        if fields or plan.quotas:
            self.changed.add(("Tenant", self.name))
            notes = ("quota changes apply at once, without rolling pods",) if plan.quotas else ()
            plan.changes.append(Change("Tenant", self.name, "changed", tuple(fields), notes))
        old_bases = {kb.name: kb for kb in old.resource.spec.knowledge_bases}
        for index, kb in enumerate(new.resource.spec.knowledge_bases):
            previous = old_bases.pop(kb.name, None)
            if previous is None:
                plan.changes.append(
                    Change("KnowledgeBase", kb.name, "added", notes=(self._created(kb.name),))
                )
                continue
            kb_fields = diff(
                previous.model_dump(mode="json", by_alias=True), kb.model_dump(mode="json", by_alias=True)
            )
            if not kb_fields:
                continue
            self.changed.add(("Tenant", self.name))
            plan.changes.append(Change("KnowledgeBase", kb.name, "changed", tuple(kb_fields)))
            where = ("spec", "knowledgeBases", index)
            # imported here: qdrant-client takes seconds to import, and only a changed knowledge base needs it
            from agentplane_platform.knowledge import CollectionSpec

            refusal = CollectionSpec.of(self.name, kb).incompatibility(
                previous.dimensions, CollectionSpec.of(self.name, previous).distance
            )
            if refusal is not None:
                plan.problems.append(new.at((*where, "dimensions"), f"knowledge base {kb.name!r}: {refusal}"))
            if previous.embedding_model != kb.embedding_model and refusal is None:
                plan.problems.append(
                    new.at(
                        (*where, "embeddingModel"),
                        f"knowledge base {kb.name!r} changes its embedding model "
                        f"({previous.embedding_model} -> {kb.embedding_model}): the Git-kept documents are "
                        "re-embedded, documents uploaded through the API keep vectors of the old model "
                        "(use a new knowledge base name to start clean)",
                        severity="warning",
                    )
                )
        for name in sorted(old_bases):
            self.changed.add(("Tenant", self.name))
            plan.changes.append(
                Change(
                    "KnowledgeBase",
                    name,
                    "removed",
                    notes=(
                        f"collection {collection_name(self.name, name)} and its documents are kept "
                        "(no longer declared; delete it by hand)",
                    ),
                )
            )

    def _created(self, kb: str) -> str:
        collection = collection_name(self.name, kb)
        self.plan.collections.append(collection)
        return f"collection {collection} created"

    # --- Agents, Tools, Prompts ---------------------------------------------------------------

    def _objects(self) -> None:
        old = {(kind, name): loaded for kind, name, loaded in _objects(self.base.specs, self.namespace)}
        new = {(kind, name): loaded for kind, name, loaded in _objects(self.new.specs, self.namespace)}
        order = {"Agent": 0, "Prompt": 1, "Tool": 2}
        for key in sorted(old.keys() | new.keys(), key=lambda k: (order[k[0]], k[1])):
            kind, name = key
            before, after = old.get(key), new.get(key)
            if before is None and after is not None:
                self.plan.changes.append(Change(kind, name, "added", notes=self._added_notes(after)))
            elif before is not None and after is None and key in self.new.invalid:
                self.plan.changes.append(
                    Change(kind, name, "changed", notes=("does not validate (see the errors): not applied",))
                )
            elif before is not None and after is None:
                self.changed.add(key)
                self.plan.changes.append(Change(kind, name, "removed", notes=self._removed_notes(kind, name)))
            elif before is not None and after is not None:
                fields = diff(_content(before.resource), _content(after.resource))
                self._transition(kind, name, before, after)
                if fields:
                    self.changed.add(key)
                    notes = self._prompt_notes(before, after) if kind == "Prompt" else ()
                    self.plan.changes.append(Change(kind, name, "changed", tuple(fields), notes))

    def _added_notes(self, loaded: Loaded[Resource]) -> tuple[str, ...]:
        resource = loaded.resource
        if isinstance(resource, Prompt):
            versions = sorted(resource.spec.versions())
            return (f"versions {', '.join(f'v{v}' for v in versions)}",)
        if isinstance(resource, Agent):
            return ("Deployment, Service, HTTPRoute and config created; its pods start",)
        return ()

    def _removed_notes(self, kind: str, name: str) -> tuple[str, ...]:
        if kind == "Agent":
            return ("its Deployment, Service, route and config are deleted",)
        return ()

    def _prompt_notes(self, old: Loaded[Resource], new: Loaded[Resource]) -> tuple[str, ...]:
        assert isinstance(old.resource, Prompt)
        assert isinstance(new.resource, Prompt)
        before, after = old.resource.spec.versions(), new.resource.spec.versions()
        notes = []
        added = sorted(after.keys() - before.keys())
        dropped = sorted(before.keys() - after.keys())
        if added:
            notes.append(f"versions added: {', '.join(f'v{v}' for v in added)}")
        if dropped:
            notes.append(f"versions dropped: {', '.join(f'v{v}' for v in dropped)}")
        return tuple(notes)

    # --- knowledge files ----------------------------------------------------------------------

    def _knowledge(self) -> None:
        before = self.base.knowledge.get(self.name, {})
        after = self.new.knowledge.get(self.name, {})
        declared = (
            {kb.name for kb in self.new_tenant.resource.spec.knowledge_bases} if self.new_tenant else set()
        )
        for path in sorted(before.keys() | after.keys()):
            old, new = before.get(path), after.get(path)
            if old == new:
                continue
            base_name = path.split("/", 1)[0]
            action: Action
            if new is None:
                action, note = "removed", "deleted from the knowledge base at the next sync"
            elif old is None:
                action, note = "added", "ingested at the next sync"
            else:
                action, note = "changed", "re-embedded at the next sync"
            if self.plan.action == "removed":
                note = "goes with the tenant (see its deletionPolicy)"
            elif new is not None and base_name not in declared:
                note = f"not ingested: Tenant {self.name!r} declares no knowledge base {base_name!r}"
            self.plan.changes.append(Change("KnowledgeFile", path, action, notes=(note,)))

    # --- agents' resolved configs -------------------------------------------------------------

    def _agents(self) -> None:
        for (namespace, name), loaded in sorted(self.new.specs.agents.items()):
            if namespace != self.namespace:
                continue
            after = _resolve(self.new.specs, loaded)
            if isinstance(after, ResolveError):
                self._unresolved(loaded, after)
                continue
            old_loaded = self.base.specs.agents.get((namespace, name))
            before = _resolve(self.base.specs, old_loaded) if old_loaded is not None else None
            if after is None or not isinstance(before, AgentConfig):
                continue
            fields = [
                f
                for f in diff(before.model_dump(mode="json"), after.model_dump(mode="json"))
                if f.path != "prompt.hash"
            ]
            assert old_loaded is not None
            resources = diff(
                old_loaded.resource.spec.runtime.resources.model_dump(mode="json"),
                loaded.resource.spec.runtime.resources.model_dump(mode="json"),
                "runtime.resources",
            )
            if before.hash() == after.hash() and not resources:
                continue
            self.plan.rolls.append(
                Roll(
                    name,
                    before.hash(),
                    after.hash(),
                    tuple(fields + resources),
                    tuple(self._causes(loaded, after, bool(resources))),
                )
            )

    def _causes(self, loaded: Loaded[Agent], after: AgentConfig, resources_changed: bool) -> list[str]:
        """The changed objects the agent's new config depends on: each one that, put back as it was,
        gives another config (so a Tenant whose quota alone changed is no cause)."""
        agent = loaded.resource
        namespace = self.namespace
        candidates = [
            ("Agent", agent.name),
            ("Prompt", agent.spec.prompt.name),
            *(("Tool", ref.name) for ref in agent.spec.tools),
            ("Tenant", self.name),
        ]
        causes = []
        for kind, name in candidates:
            if (kind, name) not in self.changed:
                continue
            if kind == "Agent" and resources_changed:
                causes.append(f"{kind} {name}")
                continue
            specs = _reverted(self.new.specs, self.base.specs, kind, namespace, name)
            subject = self.base.specs.agents.get((namespace, name)) if kind == "Agent" else loaded
            config = _resolve(specs, subject) if subject is not None else None
            if not isinstance(config, AgentConfig) or config.hash() != after.hash():
                causes.append(f"{kind} {name}")
        return causes or [f"{kind} {name}" for kind, name in candidates if (kind, name) in self.changed]

    def _unresolved(self, loaded: Loaded[Agent], exc: ResolveError) -> None:
        agent = loaded.resource
        path = exc.path
        removed = ""
        if exc.reason in ("ToolNotFound", "ToolNotAllowed") and ("Tool", exc.subject) in self.changed:
            removed = f" (Tool {exc.subject} is removed by this change)"
        missing = {"PromptNotFound": "Prompt", "ToolNotFound": "Tool"}.get(exc.reason)
        if missing is not None and (missing, exc.subject or "") in self.new.invalid:
            return  # the object it needs does not validate: that error says why
        if exc.reason == "ToolNotDiscovered":
            self.plan.problems.append(
                loaded.at(
                    path,
                    f"Agent {agent.name} cannot be compared offline: {exc.message}",
                    severity="warning",
                )
            )
            return
        self.plan.problems.append(
            loaded.at(
                path,
                f"Agent {agent.name} cannot be resolved: {_describe_resolve(exc)}{removed}; "
                "the operator keeps its last config running and marks it ConfigResolved=False",
            )
        )


def _leaves(value: JsonValue, prefix: str) -> list[FieldChange]:
    """Every leaf of a JSON object as added (a new tenant's quotas, one by one)."""
    if isinstance(value, dict):
        return [change for key, sub in value.items() for change in _leaves(sub, f"{prefix}.{key}")]
    return [FieldChange(prefix, None, value)]


def _quota_content(tenant: Tenant) -> JsonObject:
    return tenant.spec.quotas.model_dump(mode="json", by_alias=True)


def compute_plan(
    base: SpecTree,
    new: SpecTree,
    *,
    base_info: Base,
    paths: Sequence[str],
    problems: Sequence[Problem] = (),
    transitions: Transitions | None = crd_transitions,
) -> Plan:
    """What merging `new` over `base` does, per tenant; `problems` are the new tree's validation
    problems (each in its tenant's section when that tenant has one, else the plan's own)."""
    names = set(base.specs.tenants) | set(new.specs.tenants) | set(base.knowledge) | set(new.knowledge)
    for tree in (base.specs, new.specs):
        for namespace, _ in (*tree.agents, *tree.tools, *tree.prompts):
            if (name := tenant_of(namespace)) is not None:
                names.add(name)
    tenants = [_TenantPlanner(name, base, new, transitions).build() for name in sorted(names)]
    # a plan's error at the same place as validate's says more (why, what the operator does): keep it alone
    explained = {(p.file, p.position) for t in tenants for p in t.errors}
    shown = [t for t in tenants if not t.empty]
    by_name = {t.name: t for t in shown}
    rest: list[Problem] = []
    for problem in problems:
        if problem.severity == "error" and (problem.file, problem.position) in explained:
            continue
        tenant = by_name.get(tenant_dir(problem.file) or "")
        (tenant.problems if tenant is not None else rest).append(problem)
    return Plan(base_info, list(paths), shown, rest)


__all__ = ["Transitions", "compute_plan", "crd_transitions", "diff"]
