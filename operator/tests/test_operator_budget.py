"""Budget warnings (which are due, from the month, the share spent and what was already sent) and
the audit trail's retention job on a real PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from operator_support import least_settings
from sqlalchemy import select

from agentplane_operator.budget import Decision, Notified, decide, month_of, prune_audit, warning_message
from agentplane_operator.settings import OperatorSettings
from agentplane_platform import audit
from agentplane_platform.db import create_engine, migrate
from agentplane_platform.db.models import AuditRecord
from agentplane_platform.usage_report import budget_status
from support.services import Server, create_database

DEC = "2026-12"
JAN = "2027-01"


def test_the_first_crossing_of_80_percent_warns_once() -> None:
    first = decide(DEC, 0.85, None)
    assert first == Decision(record=Notified(DEC, (80,)), warn=(80,))
    # the next tick, with the status as written: nothing more
    assert decide(DEC, 0.86, first.record) == Decision()
    assert decide(DEC, 0.99, first.record) == Decision()


def test_100_percent_after_80_warns_again_once() -> None:
    exhausted = decide(DEC, 1.0, Notified(DEC, (80,)))
    assert exhausted == Decision(record=Notified(DEC, (80, 100)), warn=(100,))
    assert decide(DEC, 1.3, exhausted.record) == Decision()


def test_a_jump_past_both_thresholds_warns_of_the_highest_and_records_both() -> None:
    jump = decide(DEC, 1.05, None)
    assert jump == Decision(record=Notified(DEC, (80, 100)), warn=(100,))
    assert decide(DEC, 1.05, jump.record) == Decision()


def test_below_80_percent_nothing_is_sent_nor_written() -> None:
    assert decide(DEC, 0.5, None) == Decision()
    assert decide(DEC, 0.79, Notified(DEC, ())) == Decision()


def test_a_tenant_without_a_budget_gets_nothing() -> None:
    assert decide(DEC, None, None) == Decision()
    assert decide(DEC, None, Notified("2026-11", (80,))) == Decision()
    # budget_status gives no share for a missing or zero budget
    now = datetime(2026, 12, 15, tzinfo=UTC)
    assert budget_status(50, None, tenant="t", now=now).share_used is None
    assert budget_status(50, 0, tenant="t", now=now).share_used is None


def test_a_new_month_starts_with_no_warnings_sent() -> None:
    december = Notified(DEC, (80, 100))
    # January's first check: under 80 %, the record is reset to January with none sent
    reset = decide(JAN, 0.1, december)
    assert reset == Decision(record=Notified(JAN, ()), warn=())
    # and each threshold warns again in January, once
    again = decide(JAN, 0.81, reset.record)
    assert again == Decision(record=Notified(JAN, (80,)), warn=(80,))
    # a spend already over 80 % at the turn of the month (a status of last month) warns at once
    assert decide(JAN, 0.9, december) == Decision(record=Notified(JAN, (80,)), warn=(80,))


def test_a_threshold_stays_sent_when_the_share_falls_back() -> None:
    """A larger budget mid-month: the share drops below 80 %, then rises past it again."""
    sent = Notified(DEC, (80,))
    assert decide(DEC, 0.4, sent) == Decision()
    assert decide(DEC, 0.85, sent) == Decision()


def test_after_a_restart_the_status_says_what_was_sent() -> None:
    """What a restarted operator reads back from the Tenant's status decides as the status written."""
    written = decide(DEC, 0.9, None).record
    assert written is not None
    status = {"conditions": [], "budget": written.as_status()}
    assert status["budget"] == {"month": DEC, "notified": [80]}
    read = Notified.of_status(status)
    assert read == written
    assert decide(DEC, 0.95, read) == Decision()
    assert Notified.of_status({}) is None
    assert Notified.of_status(None) is None
    assert Notified.of_status({"budget": {"month": DEC, "notified": [100, 80, "x"]}}) == Notified(
        DEC, (80, 100)
    )


def test_the_month_is_the_utc_calendar_month() -> None:
    assert month_of(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == DEC
    # 00:30 on 1 January in UTC+2 is still 31 December in UTC
    assert month_of(datetime(2027, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))) == DEC
    assert month_of(datetime(2027, 1, 1, 0, 0, tzinfo=UTC)) == JAN


def test_the_warning_says_spend_limit_and_month() -> None:
    now = datetime(2026, 12, 15, tzinfo=UTC)
    status = budget_status(8.5, 10, tenant="acme", now=now)
    assert warning_message(80, status, DEC) == (
        "tenant acme has spent $8.50 of its $10.00 budget for 2026-12 (85 %), 80 % or more"
    )
    over = budget_status(10.2, 10, tenant="acme", now=now)
    assert warning_message(100, over, DEC) == (
        "tenant acme has spent $10.20 of its $10.00 budget for 2026-12 (102 %): the budget is exhausted"
    )


def test_the_retention_setting_defaults_to_a_year_and_zero_keeps_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    least_settings(monkeypatch)
    assert OperatorSettings().audit_retention_days == 365
    monkeypatch.setenv("AGENTPLANE_OPERATOR_AUDIT_RETENTION_DAYS", "0")
    assert OperatorSettings().audit_retention_days == 0
    monkeypatch.setenv("AGENTPLANE_OPERATOR_AUDIT_RETENTION_DAYS", "-1")
    with pytest.raises(ValueError, match="audit_retention_days"):
        OperatorSettings()


def _event(tenant: str, n: int) -> audit.AuditEvent:
    return audit.AuditEvent(
        tenant=tenant, action=audit.AuditAction.KEY_CREATED, at=datetime.now(UTC), target=f"key:{n}"
    )


@pytest.mark.postgres
@pytest.mark.asyncio
async def test_the_retention_job_removes_only_records_older_than_the_retention(postgres: Server) -> None:
    engine = create_engine(create_database(postgres, "operator_audit_retention"))
    try:
        await migrate(engine)
        async with engine.begin() as conn:
            await conn.run_sync(audit.append, [_event("acme", n) for n in range(3)] + [_event("globex", 0)])
        time.sleep(0.01)
        between = datetime.now(UTC)
        time.sleep(0.01)
        async with engine.begin() as conn:
            await conn.run_sync(audit.append, [_event("acme", n) for n in range(3, 5)])

        # 0: kept forever, whatever their age
        assert await prune_audit(engine, 0, now=between + timedelta(days=10_000)) == 0
        # written before `between`, 30 days before "now": removed; the later ones kept
        assert await prune_audit(engine, 30, now=between + timedelta(days=29)) == 0
        assert await prune_audit(engine, 30, now=between + timedelta(days=30)) == 4
        async with engine.connect() as conn:
            left = (await conn.execute(select(AuditRecord.tenant, AuditRecord.seq))).all()
            reports = await conn.run_sync(audit.verify)
        assert sorted(left) == [("acme", 4), ("acme", 5)]
        assert [(r.tenant, r.ok) for r in reports] == [("acme", True), ("globex", True)]
        # run again (a second run, or another replica): nothing more goes
        assert await prune_audit(engine, 30, now=between + timedelta(days=30)) == 0
    finally:
        await engine.dispose()
