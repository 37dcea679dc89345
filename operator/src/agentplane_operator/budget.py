"""Budget warnings at 80 % and 100 % of a Tenant's monthly budget, and the audit trail's retention.

Which warnings are due is decided by a pure function (`decide`) from the month, the share of the
budget spent and what the Tenant's `status.budget` says was already sent; `check_budget` reads the
spend and the status, and sends what is due: an Event on the Tenant, a metric, an audit record.

Once each per month, whatever happens: the warnings are claimed in `status.budget` with a patch
that carries the resourceVersion the decision was made from, so of two writers (a timer and a
replica taking over) only one gets through, and a restarted operator reads what was sent from the
Tenant itself. The audit record is appended in a database transaction that commits only once that
patch succeeded; the Event and the metric come after the commit. A crash between the steps can
lose a warning's Event (or, in the instant between the patch and the commit, its audit record),
never send one twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from agentplane_operator.kube import KubeError
from agentplane_operator.state import Operator
from agentplane_platform import audit
from agentplane_platform.usage_report import BudgetStatus, budget_query, budget_status, utc

log = logging.getLogger("agentplane.operator")

THRESHOLDS = (80, 100)
"""Shares of the monthly budget, in percent, a Tenant is warned of."""
REASONS = {80: "BudgetAt80Percent", 100: "BudgetExhausted"}
"""The reason of each warning's Event."""
AUDIT_PRUNE_INTERVAL = timedelta(days=1)
"""How often the audit trail's retention is applied."""
ACTOR = "agentplane-operator"
"""The audit records' actor."""
DATABASE_DOWN = (OperationalError, InterfaceError, OSError, TimeoutError)
"""What the database being unreachable raises: tried again later, not a bug."""


def month_of(now: datetime) -> str:
    """The UTC calendar month holding `now`, `YYYY-MM` (as `status.budget.month` holds it)."""
    return utc(now).strftime("%Y-%m")


@dataclass(frozen=True, slots=True)
class Notified:
    """`status.budget`: the month, and the thresholds the Tenant was warned of in it."""

    month: str
    thresholds: tuple[int, ...] = ()

    @classmethod
    def of_status(cls, status: Mapping[str, Any] | None) -> Notified | None:
        """What a Tenant's status says was sent (None: nothing, or not in the form we write)."""
        budget = (status or {}).get("budget")
        if not isinstance(budget, Mapping) or not isinstance(budget.get("month"), str):
            return None
        notified = budget.get("notified") or []
        thresholds = sorted({t for t in notified if isinstance(t, int)}) if isinstance(notified, list) else []
        return cls(budget["month"], tuple(thresholds))

    def as_status(self) -> dict[str, str | list[int]]:
        return {"month": self.month, "notified": list(self.thresholds)}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now: the `status.budget` to write (None: it is right as it is) and the thresholds
    to warn of (at most one: the highest the spend newly reached)."""

    record: Notified | None = None
    warn: tuple[int, ...] = ()


def decide(month: str, share: float | None, notified: Notified | None) -> Decision:
    """The warnings due in `month` at `share` of the budget spent (None: no budget, nothing to do)
    when `notified` is what was already sent.

    Each threshold reached is warned of once per month; what was sent in another month does not
    count. A spend that jumps past several thresholds at once gets one warning, the highest (a
    tenant that runs out is not also told it reached 80 %); the lower ones are recorded as reached,
    so they never come later. A threshold stays recorded when the share falls back below it (a
    larger budget, say) and is not warned of again that month.

    The record is written only with a warning, or to reset a record of another month: a Tenant
    below 80 % with nothing recorded costs no write (a reconcile that changes nothing writes
    nothing)."""
    if share is None:
        return Decision()
    already = notified.thresholds if notified is not None and notified.month == month else ()
    reached = [t for t in THRESHOLDS if share * 100 >= t]
    new = [t for t in reached if t not in already]
    if new:
        return Decision(record=Notified(month, tuple(sorted({*already, *reached}))), warn=(max(new),))
    if notified is not None and notified.month != month:
        return Decision(record=Notified(month))
    return Decision()


def _money(value: float) -> str:
    return f"${value:,.2f}"


def warning_message(threshold: int, status: BudgetStatus, month: str) -> str:
    """The Event's message: the spend, the limit and the month."""
    assert status.limit_usd is not None
    assert status.share_used is not None
    spent = f"{_money(status.spend_usd)} of its {_money(status.limit_usd)} budget for {month}"
    share = f"{status.share_used * 100:.0f} %"
    if threshold >= 100:
        return f"tenant {status.tenant} has spent {spent} ({share}): the budget is exhausted"
    return f"tenant {status.tenant} has spent {spent} ({share}), {threshold} % or more"


