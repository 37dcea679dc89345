"""`agentplane plan`: what merging a spec tree does, compared with a base commit (or the live cluster).

`compute_plan` is pure (two loaded trees in, a `Plan` out); `plan_against_git` reads the base
commit's tree with git and the new tree from disk; `plan_against_cluster` takes the live objects as
the base and adds what a server-side dry run of the new objects refuses; the renderers turn a Plan into text, markdown or
JSON. Agents are resolved with `agentplane_platform.config.resolve_agent`, exactly as the operator
does, so "pods roll" means the operator's `AgentConfig.hash()` changes.

The JSON form (`--format json`), version 1:

- `version`: 1; `base`: `{ref, commit, how}`; `paths`: the spec paths compared;
- `summary`: `{added, changed, removed, rolls, errors, warnings}` (counts);
- `exitCode`: 0 no change, 1 changes, 2 errors;
- `tenants[]`: `{name, namespace, action}` (`added`, `removed`, `changed`) with
  - `changes[]`: `{kind, name, action, fields[], notes[]}`, `kind` one of `Tenant`, `Agent`, `Tool`,
    `Prompt`, `KnowledgeBase`, `KnowledgeFile`; `fields[]`: `{path, before, after}` (null: absent);
  - `rolls[]`: `{agent, config: {before, after}, indirect, causes[], fields[]}` — Agents whose pods
    roll, the resolved-config fields that change, and what caused it (`Agent x`, `Prompt y`,
    `Tool z`, `Tenant t`);
  - `quotas[]`: `{path, before, after}`; `collections[]`: collections created; `notes[]`;
  - `problems[]`: `{tenant, file, line, column, severity, kind, name, path, message}`;
- `problems[]`: the new tree's validation problems outside the tenants above (same keys, `tenant`
  null); those of a tenant above are in its `problems[]`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from agentplane_platform.api.v1alpha1 import tenant_of
from agentplane_platform.specs import Problem, Report, validate_paths

from ._cluster import ClusterError, Kubectl, live_tree, server_dry_run, with_live_status
from ._compute import Transitions, compute_plan, crd_transitions, diff
from ._git import GitError, extract, relative_to_repository, repository_root, resolve_base
from ._model import Base, Change, FieldChange, Plan, Roll, TenantPlan
from ._render import RENDERERS, plan_json, render_json, render_markdown, render_text
from ._tree import SpecTree, knowledge_files, load_tree

__all__ = [
    "RENDERERS",
    "Base",
    "Change",
    "ClusterError",
    "FieldChange",
    "GitError",
    "Kubectl",
    "Plan",
    "Roll",
    "SpecTree",
    "TenantPlan",
    "Transitions",
    "compute_plan",
    "crd_transitions",
    "diff",
    "knowledge_files",
    "load_tree",
    "plan_against_cluster",
    "plan_against_git",
    "plan_json",
    "render_json",
    "render_markdown",
    "render_text",
]


def plan_against_git(
    paths: Sequence[Path],
    *,
    base: str | None = None,
    validate: Callable[[Sequence[Path]], Report] = validate_paths,
    transitions: Transitions | None = crd_transitions,
) -> Plan:
    """The plan of the spec tree at `paths` (as it is on disk) over the same paths at the base commit.

    `validate` checks the new tree (its problems are the plan's); the base tree is only read."""
    repo = repository_root(Path(paths[0]).absolute() if paths else Path.cwd())
    base_info = resolve_base(repo, base)
    relative = relative_to_repository(repo, paths)
    new_tree, report = load_tree(paths, report=validate(paths))
    with tempfile.TemporaryDirectory(prefix="agentplane-plan-") as tmp:
        base_paths = extract(repo, base_info.commit, relative, Path(tmp))
        base_tree, _ = load_tree(base_paths)
    return compute_plan(
        base_tree,
        new_tree,
        base_info=base_info,
        paths=[str(p) for p in paths],
        problems=report.problems,
        transitions=transitions,
    )


def plan_against_cluster(
    paths: Sequence[Path],
    *,
    validate: Callable[[Sequence[Path]], Report] = validate_paths,
    kubectl: Kubectl | None = None,
) -> Plan:
    """The plan of the spec tree at `paths` over the live cluster's Tenants, Agents, Tools and
    Prompts (every live one the tree does not hold is removed, as Flux prunes it; when each path is
    one tenant's folder, only those tenants are compared), with the API
    server's refusals of a server-side dry run of each new object. The CRD's transition rules are
    the API server's to apply here; knowledge files are not compared (a cluster holds none)."""
    kubectl = kubectl or Kubectl()
    live, base_info = live_tree(kubectl)
    scope = _tenants_in(paths)
    if scope is not None:
        specs = live.specs
        live = SpecTree(
            replace(
                specs,
                tenants={n: t for n, t in specs.tenants.items() if n in scope},
                agents={k: v for k, v in specs.agents.items() if tenant_of(k[0]) in scope},
                tools={k: v for k, v in specs.tools.items() if tenant_of(k[0]) in scope},
                prompts={k: v for k, v in specs.prompts.items() if tenant_of(k[0]) in scope},
            )
        )
    new_tree, report = load_tree(paths, report=validate(paths))
    new_tree = with_live_status(new_tree, live)
    live.knowledge = new_tree.knowledge
    plan = compute_plan(
        live,
        new_tree,
        base_info=base_info,
        paths=[str(p) for p in paths],
        problems=report.problems,
        transitions=None,
    )
    by_name = {t.name: t for t in plan.tenants}
    for problem in server_dry_run(kubectl, new_tree, live):
        tenant = _tenant_of(problem, new_tree)
        (by_name[tenant].problems if tenant in by_name else plan.problems).append(problem)
    return plan


def _tenants_in(paths: Sequence[Path]) -> set[str] | None:
    """The tenants the paths hold when each is inside one tenant's folder (`specs/tenants/acme`), so
    that the other live tenants are not taken as removed; None when a path holds the whole tree."""
    found: set[str] = set()
    for path in paths:
        parts = path.absolute().parts
        index = max((i for i, part in enumerate(parts[:-1]) if part == "tenants"), default=None)
        if index is None:
            return None
        found.add(parts[index + 1])
    return found


def _tenant_of(problem: Problem, tree: SpecTree) -> str | None:
    if problem.kind == "Tenant":
        return problem.name
    for table in (tree.specs.agents, tree.specs.tools, tree.specs.prompts):
        for (namespace, name), loaded in table.items():
            if (
                loaded.resource.kind_name == problem.kind
                and name == problem.name
                and loaded.file == problem.file
            ):
                return namespace.removeprefix("tenant-")
    return None
