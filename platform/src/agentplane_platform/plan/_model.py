"""What `agentplane plan` found: the plan of one merge, as data (rendered by `_render`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agentplane_platform.jsontypes import JsonObject, JsonValue
from agentplane_platform.specs import Problem

Action = Literal["added", "changed", "removed"]


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One leaf that differs: its dotted path, the value before and after (None: absent)."""

    path: str
    before: JsonValue
    after: JsonValue

    def as_json(self) -> JsonObject:
        return {"path": self.path, "before": self.before, "after": self.after}


@dataclass(frozen=True, slots=True)
class Change:
    """An object (Agent, Tool, Prompt, Tenant), knowledge base or knowledge file added, changed or removed."""

    kind: str
    """`Tenant`, `Agent`, `Tool`, `Prompt`, `KnowledgeBase` or `KnowledgeFile`."""
    name: str
    action: Action
    fields: tuple[FieldChange, ...] = ()
    notes: tuple[str, ...] = ()

    def as_json(self) -> JsonObject:
        return {
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "fields": [f.as_json() for f in self.fields],
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class Roll:
    """An Agent whose pods roll: its resolved config hash changes (or its pod resources do)."""

    agent: str
    before: str
    """Config hash before."""
    after: str
    fields: tuple[FieldChange, ...]
    """Fields of the resolved config (or `runtime.resources`) that change."""
    causes: tuple[str, ...]
    """What changed: `Agent support-bot`, `Prompt support`, `Tool order-lookup`, `Tenant acme`."""

    @property
    def indirect(self) -> bool:
        """Whether the Agent's own spec is unchanged (a Prompt, Tool or the Tenant it uses changed)."""
        return not any(cause.startswith("Agent ") for cause in self.causes)

    def as_json(self) -> JsonObject:
        return {
            "agent": self.agent,
            "config": {"before": self.before, "after": self.after},
            "indirect": self.indirect,
            "causes": list(self.causes),
            "fields": [f.as_json() for f in self.fields],
        }


@dataclass(slots=True)
class TenantPlan:
    """Everything the merge does to one tenant."""

    name: str
    namespace: str
    action: Action | None
    """`added`/`removed` for the Tenant itself, `changed` when anything of it changes, else None."""
    changes: list[Change] = field(default_factory=list)
    rolls: list[Roll] = field(default_factory=list)
    quotas: list[FieldChange] = field(default_factory=list)
    collections: list[str] = field(default_factory=list)
    """Qdrant collections the operator creates."""
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    """Errors (the merge would be refused or an agent cannot be served) and warnings."""

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action == action)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def empty(self) -> bool:
        return not (self.changes or self.rolls or self.quotas or self.problems)


@dataclass(slots=True)
class Base:
    """The commit compared against, and how it was chosen."""

    ref: str
    commit: str
    how: str
    """For example `merge base of HEAD and origin/HEAD`, or `--base v1.2`, or `the live cluster`."""


@dataclass(slots=True)
class Plan:
    """What merging the spec tree does, per tenant, and the problems found on the new tree."""

    base: Base
    paths: list[str]
    tenants: list[TenantPlan]
    problems: list[Problem] = field(default_factory=list)
    """Problems of the new tree not tied to one tenant's plan: `agentplane validate`'s (and its policies')."""

    @property
    def all_problems(self) -> list[Problem]:
        return [*self.problems, *(p for t in self.tenants for p in t.problems)]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.all_problems if p.severity == "warning"]

    def count(self, action: Action) -> int:
        return sum(t.count(action) for t in self.tenants)

    @property
    def rolls(self) -> list[tuple[str, Roll]]:
        return [(t.name, roll) for t in self.tenants for roll in t.rolls]

    @property
    def changed(self) -> bool:
        return any(t.changes or t.rolls or t.quotas for t in self.tenants)

    @property
    def exit_code(self) -> int:
        """kubectl diff's convention: 0 no change, 1 changes, 2 errors."""
        if self.errors:
            return 2
        return 1 if self.changed else 0
