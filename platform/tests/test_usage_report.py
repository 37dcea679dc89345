"""Usage and budget reports (`agentplane_platform.usage_report`, `agentplane usage`) on PostgreSQL and
SQLite: the sums of every grouping equal the sums of the inserted rows, a tenant never sees another's
rows, scoping by key and subject, window bounds, the UTC day, the CLI's three formats, the budget."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import insert

from agentplane_platform.cli import run
from agentplane_platform.db import TenantQuota, UsageRecord, create_engine, migrate
from agentplane_platform.usage_report import (
    FORECAST_AFTER,
    GROUP_BY,
    BudgetStatus,
    UsageRow,
    budget_query,
    budget_status,
    month_bounds,
    usage_query,
    usage_rows,
)
from support.services import Server, create_database

MARCH = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
AGENTS = ("support-bot", "billing", "oncall")
MODELS = ("gpt-4o-mini", "claude-3-5-haiku", None)  # None: no model answered
KEYS = {
    "acme": ("k-acme-1", "k-acme-2", "k-acme-3", None),
    "globex": ("k-globex-1", None),
}  # None: a user token
# "embedding": a provider embedding call's record, whose tokens and cost count but which is no request
STATUSES = ("ok", "ok", "ok", "ok", "ok", "error", "rate_limited", "cancelled", "embedding")
# rows on and next to the edges of March, and next to UTC midnights
EDGES = (
    datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 9, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 10, 0, 0, tzinfo=UTC),
    datetime(2026, 3, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 4, 1, 0, 0, tzinfo=UTC),
)


@dataclass(frozen=True)
class Rec:
    """An inserted usage record (the columns the reports read)."""

    id: str
    tenant: str
    agent: str
    api_key_id: str | None
    subject: str
    model: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    status: str
    created_at: datetime

    def group(self, name: str) -> str | date | None:
        if name == "key":
            return self.api_key_id
        if name == "day":
            return self.created_at.astimezone(UTC).date()
        value: str | None = getattr(self, name)
        return value

    def column_values(self) -> dict[str, object]:
        return asdict(self) | {
            "request_id": f"req-{self.id}",
            "latency_ms": 100.0,
            "ttft_ms": None,
            "http_status": {"ok": 200, "error": 502, "rate_limited": 429, "cancelled": 499, "embedding": 200}[
                self.status
            ],
            "error_type": None if self.status == "ok" else self.status,
            "stream": False,
            "tool_calls": 0,
            "llm_calls": 1,
        }


def _subject(key: str | None, rng: random.Random) -> str:
    return {"k-acme-1": "alice", "k-acme-2": "bob", "k-acme-3": "ci", "k-globex-1": "gina"}.get(
        key or "", rng.choice(("oidc:carol", "oidc:dave"))
    )


def make_records() -> list[Rec]:
    rng = random.Random(15)
    start = datetime(2026, 2, 20, tzinfo=UTC)
    records: list[Rec] = []
    for tenant, count in (("acme", 260), ("globex", 110)):
        for n in range(count + len(EDGES)):
            key = rng.choice(KEYS[tenant])
            moment = (
                EDGES[n - count]
                if n >= count
                else start + timedelta(seconds=rng.randrange(int(timedelta(days=45).total_seconds())))
            )
            records.append(
                Rec(
                    id=f"{tenant}-{n}",
                    tenant=tenant,
                    agent=rng.choice(AGENTS),
                    api_key_id=key,
                    subject=_subject(key, rng),
                    model=rng.choice(MODELS),
                    prompt_tokens=rng.randrange(0, 4000),
                    completion_tokens=rng.randrange(0, 1500),
                    cost_usd=round(rng.uniform(0, 0.05), 8),
                    # edge rows are requests: the window tests count them
                    status=rng.choice(STATUSES) if n < count else "ok",
                    created_at=moment,
                )
            )
    # another tenant's record made with a key id an acme caller could name
    records.append(
        Rec("globex-borrowed", "globex", "billing", "k-acme-1", "alice", "gpt-4o-mini", 7, 7, 0.5, "ok", NOW)
    )
    return records


RECORDS = make_records()
BUDGETS = {"acme": 5.0}  # globex has no quota row


def expected(
    tenant: str,
    since: datetime | None,
    until: datetime | None,
    group_by: Sequence[str],
    *,
    keys: set[str | None] | None = None,
    subject: str | None = None,
) -> dict[tuple[str | date | None, ...], UsageRow]:
    """The report computed in Python from the inserted records."""
    sums: dict[tuple[str | date | None, ...], UsageRow] = {}
    for r in RECORDS:
        if r.tenant != tenant or (since and r.created_at < since) or (until and r.created_at >= until):
            continue
        if (keys is not None and r.api_key_id not in keys) or (subject is not None and r.subject != subject):
            continue
        group = tuple(r.group(name) for name in group_by)
        request = int(r.status != "embedding")
        one = UsageRow(request, r.prompt_tokens, r.completion_tokens, r.cost_usd, int(r.status == "error"))
        sums[group] = sums.get(group, UsageRow(0, 0, 0, 0.0, 0)) + one
    return sums


def keyed(rows: Sequence[UsageRow], group_by: Sequence[str]) -> dict[tuple[str | date | None, ...], UsageRow]:
    out: dict[tuple[str | date | None, ...], UsageRow] = {}
    for row in rows:
        group: tuple[str | date | None, ...] = tuple(getattr(row, name) for name in group_by)
        assert group not in out, f"group {group} twice"
        out[group] = UsageRow(
            row.requests, row.prompt_tokens, row.completion_tokens, row.cost_usd, row.errors
        )
    return out


def assert_same(
    got: dict[tuple[str | date | None, ...], UsageRow], want: dict[tuple[str | date | None, ...], UsageRow]
) -> None:
    assert got.keys() == want.keys()
    for group, row in want.items():
        other = got[group]
        assert (other.requests, other.prompt_tokens, other.completion_tokens, other.errors) == (
            row.requests,
            row.prompt_tokens,
            row.completion_tokens,
            row.errors,
        ), group
        assert other.cost_usd == pytest.approx(row.cost_usd, abs=1e-9), group


@dataclass(frozen=True)
class Database:
    url: str
    """For the CLI (its own engine)."""
    sync_url: str
    """The same database through a sync driver."""
    connect_args: dict[str, dict[str, str]]


def _populate(db: Database) -> None:
    async def go() -> None:
        engine = create_engine(db.url)
        try:
            await migrate(engine)
            async with engine.begin() as connection:
                await connection.execute(insert(UsageRecord), [r.column_values() for r in RECORDS])
                await connection.execute(
                    insert(TenantQuota),
                    [
                        {
                            "tenant": t,
                            "tokens_per_minute": 1000,
                            "requests_per_minute": 10,
                            "monthly_budget_usd": b,
                        }
                        for t, b in BUDGETS.items()
                    ],
                )
        finally:
            await engine.dispose()

    asyncio.run(go())


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Database:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("usage") / "usage.db"
        db = Database(f"sqlite:///{path}", f"sqlite+pysqlite:///{path}", {})
    else:
        server: Server = request.getfixturevalue("postgres")
        url = create_database(server, "usage_report")
        # a session far from UTC: a day must still be the UTC day
        db = Database(
            url,
            url.replace("postgresql://", "postgresql+psycopg://", 1),
            {"server_settings": {"timezone": "Pacific/Kiritimati"}},
        )
    _populate(db)
    return db


Query = sqlalchemy.Select[*tuple[object, ...]]


def fetch(db: Database, query: Query) -> list[UsageRow]:
    """Run a usage query on the async engine (as the runtime will)."""

    async def go() -> list[UsageRow]:
        engine = create_engine(db.url, connect_args=db.connect_args)
        try:
            async with engine.connect() as connection:
                return usage_rows((await connection.execute(query)).mappings())
        finally:
            await engine.dispose()

    return asyncio.run(go())


GROUPINGS = [
    list(names) for size in range(len(GROUP_BY) + 1) for names in itertools.combinations(GROUP_BY, size)
] + [["day", "key", "agent"]]


@pytest.mark.parametrize("group_by", GROUPINGS, ids=lambda g: ",".join(g) or "none")
def test_every_grouping_sums_equal_the_rows(database: Database, group_by: list[str]) -> None:
    rows = fetch(database, usage_query("acme", *MARCH, group_by))
    assert_same(keyed(rows, group_by), expected("acme", *MARCH, group_by))
    # ordered by the groupings as given, a missing value (no model, no key) last
    order = [tuple(_sort_key(getattr(row, name)) for name in group_by) for row in rows]
    assert order == sorted(order)


def _sort_key(value: str | date | None) -> tuple[bool, str]:
    return (value is None, "" if value is None else str(value))


def test_days_are_utc_days(database: Database) -> None:
    rows = fetch(
        database,
        usage_query("acme", datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC), ["day"]),
    )
    days = {row.day: row.requests for row in rows}
    want = expected("acme", datetime(2026, 3, 9, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC), ["day"])
    assert days == {group[0]: row.requests for group, row in want.items()}
    # the edge records at 23:59:59.999999 and 00:00 fall on their own UTC days
    assert set(days) == {date(2026, 3, 9), date(2026, 3, 10)}


def test_the_default_window_is_the_current_month(database: Database) -> None:
    rows = fetch(database, usage_query("acme", group_by=["agent"], now=NOW))
    assert_same(keyed(rows, ["agent"]), expected("acme", *MARCH, ["agent"]))
    assert month_bounds(NOW) == MARCH


def test_a_window_includes_since_and_excludes_until(database: Database) -> None:
    start, end = MARCH
    just_in = fetch(database, usage_query("acme", start, start + timedelta(microseconds=1)))
    assert just_in[0].requests == sum(r.tenant == "acme" and r.created_at == start for r in RECORDS) == 1
    last = end - timedelta(microseconds=1)
    at_until = fetch(database, usage_query("acme", last, end))
    assert at_until[0].requests == 1  # 23:59:59.999999 is in, 00:00 of April (the until) is out
    after = fetch(database, usage_query("acme", end, end + timedelta(microseconds=1)))
    assert after[0].requests == 1
    # bounds in another zone are the same instants
    plus_two = timezone(timedelta(hours=2))
    shifted = fetch(database, usage_query("acme", start.astimezone(plus_two), end.astimezone(plus_two)))
    assert_same(keyed(shifted, []), expected("acme", *MARCH, []))
    # one open side
    assert_same(
        keyed(fetch(database, usage_query("acme", start, None)), []), expected("acme", start, None, [])
    )
    assert_same(keyed(fetch(database, usage_query("acme", None, end)), []), expected("acme", None, end, []))


def test_a_tenant_never_sees_another_tenants_rows(database: Database) -> None:
    for tenant in ("acme", "globex"):
        rows = fetch(database, usage_query(tenant, group_by=["key"], now=NOW))
        assert_same(keyed(rows, ["key"]), expected(tenant, *MARCH, ["key"]))
    # not through a key id of the other tenant, nor its subject
    borrowed = fetch(database, usage_query("globex", *MARCH, ["key"], api_key_ids=["k-acme-1"]))
    assert keyed(borrowed, ["key"]) == {("k-acme-1",): UsageRow(1, 7, 7, 0.5, 0)}
    assert fetch(database, usage_query("acme", *MARCH, api_key_ids=["k-globex-1"]))[0].requests == 0
    assert fetch(database, usage_query("acme", *MARCH, subject="gina"))[0].requests == 0
    assert fetch(database, usage_query("nobody", None, None))[0] == UsageRow(0, 0, 0, 0.0, 0)


def test_scoping_by_keys_and_subject(database: Database) -> None:
    mine = fetch(
        database, usage_query("acme", *MARCH, ["key", "agent"], api_key_ids=["k-acme-1", "k-acme-2"])
    )
    assert_same(
        keyed(mine, ["key", "agent"]),
        expected("acme", *MARCH, ["key", "agent"], keys={"k-acme-1", "k-acme-2"}),
    )
    # a caller with no keys sees nothing, not everything
    assert fetch(database, usage_query("acme", *MARCH, api_key_ids=[]))[0].requests == 0
    alice = fetch(database, usage_query("acme", *MARCH, ["model"], subject="alice"))
    assert_same(keyed(alice, ["model"]), expected("acme", *MARCH, ["model"], subject="alice"))
    carol = fetch(database, usage_query("acme", *MARCH, ["day"], subject="oidc:carol"))
    assert_same(keyed(carol, ["day"]), expected("acme", *MARCH, ["day"], subject="oidc:carol"))
    assert carol
    assert all(r.requests or r.prompt_tokens or r.cost_usd for r in carol)  # each day has records


def test_a_sync_engine_runs_the_same_query(database: Database) -> None:
    query = usage_query("acme", *MARCH, ["day", "model"])
    engine = sqlalchemy.create_engine(database.sync_url)
    try:
        with engine.connect() as connection:
            rows = usage_rows(connection.execute(query).mappings())
    finally:
        engine.dispose()
    assert rows == fetch(database, query)


def test_group_by_names_are_checked() -> None:
    with pytest.raises(ValueError, match="group by any of agent, model, key, day"):
        usage_query("acme", group_by=["agent", "tenant"])


# --- the command line


def agentplane(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run(list(argv), out=out)
    return code, out.getvalue()


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def parse_table(text: str, group_by: Sequence[str]) -> tuple[list[UsageRow], UsageRow]:
    """The groups and the total of `agentplane usage --format table` (no value: `-`)."""
    lines = text.splitlines()
    assert lines[0].startswith("usage of tenant acme, 2026-03-01T00:00:00Z to 2026-04-01T00:00:00Z"), lines[0]
    assert lines[1].split() == [n.upper() for n in group_by] + [
        "REQUESTS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "COST_USD", "ERRORS",
    ]  # fmt: skip
    rows = []
    for line in lines[2:]:
        cells = line.split()
        named = {n: c for n, c in zip(group_by, cells, strict=False) if c != "-"}
        requests, prompt, completion, cost, errors = cells[-5:]
        rows.append(
            UsageRow(
                int(requests), int(prompt), int(completion), float(cost), int(errors),
                agent=named.get("agent"), model=named.get("model"), key=named.get("key"),
                day=date.fromisoformat(named["day"]) if "day" in named and named["day"] != "TOTAL" else None,
            )
        )  # fmt: skip
    assert lines[-1].startswith("TOTAL ")
    return rows[:-1], rows[-1]


FULL = ["day", "agent", "model", "key"]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_the_cli_formats_read_back_to_the_same_numbers(database: Database, fmt: str) -> None:
    code, text = agentplane(
        "usage", "--tenant", "acme", "--from", "2026-03-01", "--to", "2026-04-01", "--by", ",".join(FULL),
        "--format", fmt, "--database-url", database.url,
    )  # fmt: skip
    assert code == 0, text
    want = expected("acme", *MARCH, FULL)
    if fmt == "table":
        rows, total = parse_table(text, FULL)
        tolerance = 1e-6 * len(want)  # the table rounds a cost to the micro-dollar
    elif fmt == "json":
        document = json.loads(text)
        assert (document["tenant"], document["from"], document["to"]) == (
            "acme",
            "2026-03-01T00:00:00Z",
            "2026-04-01T00:00:00Z",
        )
        assert document["group_by"] == FULL
        rows = [UsageRow(**(r | {"day": date.fromisoformat(r["day"])})) for r in document["rows"]]
        total = UsageRow(**document["total"])
        tolerance = 1e-6
    else:
        records = list(csv.DictReader(io.StringIO(text)))
        assert list(records[0]) == [
            *FULL,
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "errors",
        ]
        assert records[-1]["day"] == "TOTAL"
        parsed = [
            UsageRow(
                int(r["requests"]), int(r["prompt_tokens"]), int(r["completion_tokens"]), float(r["cost_usd"]), int(r["errors"]),
                agent=r["agent"] or None, model=r["model"] or None, key=r["key"] or None,
                day=date.fromisoformat(r["day"]) if r["day"] != "TOTAL" else None,
            )
            for r in records
        ]  # fmt: skip
        rows, total = parsed[:-1], parsed[-1]
        tolerance = 1e-6
    got = keyed(rows, FULL)
    assert got.keys() == want.keys()
    for group, row in want.items():
        assert (got[group].requests, got[group].prompt_tokens, got[group].completion_tokens, got[group].errors) == (
            row.requests, row.prompt_tokens, row.completion_tokens, row.errors,
        )  # fmt: skip
        assert got[group].cost_usd == pytest.approx(row.cost_usd, abs=1e-6)
    whole = expected("acme", *MARCH, [])[()]
    assert (total.requests, total.prompt_tokens, total.completion_tokens, total.errors) == (
        whole.requests, whole.prompt_tokens, whole.completion_tokens, whole.errors,
    )  # fmt: skip
    assert total.cost_usd == pytest.approx(whole.cost_usd, abs=tolerance)


def test_the_cli_reports_one_total_without_by(database: Database) -> None:
    code, text = agentplane(
        "usage", "--tenant", "globex", "--from", "2026-03-01", "--to", "2026-04-01", "--format", "csv",
        "--database-url", database.url,
    )  # fmt: skip
    assert code == 0
    whole = expected("globex", *MARCH, [])[()]
    assert list(csv.reader(io.StringIO(text))) == [
        ["requests", "prompt_tokens", "completion_tokens", "cost_usd", "errors"],
        [
            str(whole.requests),
            str(whole.prompt_tokens),
            str(whole.completion_tokens),
            str(round(whole.cost_usd, 8)),
            str(whole.errors),
        ],
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--by", "agent,tenant"], "cannot group usage by 'tenant': group by any of agent, model, key, day"),
        (["--from", "2026-04-01", "--to", "2026-03-01"], "--from 2026-04-01 is not before --to 2026-03-01"),
        (["--from", "2026-03-01", "--to", "2026-03-01"], "is not before --to"),
        (["--from", "last week"], "--from 'last week': give an ISO date"),
        (["--to", "2026-13-01"], "--to '2026-13-01': give an ISO date"),
        (["--tenant", "Acme!"], "--tenant 'Acme!' is not a tenant name"),
    ],
)
def test_the_cli_refuses_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, text = agentplane(
        "usage", "--tenant", "acme", *argv, "--database-url", f"sqlite:///{tmp_path / 'x.db'}"
    )
    assert (code, text) == (2, "")
    assert message in capsys.readouterr().err


def test_the_cli_refuses_a_missing_sqlite_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.db"
    assert agentplane("usage", "--tenant", "acme", "--database-url", f"sqlite:///{missing}")[0] == 2
    assert f"no database at {missing}" in capsys.readouterr().err
    assert not missing.exists()


# --- the budget


def read_budget(db: Database, tenant: str, now: datetime) -> BudgetStatus:
    async def go() -> BudgetStatus:
        engine = create_engine(db.url, connect_args=db.connect_args)
        try:
            async with engine.connect() as connection:
                spend, limit = (await connection.execute(budget_query(tenant, now))).one()
        finally:
            await engine.dispose()
        return budget_status(spend, limit, tenant=tenant, now=now)

    return asyncio.run(go())


def test_budget_status_from_the_database(database: Database) -> None:
    spent = expected("acme", *MARCH, [])[()].cost_usd
    status = read_budget(database, "acme", NOW)
    assert (status.month_start, status.month_end) == MARCH
    assert status.spend_usd == pytest.approx(spent, abs=1e-9)
    assert status.limit_usd == 5.0
    assert status.share_used == pytest.approx(spent / 5.0)
    assert status.remaining_usd == pytest.approx(max(5.0 - spent, 0.0))
    # 14.5 of March's 31 days have passed
    assert status.forecast_usd == pytest.approx(spent / 14.5 * 31)
    # no quota row: no limit, still a spend and a forecast
    other = read_budget(database, "globex", NOW)
    assert other.spend_usd == pytest.approx(expected("globex", *MARCH, [])[()].cost_usd, abs=1e-9)
    assert (other.limit_usd, other.share_used, other.remaining_usd) == (None, None, None)
    assert other.forecast_usd is not None
    assert read_budget(database, "nobody", NOW).spend_usd == 0.0


def test_budget_status_forecast_and_limits() -> None:
    month_start = datetime(2026, 2, 1, tzinfo=UTC)
    # the first minute, and the whole first hour: no forecast yet (a rate over minutes says nothing)
    first_minute = budget_status(0.3, 10.0, tenant="acme", now=month_start + timedelta(seconds=30))
    assert first_minute.forecast_usd is None
    assert budget_status(0.0, 10.0, tenant="acme", now=month_start).forecast_usd is None
    assert (
        budget_status(
            0.3, 10.0, tenant="acme", now=month_start + FORECAST_AFTER - timedelta(microseconds=1)
        ).forecast_usd
        is None
    )
    after_an_hour = budget_status(0.3, 10.0, tenant="acme", now=month_start + FORECAST_AFTER)
    assert after_an_hour.forecast_usd == pytest.approx(0.3 * 28 * 24)  # February 2026: 28 days
    # share and remainder, overshoot
    half = budget_status(7.0, 10.0, tenant="acme", now=month_start + timedelta(days=14))
    assert (half.share_used, half.remaining_usd) == pytest.approx((0.7, 3.0))
    assert half.forecast_usd == pytest.approx(14.0)
    over = budget_status(10.5, 10.0, tenant="acme", now=month_start + timedelta(days=20))
    assert (over.share_used, over.remaining_usd) == pytest.approx((1.05, 0.0))
    # a budget of 0 is no budget (the runtime does not enforce it either); no row is None
    for limit in (0.0, None):
        free = budget_status(3.0, limit, tenant="acme", now=month_start + timedelta(days=3))
        assert (free.limit_usd, free.share_used, free.remaining_usd) == (None, None, None)
    # December runs into the next year; the current month is the UTC month, whatever zone now is in
    december = budget_status(1.0, None, tenant="acme", now=datetime(2026, 12, 31, 23, 0, tzinfo=UTC))
    assert december.month_end == datetime(2027, 1, 1, tzinfo=UTC)
    assert december.forecast_usd == pytest.approx(1.0 * 31 * 24 / (31 * 24 - 1))
    tokyo = datetime(
        2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=9))
    )  # still 23:00 on 28 February in UTC
    assert budget_status(1.0, None, tenant="acme", now=tokyo).month_start == datetime(2026, 2, 1, tzinfo=UTC)
    assert december.as_json()["month_end"] == "2027-01-01T00:00:00Z"
