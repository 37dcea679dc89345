"""A plan as text (a terminal), markdown (a pull-request comment) or JSON (stable keys)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator

from agentplane_platform.jsontypes import JsonObject, JsonValue
from agentplane_platform.specs import Problem

from ._model import Change, FieldChange, Plan, Roll, TenantPlan

JSON_VERSION = 1
"""Bumped when a key of the JSON form changes meaning or goes away (new keys may appear)."""

_MARK = {"added": "+", "changed": "~", "removed": "-"}
_MAX_VALUE = 60
_MAX_DIFF_LINES = 20


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _value(value: JsonValue) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str) and "\n" in value.rstrip("\n"):
        return f"({_plural(value.count(chr(10)) + 1, 'line')})"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _field(change: FieldChange, indent: str) -> Iterator[str]:
    before, after = change.before, change.after
    if isinstance(before, str) and isinstance(after, str) and ("\n" in before or "\n" in after):
        yield f"{indent}{change.path}: changed"
        lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0))[2:]
        for line in lines[:_MAX_DIFF_LINES]:
            if not line.startswith("@@"):
                yield f"{line[0]}{indent[1:]}  {line[1:]}"
        if len(lines) > _MAX_DIFF_LINES:
            yield f"{indent}  ... {len(lines) - _MAX_DIFF_LINES} more lines"
        return
    if before is None and isinstance(after, dict | list):
        yield f"{indent}{change.path}: added"
    elif after is None and isinstance(before, dict | list):
        yield f"{indent}{change.path}: removed"
    else:
        yield f"{indent}{change.path}: {_value(before)} -> {_value(after)}"


def _change(change: Change) -> Iterator[str]:
    notes = f": {'; '.join(change.notes)}" if change.notes else ""
    yield f"{_MARK[change.action]} {change.kind} {change.name}{notes}"
    for field in change.fields:
        yield from _field(field, "      ")


def _roll(roll: Roll) -> Iterator[str]:
    how = "indirectly, " if roll.indirect else ""
    yield f"~ {roll.agent}: config {roll.before} -> {roll.after} ({how}{', '.join(roll.causes) or 'resolved config'} changed)"
    for field in roll.fields:
        yield from _field(field, "      ")


def _problem(problem: Problem) -> str:
    line = problem.format() if problem.file else f"{problem.object}: {problem.message}"
    return f"{problem.severity}: {line}" if problem.severity == "error" else line


def tenant_lines(tenant: TenantPlan) -> list[str]:
    """The body of one tenant's section (each line starts with +, -, ~ or a space, as a diff does)."""
    lines: list[str] = []
    for change in tenant.changes:
        lines.extend(_change(change))
    if tenant.quotas:
        lines.append("  quotas (before -> after):")
        lines.extend(line for q in tenant.quotas for line in _field(q, "      "))
    if tenant.rolls:
        lines.append(f"  pods roll ({_plural(len(tenant.rolls), 'agent')}):")
        lines.extend("  " + line if line[0] == "~" else line for r in tenant.rolls for line in _roll(r))
    if tenant.collections:
        lines.append(f"  collections created: {', '.join(tenant.collections)}")
    lines.extend(f"  {note}" for note in tenant.notes)
    lines.extend(f"! {_problem(p)}" for p in tenant.problems)
    return lines


def _tenant_summary(tenant: TenantPlan) -> str:
    parts = [f"{tenant.count(a)} {a}" for a in ("added", "changed", "removed")]
    if tenant.rolls:
        parts.append(f"{_plural(len(tenant.rolls), 'agent')} {'rolls' if len(tenant.rolls) == 1 else 'roll'}")
    if tenant.errors:
        parts.append(_plural(len(tenant.errors), "error"))
    what = f"tenant {tenant.name} ({tenant.namespace})"
    if tenant.action in ("added", "removed"):
        what += f" {tenant.action}"
    return f"{what}: {', '.join(parts)}"


def _summary(plan: Plan) -> str:
    counts = ", ".join(f"{plan.count(a)} {a}" for a in ("added", "changed", "removed"))
    rolls = len(plan.rolls)
    return (
        f"{counts}; {_plural(rolls, 'agent')} {'rolls' if rolls == 1 else 'roll'}; "
        f"{_plural(len(plan.errors), 'error')}, {_plural(len(plan.warnings), 'warning')}"
    )


