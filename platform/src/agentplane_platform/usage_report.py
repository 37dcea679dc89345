"""Usage and budget reports over the runtime's `usage_records`: what `agentplane usage` prints and what
the runtime's API will answer, from one implementation.

Each report is a query and a pure function over its result. The queries are SQLAlchemy Core
`Select`s, so the async runtime runs them on its `AsyncEngine` and a script on a sync engine; the
same statement works on PostgreSQL and SQLite (the UTC day is a function element compiled per
dialect). Every usage query is filtered by its tenant; `api_key_ids` and `subject` narrow it further
(a user sees their own keys, a tenant admin the whole tenant).

Definitions:

- a request is one usage record of a chat request as the runtime metered it, answered or not; the
  records of provider embedding calls (`status` `"embedding"`, written for a chat's query, an
  upload or a knowledge query) are not requests, but their tokens and cost count like any other;
- an error is a record whose `status` is `"error"` (the runtime, the request or the model failed).
  Quota refusals (`"rate_limited"`) and requests the client abandoned (`"cancelled"`) are requests
  but not errors;
- days and months are UTC calendar days and months; a window includes `since` and excludes `until`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Literal

from sqlalchemy import (
    ColumnElement,
    ColumnExpressionArgument,
    RowMapping,
    Select,
    String,
    and_,
    case,
    false,
    func,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from agentplane_platform.db.models import TenantQuota, UsageRecord

GROUP_BY = ("agent", "model", "key", "day")
"""What a usage report can be grouped by (`key`: the API key id)."""

ERROR_STATUS = "error"
"""The `status` the runtime writes for a request that failed (see the module's docstring)."""

EMBEDDING_STATUS = "embedding"
"""The `status` of the record of a provider embedding call: spend and tokens, not a request."""

FORECAST_AFTER = timedelta(hours=1)
"""A month's forecast is given once this much of it has passed; before, the rate says too little."""

Format = Literal["table", "json", "csv"]
FORMATS: tuple[Format, ...] = ("table", "json", "csv")

UsageSelect = Select[*tuple[object, ...]]


class utc_day(FunctionElement[str]):  # noqa: N801 - named like the SQL functions it stands for
    """The UTC calendar day of a timestamp column, as `YYYY-MM-DD` text, on PostgreSQL and SQLite."""

    type = String()
    name = "utc_day"
    inherit_cache = True

    def __init__(self, column: ColumnExpressionArgument[datetime]) -> None:
        super().__init__(column)


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: object) -> str:
    (column,) = element.clauses
    return f"to_char({compiler.process(column, **kw)} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: object) -> str:
    # SQLAlchemy stores a DateTime in SQLite as `YYYY-MM-DD HH:MM:SS.ffffff` text without its zone;
    # the runtime writes UTC (as `usage_query` binds its bounds), so the date part is the UTC day.
    (column,) = element.clauses
    return f"date({compiler.process(column, **kw)})"


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding `now`: its first instant and the first instant of the next."""
    start = utc(now).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def usage_window(
    since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """The window a report covers, in UTC: the current month (so far) when neither bound is given,
    else the bounds given (an open side stays open)."""
    if since is None and until is None:
        return month_bounds(now)
    return (utc(since) if since else None, utc(until) if until else None)


def parse_group_by(names: Iterable[str]) -> tuple[str, ...]:
    """The groupings named, in the order given, each once; `ValueError` for any other name."""
    chosen: list[str] = []
    for name in names:
        if name not in GROUP_BY:
            raise ValueError(f"cannot group usage by {name!r}: group by any of {', '.join(GROUP_BY)}")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


def _group_column(name: str) -> ColumnElement[str] | ColumnElement[str | None]:
    if name == "agent":
        return UsageRecord.agent.label("agent")
    if name == "model":
        return UsageRecord.model.label("model")
    if name == "key":
        return UsageRecord.api_key_id.label("key")
    return utc_day(UsageRecord.created_at).label("day")


def usage_query(
    tenant: str,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: Iterable[str] = (),
    *,
    api_key_ids: Collection[str] | None = None,
    subject: str | None = None,
    now: datetime | None = None,
) -> UsageSelect:
    """Per group of `group_by` (a subset of `GROUP_BY`; none: one row for the whole window): columns
    named as the groupings, then `requests`, `prompt_tokens`, `completion_tokens`, `cost_usd` and
    `errors`, ordered by the groupings.

    The records are the tenant's, always; created at or after `since` and before `until`
    (`usage_window`: this month when neither is given; `now` defaults to the current time); with
    `api_key_ids`, only those keys' (none when it is empty); with `subject`, only that subject's.
    Read the result with `usage_rows`."""
    groups = parse_group_by(group_by)
    start, end = usage_window(since, until, now or datetime.now(UTC))
    conditions: list[ColumnElement[bool]] = [UsageRecord.tenant == tenant]
    if start is not None:
        conditions.append(UsageRecord.created_at >= start)
    if end is not None:
        conditions.append(UsageRecord.created_at < end)
    if api_key_ids is not None:
        keys = sorted(set(api_key_ids))
        conditions.append(UsageRecord.api_key_id.in_(keys) if keys else false())
    if subject is not None:
        conditions.append(UsageRecord.subject == subject)
    columns = [_group_column(name) for name in groups]
    statement = select(
        *columns,
        func.coalesce(func.sum(case((UsageRecord.status == EMBEDDING_STATUS, 0), else_=1)), 0).label(
            "requests"
        ),
        func.coalesce(func.sum(UsageRecord.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(UsageRecord.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(UsageRecord.cost_usd), 0).label("cost_usd"),
        func.coalesce(func.sum(case((UsageRecord.status == ERROR_STATUS, 1), else_=0)), 0).label("errors"),
    ).where(and_(*conditions))
    if columns:
        statement = statement.group_by(*columns).order_by(*(c.asc().nulls_last() for c in columns))
    return statement


def _int(value: object) -> int:
    if isinstance(value, int | Decimal | float):
        return int(value)
    raise TypeError(f"expected a number from the usage query, got {value!r}")


def _float(value: object) -> float:
    if isinstance(value, int | Decimal | float):
        return float(value)
    raise TypeError(f"expected a number from the usage query, got {value!r}")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of a usage report (or its total). A grouping the report does not use is None; so is
    a model when no model answered and a key when the request used none (a user's token)."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    errors: int
    agent: str | None = None
    model: str | None = None
    key: str | None = None
    day: date | None = None

    def __add__(self, other: UsageRow) -> UsageRow:
        return UsageRow(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            errors=self.errors + other.errors,
        )


ZERO = UsageRow(requests=0, prompt_tokens=0, completion_tokens=0, cost_usd=0.0, errors=0)


def usage_rows(result: Iterable[RowMapping | Mapping[str, object]]) -> list[UsageRow]:
    """The rows of an executed `usage_query` (its `.mappings()`), typed."""
    rows: list[UsageRow] = []
    for row in result:
        day = row.get("day")
        rows.append(
            UsageRow(
                requests=_int(row["requests"]),
                prompt_tokens=_int(row["prompt_tokens"]),
                completion_tokens=_int(row["completion_tokens"]),
                cost_usd=_float(row["cost_usd"]),
                errors=_int(row["errors"]),
                agent=_text(row.get("agent")),
                model=_text(row.get("model")),
                key=_text(row.get("key")),
                day=date.fromisoformat(str(day)) if day is not None else None,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A tenant's usage over a window, by `group_by`."""

    tenant: str
    since: datetime | None
    until: datetime | None
    group_by: tuple[str, ...]
    rows: Sequence[UsageRow] = field(default_factory=tuple)

    @property
    def total(self) -> UsageRow:
        total = ZERO
        for row in self.rows:
            total = total + row
        return total