def _audit_event(
    tenant: str, threshold: int, status: BudgetStatus, month: str, now: datetime
) -> audit.AuditEvent:
    details: dict[str, audit.JsonValue] = {
        "threshold_percent": threshold,
        "month": month,
        "spend_usd": round(status.spend_usd, 8),
        "limit_usd": status.limit_usd,
        "share_used": status.share_used,
    }
    return audit.AuditEvent(
        tenant=tenant, action=audit.AuditAction.BUDGET_THRESHOLD, at=now, actor_subject=ACTOR,
        target=f"budget:{month}", details=details,
    )  # fmt: skip


class _Gone(Exception):
    """The Tenant was deleted before its budget warning was recorded: the audit record is rolled back."""


def _kopf_body(body: Mapping[str, Any]) -> kopf.Body:
    raw: kopf.RawBody = {"apiVersion": body["apiVersion"], "kind": body["kind"], "metadata": body["metadata"]}
    return kopf.Body(raw)


async def check_budget(op: Operator, tenant: str, now: datetime | None = None) -> Decision:
    """Compare the Tenant's spend this month with its budget and send the warnings due (see the
    module's docstring for the order of the writes). Returns what was decided."""
    now = now or datetime.now(UTC)
    live = await op.kube.get("Tenant", tenant)
    if live is None or live["metadata"].get("deletionTimestamp"):
        return Decision()
    async with op.db.connect() as conn:
        row = (await conn.execute(budget_query(tenant, now))).one()
    status = budget_status(row.spend_usd, row.limit_usd, tenant=tenant, now=now)
    op.metrics.set_budget_used(tenant, status.share_used)
    month = month_of(now)
    decision = decide(month, status.share_used, Notified.of_status(live.get("status")))
    if decision.record is None:
        return decision
    events = [_audit_event(tenant, threshold, status, month, now) for threshold in decision.warn]
    try:
        async with op.db.begin() as conn:
            await conn.run_sync(audit.append, events)
            patched = await op.kube.patch_status(
                "Tenant", tenant, None, {"budget": decision.record.as_status()},
                resource_version=live["metadata"]["resourceVersion"],
            )  # fmt: skip
            if patched is None:
                raise _Gone
    except _Gone:
        return Decision()
    except KubeError as exc:
        if exc.status != 409:
            raise
        log.info("tenant %s changed while its budget was checked; checking again at the next tick", tenant)
        return Decision()
    for threshold in decision.warn:
        message = warning_message(threshold, status, month)
        kopf.event(_kopf_body(live), type="Warning", reason=REASONS[threshold], message=message)
        op.metrics.budget_warnings.labels(tenant, str(threshold)).inc()
        log.warning(message)
    return decision


async def prune_audit(db: AsyncEngine, retention_days: int, now: datetime | None = None) -> int:
    """Remove the audit records written more than `retention_days` before `now` (0: none, ever);
    how many went. Each tenant's chain loses only its beginning and still verifies."""
    if retention_days <= 0:
        return 0
    older_than = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    async with db.begin() as conn:
        return await conn.run_sync(audit.prune, older_than)
