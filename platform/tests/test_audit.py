"""The audit trail on real PostgreSQL and on SQLite: chains appended in batches verify; `agentplane audit
verify` finds an edited, deleted, reordered record and a cut tail at the right seq and exits 1;
concurrent appenders make one unbroken chain; prune keeps the chain verifiable; export emits exactly
the window."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import Connection, delete, func, insert, select, update

from agentplane_platform import audit
from agentplane_platform.audit import AuditAction, AuditEvent, AuditOutcome
from agentplane_platform.cli import run
from agentplane_platform.db import create_engine, migrate
from agentplane_platform.db.models import AuditHead, AuditRecord
from support.services import Server, create_database

T = TypeVar("T")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty, migrated platform database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        server: Server = request.getfixturevalue("postgres")
        url = create_database(server, f"audit_{abs(hash(request.node.nodeid)) % 10**8}")

    async def setup() -> None:
        engine = create_engine(url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(setup())
    return url


def on(url: str, work: Callable[[Connection], T]) -> T:
    """`work` in one committed transaction, through the async driver as the runtime calls it."""

    async def go() -> T:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def events(tenant: str, count: int, start: int = 0) -> list[AuditEvent]:
    actions = list(AuditAction)
    return [
        AuditEvent(
            tenant=tenant,
            action=actions[i % len(actions)],
            at=datetime.now(UTC) - timedelta(seconds=1),
            outcome=AuditOutcome.DENIED if i % 3 == 0 else AuditOutcome.SUCCESS,
            actor_subject=f"user-{i}@{tenant}.example",
            actor_key_id=f"{i:016x}",
            actor_auth="api-key",
            source="10.0.0.7",
            agent="support-bot",
            target=f"document:doc-{i}",
            request_id=f"req-{i}",
            details={"n": i, "tokens": 120.5, "tags": ["a", "b"], "nested": {"ok": True}},
        )
        for i in range(start, start + count)
    ]


def append(url: str, batch: list[AuditEvent]) -> list[int]:
    return on(url, lambda c: audit.append(c, batch))


def agentplane(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run(list(argv), out=out)
    return code, out.getvalue()


def verify_cli(url: str, *extra: str) -> tuple[int, list[tuple[str, int, str]]]:
    """`agentplane audit verify` as a user runs it: its exit code and its problems (tenant, seq, kind)."""
    code, printed = agentplane("audit", "verify", "--database-url", url, *extra)
    problems = []
    for line in printed.splitlines():
        tenant, seq, kind = line.split(":", 1)[0].split(" ")
        problems.append((tenant, int(seq), kind))
    return code, problems


def test_batches_make_one_chain_per_tenant_that_verifies(database: str) -> None:
    assert append(database, events("acme", 1)) == [1]
    mixed = [e for pair in zip(events("acme", 5, 1), events("globex", 5), strict=True) for e in pair]
    assert append(database, mixed) == [2, 1, 3, 2, 4, 3, 5, 4, 6, 5]
    assert append(database, events("acme", 20, 6)) == list(range(7, 27))
    assert append(database, []) == []

    reports = on(database, lambda c: audit.verify(c))
    assert [(r.tenant, r.records, r.ok) for r in reports] == [("acme", 26, True), ("globex", 5, True)]
    assert verify_cli(database) == (0, [])
    assert verify_cli(database, "--tenant", "globex") == (0, [])
    heads = on(database, lambda c: c.execute(select(AuditHead.tenant, AuditHead.last_seq)).all())
    assert sorted((tenant, seq) for tenant, seq in heads) == [("acme", 26), ("globex", 5)]


def _edit_details(c: Connection) -> None:
    c.execute(
        update(AuditRecord)
        .where(AuditRecord.tenant == "acme", AuditRecord.seq == 4)
        .values(details={"n": 3, "tokens": 1.0, "tags": ["a", "b"], "nested": {"ok": True}})
    )


def _delete_one(c: Connection) -> None:
    c.execute(delete(AuditRecord).where(AuditRecord.tenant == "acme", AuditRecord.seq == 5))


def _swap_two(c: Connection) -> None:
    def move(old: int, new: int) -> None:
        c.execute(
            update(AuditRecord).where(AuditRecord.tenant == "acme", AuditRecord.seq == old).values(seq=new)
        )

    move(3, -1)
    move(4, 3)
    move(-1, 4)


def _cut_tail(c: Connection) -> None:
    c.execute(delete(AuditRecord).where(AuditRecord.tenant == "acme", AuditRecord.seq >= 9))


TAMPERING: dict[str, tuple[Callable[[Connection], None], list[tuple[str, int, str]]]] = {
    "edited": (_edit_details, [("acme", 4, "edited")]),
    "deleted": (_delete_one, [("acme", 5, "deleted")]),
    "swapped": (_swap_two, [("acme", 3, "reordered"), ("acme", 4, "reordered")]),
    "tail-cut": (_cut_tail, [("acme", 9, "tail-cut")]),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_verify_finds_tampering_at_its_seq(
    database: str, tampering: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "_PAGE", 3)  # the chain is read a page at a time: across pages here
    append(database, events("acme", 4))
    append(database, events("acme", 6, 4) + events("globex", 3))
    assert verify_cli(database) == (0, [])
    tamper, expected = TAMPERING[tampering]
    on(database, tamper)
    assert verify_cli(database) == (1, expected)
    assert verify_cli(database, "--tenant", "globex") == (0, [])  # the other tenant's chain is intact


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("tenant", None),
        ("at", datetime(2020, 1, 1, tzinfo=UTC)),
        ("recorded_at", datetime(2020, 1, 1, tzinfo=UTC)),
        ("actor_subject", "someone-else"),
        ("actor_key_id", "0" * 16),
        ("actor_auth", "oidc"),
        ("source", "203.0.113.9"),
        ("action", "key.created"),
        ("agent", "billing-bot"),
        ("target", "document:other"),
        ("request_id", "req-forged"),
        ("outcome", "failure"),
        ("details", {}),
        ("prev_hash", "f" * 64),
    ],
)
def test_every_field_is_covered_by_the_hash(database: str, column: str, value: object) -> None:
    append(database, events("acme", 3) + events("globex", 3))

    def tamper(c: Connection) -> None:
        def edit(tenant: str, values: dict[str, object]) -> None:
            c.execute(
                update(AuditRecord).where(AuditRecord.tenant == tenant, AuditRecord.seq == 3).values(values)
            )

        if column == "tenant":  # the two tenants' third records trade places
            edit("acme", {"tenant": "swap"})
            edit("globex", {"tenant": "acme"})
            edit("swap", {"tenant": "globex"})
        else:
            edit("acme", {column: value})

    on(database, tamper)
    reports = {r.tenant: r for r in on(database, lambda c: audit.verify(c))}
    assert (3, "edited") in [(p.seq, p.kind) for p in reports["acme"].problems]


def test_a_record_rewritten_with_a_new_hash_still_shows(database: str) -> None:
    append(database, events("acme", 6))

    def rewrite(c: Connection) -> None:
        row = c.execute(select(AuditRecord.__table__).where(AuditRecord.seq == 3)).mappings().one()
        forged = dict(row) | {"details": {"forged": True}}
        c.execute(
            update(AuditRecord)
            .where(AuditRecord.seq == 3)
            .values(details=forged["details"], hash=audit.record_hash(forged))
        )

    on(database, rewrite)
    assert verify_cli(database) == (1, [("acme", 4, "deleted")])


def test_records_outside_the_chain_and_a_missing_head_show(database: str) -> None:
    append(database, events("acme", 3))
    append(database, events("globex", 2))

    def tamper(c: Connection) -> None:
        row = c.execute(
            select(AuditRecord.__table__).where(AuditRecord.tenant == "acme", AuditRecord.seq == 3)
        )
        copy = dict(row.mappings().one())
        c.execute(insert(AuditRecord).values([copy | {"seq": 4}, copy | {"seq": 0}]))
        c.execute(delete(AuditHead).where(AuditHead.tenant == "globex"))

    on(database, tamper)
    code, problems = verify_cli(database)
    assert code == 1
    assert problems == [("acme", 0, "inserted"), ("acme", 4, "inserted"), ("globex", 2, "head-missing")]


@pytest.mark.postgres
def test_concurrent_appenders_make_one_unbroken_chain(postgres: Server) -> None:
    url = create_database(postgres, "audit_concurrent")
    asyncio.run(migrate_only(url))
    writers, batches, size = 2, 15, 4
    ready = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(number: int) -> None:
        async def go() -> None:
            engine = create_engine(url)
            try:
                ready.wait(timeout=30)
                for batch in range(batches):
                    # the first batches race to create the tenant's head row
                    tenant_events = events("acme", size, start=(number * batches + batch) * size)
                    async with engine.begin() as connection:
                        await connection.run_sync(audit.append, tenant_events)
            finally:
                await engine.dispose()

        try:
            asyncio.run(go())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    total = writers * batches * size
    seqs = on(url, lambda c: list(c.execute(select(AuditRecord.seq).order_by(AuditRecord.seq)).scalars()))
    assert seqs == list(range(1, total + 1))
    written = on(url, lambda c: c.execute(select(func.count(func.distinct(AuditRecord.request_id)))).scalar())
    assert written == total  # every event written once
    assert verify_cli(url) == (0, [])


async def migrate_only(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def _after_a_tick() -> datetime:
    """A moment strictly between what was appended before and what is appended after."""
    time.sleep(0.01)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    return moment


def test_prune_keeps_the_chain_verifiable(database: str) -> None:
    append(database, events("acme", 5) + events("globex", 2))
    cutoff = _after_a_tick()
    append(database, events("acme", 3, 5))

    assert on(database, lambda c: audit.prune(c, cutoff)) == 7  # acme 1-5 and all of globex
    reports = {r.tenant: r for r in on(database, lambda c: audit.verify(c))}
    assert (reports["acme"].records, reports["acme"].ok) == (3, True)
    assert (reports["globex"].records, reports["globex"].ok) == (0, True)
    assert on(database, lambda c: audit.prune(c, cutoff)) == 0  # a second run removes nothing

    append(database, events("acme", 2, 8) + events("globex", 1, 2))  # the chains go on
    assert append(database, events("globex", 1, 3)) == [4]
    assert verify_cli(database) == (0, [])
    # and tampering after the new start still shows
    on(
        database,
        lambda c: c.execute(delete(AuditRecord).where(AuditRecord.tenant == "acme", AuditRecord.seq == 6)),
    )
    assert verify_cli(database) == (1, [("acme", 6, "deleted")])


def test_prune_from_the_command_line(database: str) -> None:
    append(database, events("acme", 2))
    assert agentplane("audit", "prune", "--older-than", "90d", "--database-url", database)[1].startswith(
        "pruned 0 audit records"
    )
    time.sleep(0.01)
    code, printed = agentplane("audit", "prune", "--older-than", "0m", "--database-url", database)
    assert (code, printed.split(" written")[0]) == (0, "pruned 2 audit records")
    assert verify_cli(database) == (0, [])
    assert agentplane("audit", "prune", "--older-than", "soon", "--database-url", database)[0] == 2


def _lines(printed: str) -> Iterator[dict[str, object]]:
    for line in printed.splitlines():
        yield json.loads(line)


def test_export_emits_exactly_the_records_of_the_window(database: str) -> None:
    append(database, events("acme", 3))
    since = _after_a_tick()
    append(database, events("acme", 4, 3) + events("globex", 2))
    append(database, events("acme", 1, 7))
    until = _after_a_tick()
    append(database, events("acme", 2, 8))

    code, printed = agentplane(
        "audit", "export", "--tenant", "acme", "--from", since.isoformat(), "--to", until.isoformat(),
        "--database-url", database,
    )  # fmt: skip
    assert code == 0
    lines = list(_lines(printed))
    assert [line["seq"] for line in lines] == [4, 5, 6, 7, 8]
    assert {line["tenant"] for line in lines} == {"acme"}
    assert [line["request_id"] for line in lines] == [f"req-{i}" for i in range(3, 8)]
    # each line carries what its hash covers: without seq and hash, canonical JSON hashes to it
    for line in lines:
        content = {k: v for k, v in line.items() if k not in {"seq", "hash"}}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256(canonical.encode()).hexdigest() == line["hash"]
    # consecutive: each follows the one before
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(lines))

    _, everything = agentplane("audit", "export", "--tenant", "acme", "--database-url", database)
    assert [line["seq"] for line in _lines(everything)] == list(range(1, 11))


def test_the_command_refuses_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTPLANE_DATABASE_URL", raising=False)
    assert agentplane("audit", "verify")[0] == 2  # no database
    assert agentplane("audit", "verify", "--database-url", f"sqlite:///{tmp_path / 'none.db'}")[0] == 2
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    asyncio.run(migrate_only(url))
    assert agentplane("audit", "verify", "--tenant", "Not_A_Tenant", "--database-url", url)[0] == 2
    assert (
        agentplane("audit", "export", "--tenant", "acme", "--from", "yesterday", "--database-url", url)[0]
        == 2
    )
    monkeypatch.setenv("AGENTPLANE_DATABASE_URL", url)
    assert verify_cli(url) == (0, [])
    assert agentplane("audit", "verify")[0] == 0  # the URL from the environment, as `keys` reads it


def test_events_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        AuditEvent(tenant="acme", action=AuditAction.KEY_CREATED, at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="source is longer"):
        AuditEvent(tenant="acme", action=AuditAction.KEY_CREATED, at=datetime.now(UTC), source="x" * 65)
    with pytest.raises(ValueError, match="not JSON"):
        AuditEvent(
            tenant="acme", action=AuditAction.KEY_CREATED, at=datetime.now(UTC), details={"x": float("nan")}
        )
    with pytest.raises(ValueError, match="not a valid AuditAction"):
        AuditEvent(tenant="acme", action="key.stolen", at=datetime.now(UTC))  # type: ignore[arg-type]
