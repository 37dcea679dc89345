"""The tamper-evident audit trail: who did what, when, from where, with which outcome.

Records are appended, never updated, and chained per tenant: each carries `prev_hash`, the hash of
the tenant's record before it (the first follows `GENESIS`), and `hash`, the SHA-256 of its
canonical form. The canonical form is the record as `export` prints it without `seq` and `hash`,
serialised as JSON with sorted keys, no spaces, ASCII only, timestamps as `2026-12-01T02:40:11.000000Z`
(UTC, microseconds). `seq` is left out on purpose: a record's place is fixed by the hash of the
one before it, so a record moved, removed or renumbered breaks a link (or leaves a gap, or
disagrees with the head) whatever its seq says; `verify` tells those apart from an edit.

A head row per tenant holds the last seq and hash (a cut tail shows against it) and, once `prune`
removed older records, the seq and hash the chain starts after.

These functions take a synchronous SQLAlchemy `Connection`: the CLI and the async runtime
(through `AsyncConnection.run_sync`) share them. The runtime, the operator and the CLI write events
as `AuditEvent`s; the actions are the closed set `AuditAction`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from sqlalchemy import Connection, Row, RowMapping, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from agentplane_platform.db.models import AuditHead, AuditRecord
from agentplane_platform.jsontypes import JsonValue as JsonValue  # re-exported: the details of an event

GENESIS = "0" * 64
"""What a tenant's first record is chained to."""


class AuditAction(StrEnum):
    """What can be audited: one list, for the runtime, the operator and the CLI."""

    AUTH_FAILED = "auth.failed"
    KEY_CREATED = "key.created"
    KEY_REVOKED = "key.revoked"
    KEY_ROTATED = "key.rotated"
    DOCUMENT_UPLOADED = "document.uploaded"
    DOCUMENT_SHARED = "document.shared"
    DOCUMENT_DELETED = "document.deleted"
    TOOL_CALLED = "tool.called"
    ACCESS_DENIED = "access.denied"
    QUOTA_REFUSED = "quota.refused"
    BUDGET_REFUSED = "budget.refused"
    BUDGET_THRESHOLD = "budget.threshold"


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    """Attempted and failed (a failed authentication, a tool call that errored)."""
    DENIED = "denied"
    """Refused by a rule (access, quota, budget)."""


_LIMITS = {
    "tenant": 63,
    "actor_subject": 256,
    "actor_key_id": 32,
    "actor_auth": 32,
    "source": 64,
    "agent": 63,
    "target": 512,
    "request_id": 128,
}
"""The column lengths of `AuditRecord`: checked when an event is made, not when a batch is written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """Something to audit, as its writer knows it; `append` gives it a seq and hashes."""

    tenant: str
    action: AuditAction
    at: datetime
    """When it happened (timezone-aware)."""
    outcome: AuditOutcome = AuditOutcome.SUCCESS
    actor_subject: str | None = None
    actor_key_id: str | None = None
    actor_auth: str | None = None
    """How the actor authenticated (`api-key`, `oidc`); None when it did not."""
    source: str | None = None
    """The client's address."""
    agent: str | None = None
    target: str | None = None
    """What was acted on, `kind:id` (`key:…`, `document:…`, `tool:…`)."""
    request_id: str | None = None
    details: Mapping[str, JsonValue] = field(default_factory=dict)
    """JSON: stored as it round-trips through JSON (tuples become lists)."""

    def __post_init__(self) -> None:
        if self.at.tzinfo is None:
            raise ValueError(f"audit event {self.action}: `at` must be timezone-aware, got {self.at}")
        AuditAction(self.action)
        AuditOutcome(self.outcome)
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            if value is not None and len(value) > limit:
                raise ValueError(f"audit event {self.action}: {name} is longer than {limit} characters")
        try:
            details = json.loads(json.dumps(self.details, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"audit event {self.action}: details are not JSON: {exc}") from None
        object.__setattr__(self, "details", details)


def timestamp(moment: datetime) -> str:
    """The one text form of a time in the chain: UTC, microseconds, `Z`. A naive time is UTC (SQLite
    returns timezone-aware columns without their zone)."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(value: Mapping[str, JsonValue]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


_HASHED = (
    "tenant",
    "at",
    "recorded_at",
    "actor_subject",
    "actor_key_id",
    "actor_auth",
    "source",
    "action",
    "agent",
    "target",
    "request_id",
    "outcome",
    "details",
    "prev_hash",
)
"""The fields a record's hash covers: all but seq (see the module's docstring) and the hash itself."""


def _json(value: object) -> JsonValue:
    if isinstance(value, datetime):
        return timestamp(value)
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    raise TypeError(f"not a value of an audit record: {value!r}")


def _content(row: Mapping[str, object] | RowMapping) -> dict[str, JsonValue]:
    """What a record's hash covers, from a row (or the values about to be inserted)."""
    return {name: _json(row[name]) for name in _HASHED}