_NUMBERS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd", "errors")
_HEADINGS = {
    "agent": "AGENT",
    "model": "MODEL",
    "key": "KEY",
    "day": "DAY",
    "requests": "REQUESTS",
    "prompt_tokens": "PROMPT_TOKENS",
    "completion_tokens": "COMPLETION_TOKENS",
    "cost_usd": "COST_USD",
    "errors": "ERRORS",
}


def _group_value(row: UsageRow, name: str) -> str | None:
    value: str | date | None = getattr(row, name)
    return value.isoformat() if isinstance(value, date) else value


def _row_json(row: UsageRow, group_by: Sequence[str]) -> dict[str, str | int | float | None]:
    data: dict[str, str | int | float | None] = {name: _group_value(row, name) for name in group_by}
    data.update(
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cost_usd=round(row.cost_usd, 8),
        errors=row.errors,
    )
    return data


def _moment(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def format_usage(report: UsageReport, fmt: Format) -> str:
    """The report as an aligned table, a JSON document or CSV, each ending with the totals.

    - table: a line naming the tenant and the window, then a row per group and a `TOTAL` row (cost to
      the micro-dollar); a grouping with no value (no model answered, no key used) shows `-`;
    - json: `{"tenant", "from", "to", "group_by", "rows": [...], "total": {...}}`, no value as null;
    - csv: a header, a row per group, a last row with `TOTAL` in the first grouping's column (alone
      when the report is not grouped); no value is an empty cell."""
    groups = list(report.group_by)
    total = report.total
    if fmt == "json":
        document = {
            "tenant": report.tenant,
            "from": _moment(report.since),
            "to": _moment(report.until),
            "group_by": groups,
            "rows": [_row_json(row, groups) for row in report.rows],
            "total": _row_json(total, []),
        }
        return json.dumps(document, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*groups, *_NUMBERS])
        records = [_row_json(row, groups) for row in report.rows] if groups else []
        records.append(_row_json(total, groups) | ({groups[0]: "TOTAL"} if groups else {}))
        for record in records:
            writer.writerow(["" if record[name] is None else record[name] for name in [*groups, *_NUMBERS]])
        return buffer.getvalue()
    window = f"{_moment(report.since) or 'the beginning'} to {_moment(report.until) or 'now'}"
    table = [[_HEADINGS[name] for name in [*groups, *_NUMBERS]]]
    table += [_cells(row, groups) for row in (report.rows if groups else [])]
    table.append(_cells(total, groups, label="TOTAL"))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    out = [f"usage of tenant {report.tenant}, {window} (from inclusive, to exclusive)"]
    for line in table:
        cells = (
            c.ljust(w) if i < len(groups) else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def _cells(row: UsageRow, groups: Sequence[str], label: str | None = None) -> list[str]:
    """A table line: the groupings (`label` in the first, the others blank, for the totals), then the numbers."""
    if label is None:
        cells = [_group_value(row, name) or "-" for name in groups]
    else:
        cells = [label, *([""] * (len(groups) - 1))] if groups else []
    cells += [str(row.requests), str(row.prompt_tokens), str(row.completion_tokens)]
    return [*cells, f"{row.cost_usd:.6f}", str(row.errors)]


def budget_query(tenant: str, now: datetime) -> Select[float, float | None]:
    """One row: `spend_usd`, the tenant's cost in the UTC calendar month holding `now`, and
    `limit_usd`, its monthly budget from `tenant_quotas` (null without a row). Read it with
    `budget_status`."""
    start, end = month_bounds(now)
    spend = (
        select(func.coalesce(func.sum(UsageRecord.cost_usd), 0))
        .where(UsageRecord.tenant == tenant, UsageRecord.created_at >= start, UsageRecord.created_at < end)
        .scalar_subquery()
    )
    limit = select(TenantQuota.monthly_budget_usd).where(TenantQuota.tenant == tenant).scalar_subquery()
    return select(spend.label("spend_usd"), limit.label("limit_usd"))


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """A tenant's spend against its monthly budget (UTC calendar month)."""

    tenant: str
    month_start: datetime
    month_end: datetime
    """The first instant of the next month."""
    spend_usd: float
    limit_usd: float | None
    """None: no budget (no quota row, or a budget of 0, which the runtime does not enforce)."""
    share_used: float | None
    """spend / limit (1.0 is the whole budget; more when the last requests overshot it); None without a limit."""
    remaining_usd: float | None
    """What is left of the budget, never below 0; None without a limit."""
    forecast_usd: float | None
    """The month's spend at the rate so far (spend / elapsed * the month's length); None during the
    month's first hour (`FORECAST_AFTER`), when a few minutes' rate says nothing about the month."""

    def as_json(self) -> dict[str, str | float | None]:
        return {
            "tenant": self.tenant,
            "month_start": _moment(self.month_start),
            "month_end": _moment(self.month_end),
            "spend_usd": round(self.spend_usd, 8),
            "limit_usd": self.limit_usd,
            "share_used": self.share_used,
            "remaining_usd": None if self.remaining_usd is None else round(self.remaining_usd, 8),
            "forecast_usd": None if self.forecast_usd is None else round(self.forecast_usd, 8),
        }


def budget_status(
    spend_usd: float | Decimal, limit_usd: float | Decimal | None, *, tenant: str, now: datetime
) -> BudgetStatus:
    """The budget status from `budget_query(tenant, now)`'s row (`spend_usd`, `limit_usd`)."""
    start, end = month_bounds(now)
    spend = float(spend_usd)
    limit = float(limit_usd) if limit_usd is not None and limit_usd > 0 else None
    elapsed = utc(now) - start
    return BudgetStatus(
        tenant=tenant,
        month_start=start,
        month_end=end,
        spend_usd=spend,
        limit_usd=limit,
        share_used=None if limit is None else spend / limit,
        remaining_usd=None if limit is None else max(limit - spend, 0.0),
        forecast_usd=spend * ((end - start) / elapsed) if elapsed >= FORECAST_AFTER else None,
    )
