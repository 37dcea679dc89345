"""What the tenant used and spent, and its audit trail: `GET /usage`, `GET /budget`, `GET /audit`.

The tenant is always the agent's, whatever the query says. A tenant admin sees the tenant's usage;
anyone else their own: an API key its own requests, an OIDC user the requests made as its subject.
The audit trail is for tenant admins only. The reports are `agentplane_platform.usage_report`'s and
`agentplane_platform.audit.export`'s, the same as `agentplane usage` and `agentplane audit export`.

Query parameters are strict: an unknown or repeated one, or a value that does not parse, is a 400
naming the parameter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Query, Request
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from agentplane_platform.audit import AuditAction, export
from agentplane_platform.usage_report import (
    GROUP_BY,
    UsageReport,
    budget_query,
    budget_status,
    format_usage,
    parse_group_by,
    usage_query,
    usage_rows,
    usage_window,
)
from agentplane_runtime.api.deps import CurrentAgent, CurrentPrincipal, RuntimeDep, denied
from agentplane_runtime.core.errors import ApiError, unavailable

router = APIRouter(tags=["reports"])

AUDIT_LIMIT_MAX = 10_000
"""The most audit records one `GET /audit` answers (JSON); `format=jsonl` without `limit` has no cap."""
_DIGITS = re.compile(r"[0-9]{1,9}")


def _strict(request: Request, allowed: tuple[str, ...]) -> None:
    """400 for a query parameter the endpoint does not take, or one given twice."""
    params = request.query_params
    for name in params:
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "no query parameters"
            raise ApiError(
                400, f"unknown query parameter {name[:64]!r}; this endpoint takes {takes}", param=name[:64]
            )
        if len(params.getlist(name)) > 1:
            raise ApiError(400, f"{name}: given more than once", param=name)


def _moment(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time; UTC unless it names a zone."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            400,
            f"{name}: expected an ISO 8601 date or date-time (2026-12-01, 2026-12-01T08:00:00Z), "
            f"got {value[:64]!r}",
            param=name,
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _window(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    start, end = _moment("from", since), _moment("to", until)
    if start is not None and end is not None and start >= end:
        raise ApiError(400, "to: must be after from (from is inclusive, to exclusive)", param="to")
    return start, end


def _json(document: object, media_type: str = "application/json") -> Response:
    return Response(orjson.dumps(document), media_type=media_type)


From = Annotated[
    str | None,
    Query(alias="from", description="ISO date or date-time, inclusive (UTC unless it names a zone)"),
]
To = Annotated[str | None, Query(alias="to", description="ISO date or date-time, exclusive")]


@router.get(
    "/usage",
    summary="Requests, tokens, cost and errors over a window (a tenant admin: the tenant; others: their own)",
)
async def usage(
    request: Request,
    agent: CurrentAgent,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    since: From = None,
    until: To = None,
    group_by: Annotated[
        str | None, Query(description=f"Comma-separated, any of {', '.join(GROUP_BY)}")
    ] = None,
) -> Response:
    """Without `from` and `to`, this month so far. The answer is `agentplane usage --format json`'s
    document plus `scope`: `tenant`, `key` (the caller's API key) or `subject` (the caller's)."""
    _strict(request, ("from", "to", "group_by"))
    start, end = _window(since, until)
    try:
        groups = parse_group_by(name.strip() for name in (group_by or "").split(",") if name.strip())
    except ValueError as exc:
        raise ApiError(400, f"group_by: {exc}", param="group_by") from None
    tenant = agent.config.tenant
    now = datetime.now(UTC)
    key_ids: list[str] | None = None
    subject: str | None = None
    scope: Literal["tenant", "key", "subject"] = "tenant"
    if not principal.is_admin(tenant):
        if principal.method == "api_key":
            key_ids, scope = [principal.key_id] if principal.key_id else [], "key"
        else:
            subject, scope = principal.subject, "subject"
    statement = usage_query(tenant, start, end, groups, api_key_ids=key_ids, subject=subject, now=now)
    try:
        async with runtime.engine.connect() as connection:
            rows = usage_rows((await connection.execute(statement)).mappings())
    except (SQLAlchemyError, OSError):
        raise unavailable("the usage database") from None
    window = usage_window(start, end, now)
    report = UsageReport(tenant, window[0], window[1], groups, rows)
    document = json.loads(format_usage(report, "json"))
    document["scope"] = scope
    return _json(document)


@router.get("/budget", summary="This month's spend against the tenant's monthly budget, and its forecast")
async def budget(
    request: Request, agent: CurrentAgent, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    """`agentplane_platform.usage_report.BudgetStatus` as JSON: `spend_usd`, `limit_usd` (null without a
    budget), `share_used`, `remaining_usd`, `forecast_usd` (null in the month's first hour)."""
    _strict(request, ())
    tenant = agent.config.tenant
    now = datetime.now(UTC)
    try:
        async with runtime.engine.connect() as connection:
            row = (await connection.execute(budget_query(tenant, now))).one()
    except (SQLAlchemyError, OSError):
        raise unavailable("the usage database") from None
    return _json(budget_status(row.spend_usd, row.limit_usd, tenant=tenant, now=now).as_json())


@router.get("/audit", summary="The tenant's audit trail (tenant admins only)")
async def audit(
    request: Request,
    agent: CurrentAgent,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    since: Annotated[
        str | None, Query(alias="from", description="Written at or after this ISO date or date-time")
    ] = None,
    until: Annotated[
        str | None, Query(alias="to", description="Written before this ISO date or date-time")
    ] = None,
    action: Annotated[
        str | None, Query(description="Comma-separated actions (`auth.failed`, `tool.called`, …)")
    ] = None,
    limit: Annotated[
        str | None, Query(description=f"At most this many records (1 to {AUDIT_LIMIT_MAX}; JSON: 100)")
    ] = None,
    format: Annotated[
        str | None, Query(description="`json` (default) or `jsonl`: the export lines, for a SIEM")
    ] = None,
) -> Response:
    """The records written in [`from`, `to`), in chain order. JSON: `{"object": "list", "data": [...],
    "has_more"}`, each record as `agentplane audit export` prints it (with its seq, prev_hash and
    hash, so a SIEM can check the chain); `format=jsonl`: those lines, one record each."""
    _strict(request, ("from", "to", "action", "limit", "format"))
    config = agent.config
    if not principal.is_admin(config.tenant):
        raise await denied(
            request,
            runtime,
            agent,
            principal,
            "audit",
            ApiError(403, "only an admin of the tenant may read its audit trail", type="permission_error"),
        )
    start, end = _window(since, until)
    if format not in (None, "json", "jsonl"):
        raise ApiError(400, f"format: expected json or jsonl, got {format[:64]!r}", param="format")
    actions: set[str] | None = None
    if action is not None:
        actions = {name.strip() for name in action.split(",") if name.strip()}
        known = {str(a) for a in AuditAction}
        unknown = sorted(actions - known)
        if unknown or not actions:
            raise ApiError(
                400,
                f"action: unknown action {unknown[0][:64]!r}" if unknown else "action: empty",
                param="action",
            )
    cap: int | None = None if format == "jsonl" else 100
    if limit is not None:
        if not _DIGITS.fullmatch(limit) or not 1 <= int(limit) <= AUDIT_LIMIT_MAX:
            raise ApiError(400, f"limit: expected a whole number from 1 to {AUDIT_LIMIT_MAX}", param="limit")
        cap = int(limit)

    def read(connection: Connection) -> list[str]:
        lines: Iterator[str] = export(connection, config.tenant, start, end)
        if actions is not None:
            lines = (line for line in lines if json.loads(line)["action"] in actions)
        return list(lines if cap is None else islice(lines, cap + 1))

    try:
        async with runtime.engine.connect() as connection:
            lines = await connection.run_sync(read)
    except (SQLAlchemyError, OSError):
        raise unavailable("the usage database") from None
    has_more = cap is not None and len(lines) > cap
    lines = lines[:cap] if cap is not None else lines
    if format == "jsonl":
        headers = {"X-Has-More": "true"} if has_more else {}
        return Response(
            "".join(f"{line}\n" for line in lines), media_type="application/x-ndjson", headers=headers
        )
    return _json({"object": "list", "data": [json.loads(line) for line in lines], "has_more": has_more})