def record_hash(row: Mapping[str, object] | RowMapping) -> str:
    """The SHA-256 (hex) of a record's canonical form."""
    return hashlib.sha256(canonical(_content(row)).encode()).hexdigest()


def _transaction(connection: Connection) -> AbstractContextManager[object]:
    """The caller's transaction when there is one (the work commits with it), else a new one."""
    return nullcontext() if connection.in_transaction() else connection.begin()


def _new_head(tenant: str) -> dict[str, object]:
    return {
        "tenant": tenant,
        "last_seq": 0,
        "last_hash": GENESIS,
        "start_after_seq": 0,
        "start_after_hash": GENESIS,
    }


def _lock_head(connection: Connection, tenant: str) -> Row[int, str, int, str]:
    """The tenant's head row, locked until the transaction ends; created when missing.

    PostgreSQL: `SELECT … FOR UPDATE`; a missing row is inserted with `ON CONFLICT DO NOTHING`
    (a concurrent inserter waits for the first one's transaction) and then locked. SQLite has one
    writer: the insert comes first so that the transaction holds the write lock before it reads."""
    locked = (
        select(AuditHead.last_seq, AuditHead.last_hash, AuditHead.start_after_seq, AuditHead.start_after_hash)
        .where(AuditHead.tenant == tenant)
        .with_for_update()
    )
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.execute(
            sqlite.insert(AuditHead)
            .values(_new_head(tenant))
            .on_conflict_do_nothing(index_elements=["tenant"])
        )
        return connection.execute(locked).one()
    if dialect != "postgresql":
        raise NotImplementedError(f"the audit trail runs on PostgreSQL and SQLite, not {dialect}")
    head = connection.execute(locked).one_or_none()
    if head is None:
        connection.execute(
            postgresql.insert(AuditHead)
            .values(_new_head(tenant))
            .on_conflict_do_nothing(index_elements=["tenant"])
        )
        head = connection.execute(locked).one()
    return head


def append(connection: Connection, events: Iterable[AuditEvent]) -> list[int]:
    """Write `events` in one transaction (the caller's, when it has begun one; else one of its own):
    per tenant, in the order given, each gets the next seq and is chained to the one before. Returns
    the seq of each event, in order."""
    batch = list(events)
    if not batch:
        return []
    recorded_at = datetime.now(UTC)
    by_tenant: dict[str, list[int]] = {}
    for index, event in enumerate(batch):
        by_tenant.setdefault(event.tenant, []).append(index)
    seqs = [0] * len(batch)
    with _transaction(connection):
        for tenant in sorted(by_tenant):  # one lock order for every writer: no deadlock
            head = _lock_head(connection, tenant)
            seq, prev_hash = head.last_seq, head.last_hash
            rows: list[dict[str, object]] = []
            for index in by_tenant[tenant]:
                seq += 1
                row = _row(batch[index], seq=seq, recorded_at=recorded_at, prev_hash=prev_hash)
                prev_hash = row["hash"] = record_hash(row)
                rows.append(row)
                seqs[index] = seq
            connection.execute(insert(AuditRecord), rows)
            connection.execute(
                update(AuditHead).where(AuditHead.tenant == tenant).values(last_seq=seq, last_hash=prev_hash)
            )
    return seqs