def _compared(plan: Plan) -> str:
    base = plan.base
    commit = f" at {base.commit[:12]}" if base.commit else ""
    return f"{', '.join(plan.paths)} compared with {base.ref}{commit} ({base.how})"


def render_text(plan: Plan) -> str:
    """For a terminal."""
    lines = [f"agentplane plan: {_compared(plan)}", ""]
    for tenant in plan.tenants:
        lines.append(_tenant_summary(tenant))
        lines.extend(f"  {line}" for line in tenant_lines(tenant))
        lines.append("")
    if plan.problems:
        lines.append("the new tree (agentplane validate):")
        lines.extend(f"  {_problem(p)}" for p in plan.problems)
        lines.append("")
    if not plan.tenants and not plan.problems:
        lines.append("no changes")
    lines.append(f"plan: {_summary(plan)}")
    return "\n".join(lines) + "\n"


def render_markdown(plan: Plan) -> str:
    """A pull-request comment: the summary, the errors, then one collapsible section per tenant."""
    rolls = plan.rolls
    out = [
        "### agentplane plan",
        "",
        f"`{'`, `'.join(plan.paths)}` compared with `{plan.base.ref}`"
        + (f" at `{plan.base.commit[:12]}`" if plan.base.commit else "")
        + f" ({plan.base.how}).",
        "",
        "| added | changed | removed | agents that roll | errors | warnings |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {plan.count('added')} | {plan.count('changed')} | {plan.count('removed')} | {len(rolls)} "
        f"| {len(plan.errors)} | {len(plan.warnings)} |",
        "",
    ]
    if plan.errors:
        out.append("**Errors** (fix them before merging):")
        out.append("")
        out.extend(f"- {_problem(p).removeprefix('error: ')}" for p in plan.errors)
        out.append("")
    if rolls:
        out.append(
            "**Pods roll:** "
            + ", ".join(
                f"`{tenant}/{roll.agent}`" + (" (indirectly)" if roll.indirect else "")
                for tenant, roll in rolls
            )
        )
        out.append("")
    if not plan.tenants and not plan.problems:
        out.append("No changes.")
        out.append("")
    for tenant in plan.tenants:
        out.extend(
            [
                f"<details><summary>{_tenant_summary(tenant)}</summary>",
                "",
                "```diff",
                *tenant_lines(tenant),
                "```",
                "",
                "</details>",
                "",
            ]
        )
    if plan.problems:
        out.extend(
            [
                "<details><summary>agentplane validate on the new tree: "
                f"{_plural(len([p for p in plan.problems if p.severity == 'error']), 'error')}</summary>",
                "",
                "```",
                *(_problem(p) for p in plan.problems),
                "```",
                "",
                "</details>",
                "",
            ]
        )
    return "\n".join(out)


def _problem_json(problem: Problem, tenant: str | None) -> JsonObject:
    data: JsonObject = {"tenant": tenant, **problem.as_json()}
    if not problem.file:
        data.update(file=None, line=None, column=None)
    return data


def plan_json(plan: Plan) -> JsonObject:
    """The JSON form (see the module's docstring of `agentplane_platform.plan` for its keys)."""
    return {
        "version": JSON_VERSION,
        "base": {"ref": plan.base.ref, "commit": plan.base.commit, "how": plan.base.how},
        "paths": [*plan.paths],
        "summary": {
            "added": plan.count("added"),
            "changed": plan.count("changed"),
            "removed": plan.count("removed"),
            "rolls": len(plan.rolls),
            "errors": len(plan.errors),
            "warnings": len(plan.warnings),
        },
        "exitCode": plan.exit_code,
        "tenants": [
            {
                "name": t.name,
                "namespace": t.namespace,
                "action": t.action,
                "changes": [c.as_json() for c in t.changes],
                "rolls": [r.as_json() for r in t.rolls],
                "quotas": [q.as_json() for q in t.quotas],
                "collections": list(t.collections),
                "notes": list(t.notes),
                "problems": [_problem_json(p, t.name) for p in t.problems],
            }
            for t in plan.tenants
        ],
        "problems": [_problem_json(p, None) for p in plan.problems],
    }


def render_json(plan: Plan) -> str:
    return json.dumps(plan_json(plan), indent=2, ensure_ascii=False) + "\n"


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}