def _row(event: AuditEvent, *, seq: int, recorded_at: datetime, prev_hash: str) -> dict[str, object]:
    return {
        "tenant": event.tenant,
        "seq": seq,
        "at": event.at.astimezone(UTC),
        "recorded_at": recorded_at,
        "actor_subject": event.actor_subject,
        "actor_key_id": event.actor_key_id,
        "actor_auth": event.actor_auth,
        "source": event.source,
        "action": str(event.action),
        "agent": event.agent,
        "target": event.target,
        "request_id": event.request_id,
        "outcome": str(event.outcome),
        "details": dict(event.details),
        "prev_hash": prev_hash,
    }


ProblemKind = Literal["edited", "deleted", "reordered", "tail-cut", "inserted", "head-missing"]
"""edited: a record's content does not match its hash. deleted: a seq is missing, or a record is
chained to one that is no longer there. reordered: a record sits at another place than the one it
was written at. tail-cut: the head says the chain goes further than the table does. inserted: a
record outside the chain (before its start or after its head). head-missing: records without the
head row, so their end cannot be checked."""


@dataclass(frozen=True, slots=True)
class AuditProblem:
    tenant: str
    seq: int
    kind: ProblemKind
    detail: str

    def line(self) -> str:
        return f"{self.tenant} {self.seq} {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class TenantReport:
    """What `verify` found for one tenant: how many records it checked, and each problem in seq order."""

    tenant: str
    records: int
    problems: tuple[AuditProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


_PAGE = 1000


def _pages(
    connection: Connection,
    tenant: str,
    *,
    upto: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[RowMapping]:
    """The tenant's records in seq order, read a page at a time (seq <= `upto`, `since` <= recorded_at
    < `until`)."""
    conditions = [AuditRecord.tenant == tenant]
    if upto is not None:
        conditions.append(AuditRecord.seq <= upto)
    if since is not None:
        conditions.append(AuditRecord.recorded_at >= since.astimezone(UTC))
    if until is not None:
        conditions.append(AuditRecord.recorded_at < until.astimezone(UTC))
    query = select(AuditRecord.__table__).order_by(AuditRecord.seq).limit(_PAGE)
    after: int | None = None  # keyset paging: no lower bound at first, so that any seq is seen
    while True:
        page_conditions = conditions if after is None else [*conditions, AuditRecord.seq > after]
        page = connection.execute(query.where(*page_conditions)).mappings().all()
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1]["seq"]


def _head(connection: Connection, tenant: str) -> Row[int, str, int, str] | None:
    return connection.execute(
        select(
            AuditHead.last_seq, AuditHead.last_hash, AuditHead.start_after_seq, AuditHead.start_after_hash
        ).where(AuditHead.tenant == tenant)
    ).one_or_none()


def verify(connection: Connection, tenant: str | None = None) -> list[TenantReport]:
    """Check the chain of `tenant` (default: every tenant with records or a head), in tenant order.

    Run it in one snapshot where the database has them (PostgreSQL: REPEATABLE READ) so that a
    concurrent `prune` cannot show as a gap; records appended while it runs are left out."""
    if tenant is None:
        tenants = set(connection.execute(select(AuditHead.tenant)).scalars())
        tenants |= set(connection.execute(select(AuditRecord.tenant).distinct()).scalars())
    else:
        tenants = {tenant}
    return [_verify_tenant(connection, name) for name in sorted(tenants)]


def _verify_tenant(connection: Connection, tenant: str) -> TenantReport:
    head = _head(connection, tenant)
    start_seq, start_hash = (head.start_after_seq, head.start_after_hash) if head else (0, GENESIS)
    problems: list[AuditProblem] = []

    def problem(seq: int, kind: ProblemKind, detail: str) -> None:
        problems.append(AuditProblem(tenant, seq, kind, detail))

    count = 0
    expected_seq, expected_prev = start_seq + 1, start_hash
    broken: list[int] = []  # seqs chained to something else than the record before them
    for row in _pages(connection, tenant, upto=head.last_seq if head else None):
        seq: int = row["seq"]
        count += 1
        if seq <= start_seq:
            problem(seq, "inserted", f"before the start of the chain (it starts after seq {start_seq})")
            continue
        if seq > expected_seq:
            missing = f"seq {expected_seq}" if seq == expected_seq + 1 else f"seqs {expected_seq}-{seq - 1}"
            problem(expected_seq, "deleted", f"{missing} missing from the chain")
        elif row["prev_hash"] != expected_prev:
            broken.append(seq)
        if record_hash(row) != row["hash"]:
            problem(seq, "edited", "its content does not match its hash")
        expected_seq, expected_prev = seq + 1, row["hash"]
    last_seq, last_hash = expected_seq - 1, expected_prev

    if broken:
        _classify_links(
            connection, tenant, head.last_seq if head else None, start_seq, start_hash, broken, problem
        )

    if head is None:
        if count:
            problem(
                last_seq, "head-missing", "the tenant's head row is missing: the end of the chain is unknown"
            )
    elif last_seq < head.last_seq:
        missing = (
            f"seq {head.last_seq}"
            if last_seq + 1 == head.last_seq
            else f"seqs {last_seq + 1}-{head.last_seq}"
        )
        problem(
            last_seq + 1,
            "tail-cut",
            f"{missing} missing at the end (the head says the chain ends at seq {head.last_seq})",
        )
    elif last_hash != head.last_hash and not any(p.seq == last_seq for p in problems):
        problem(last_seq, "edited", "it is not the last record the head names (rewritten with a new hash)")

    if head is not None:
        beyond = list(
            connection.execute(
                select(AuditRecord.seq)
                .where(AuditRecord.tenant == tenant, AuditRecord.seq > head.last_seq)
                .order_by(AuditRecord.seq)
            ).scalars()
        )
        if beyond:
            # appended while this ran, unless the head (read again now) does not cover them
            now = _head(connection, tenant)
            end = now.last_seq if now is not None else head.last_seq
            for seq in beyond:
                if seq > end:
                    problem(
                        seq, "inserted", f"after the end of the chain (the head says it ends at seq {end})"
                    )
    problems.sort(key=lambda p: p.seq)
    return TenantReport(tenant, count, tuple(problems))


def _classify_links(
    connection: Connection,
    tenant: str,
    upto: int | None,
    start_seq: int,
    start_hash: str,
    broken: Sequence[int],
    problem: Callable[[int, ProblemKind, str], None],
) -> None:
    """Why records are chained to something else than the record before them: moved (reordered),
    or chained to a record that is gone (deleted).

    Following the links from the start of the chain gives the place each record was written at; a
    record whose seq differs from it was moved. A run of links that starts at a record whose
    predecessor is gone is taken to be in place."""
    conditions = [AuditRecord.tenant == tenant, AuditRecord.seq > start_seq]
    if upto is not None:
        conditions.append(AuditRecord.seq <= upto)
    links = connection.execute(
        select(AuditRecord.seq, AuditRecord.prev_hash, AuditRecord.hash)
        .where(*conditions)
        .order_by(AuditRecord.seq)
    ).all()
    seq_of = {h: s for s, _, h in links}
    hash_of = {s: h for s, _, h in links}
    before = {s: p for s, p, _ in links}
    chained_after: dict[str, int] = {}
    for seq, prev, _ in links:
        chained_after.setdefault(prev, seq)
    written: dict[int, int] = {}

    def walk(seq: int | None, place: int) -> None:
        while seq is not None and seq not in written:
            written[seq] = place
            place += 1
            seq = chained_after.get(hash_of[seq])

    walk(chained_after.get(start_hash), start_seq + 1)
    for seq, prev, _ in links:
        if seq not in written and prev not in seq_of and prev != start_hash:
            walk(seq, seq)
    moved = {seq for seq in broken if written.get(seq, seq) != seq}
    order = [s for s, _, _ in links]
    previous = {s: order[i - 1] if i else None for i, s in enumerate(order)}
    for seq in broken:
        if seq in moved:
            problem(seq, "reordered", f"written as seq {written[seq]}")
            continue
        if previous[seq] in moved:
            continue  # out of place only because the record before it was moved
        prev = before[seq]
        if prev in seq_of or prev == start_hash:
            after = seq_of.get(prev, start_seq)
            problem(seq, "reordered", f"chained after seq {after}, not after the record before it")
        else:
            problem(
                seq,
                "deleted",
                "the record it was chained after is not in the table (removed, or rewritten with a new hash)",
            )


def _line(row: RowMapping) -> str:
    content = _content(row)
    content["seq"] = row["seq"]
    content["hash"] = row["hash"]
    return canonical(content)


def export(
    connection: Connection, tenant: str, since: datetime | None = None, until: datetime | None = None
) -> Iterator[str]:
    """The tenant's records written (`recorded_at`) in [`since`, `until`), in seq order, as JSON lines
    (no newline) for a SIEM: each with its seq, prev_hash and hash. Windows go by the time of writing,
    so consecutive windows hold consecutive pieces of the chain and a record buffered during an outage
    falls in a later window instead of being missed."""
    for row in _pages(connection, tenant, since=since, until=until):
        yield _line(row)


def prune(connection: Connection, older_than: datetime) -> int:
    """Delete each tenant's records written before `older_than`, oldest first up to the first record
    that is not (a chain loses only its beginning), and move the head's start to the last record
    removed, so that `verify` still passes. One transaction (the caller's when it has begun one).
    Returns how many records went."""
    removed = 0
    with _transaction(connection):
        for tenant in connection.execute(select(AuditHead.tenant).order_by(AuditHead.tenant)).scalars().all():
            head = _lock_head(connection, tenant)
            first_kept = connection.execute(
                select(func.min(AuditRecord.seq)).where(
                    AuditRecord.tenant == tenant,
                    AuditRecord.seq > head.start_after_seq,
                    AuditRecord.recorded_at >= older_than.astimezone(UTC),
                )
            ).scalar_one_or_none()
            last = head.last_seq if first_kept is None else first_kept - 1
            if last <= head.start_after_seq:
                continue
            # the new start is the stored hash of the last record removed (had that record been
            # rewritten with a new hash, the next one's link still shows it); when it is gone
            # already, the head's last hash or what the next record follows
            anchor = connection.execute(
                select(AuditRecord.hash).where(AuditRecord.tenant == tenant, AuditRecord.seq == last)
            ).scalar_one_or_none()
            if anchor is None:
                anchor = (
                    head.last_hash
                    if last == head.last_seq
                    else connection.execute(
                        select(AuditRecord.prev_hash).where(
                            AuditRecord.tenant == tenant, AuditRecord.seq == last + 1
                        )
                    ).scalar_one_or_none()
                    or GENESIS
                )
            result = connection.execute(
                delete(AuditRecord).where(AuditRecord.tenant == tenant, AuditRecord.seq <= last)
            )
            removed += result.rowcount
            connection.execute(
                update(AuditHead)
                .where(AuditHead.tenant == tenant)
                .values(start_after_seq=last, start_after_hash=anchor)
            )
    return removed
