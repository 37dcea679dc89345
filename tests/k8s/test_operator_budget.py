"""Budget warnings from the real operator: usage rows in PostgreSQL reach 80 % and then 100 % of a
Tenant's monthly budget, and the Tenant gets one Warning Event for each, its `status.budget`, the
metric and an audit record that verifies — once, across an operator restart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from k8s.operator_specs import tenant
from sqlalchemy import insert, select

from agentplane_platform import audit
from agentplane_platform.db.models import AuditRecord, UsageRecord
from support.cluster import Cluster
from support.operator_process import (
    OperatorProcess,
    apply,
    condition,
    delete_tenants,
    events,
    get,
    install_operator_rbac,
    start_operator,
)
from support.services import Server, create_database
from support.waiting import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.postgres, pytest.mark.redis]

TENANT = "budgeta"
BUDGET_USD = 2.0


class Stores:
    def __init__(self, database_url: str, redis_url: str) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.engine = sqlalchemy.create_engine(
            database_url.replace("postgresql://", "postgresql+psycopg://", 1), pool_pre_ping=True
        )

    def spend(self, cost_usd: float) -> None:
        """One metered request of the tenant, now, as the runtime writes it."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(UsageRecord).values(
                    id=uuid.uuid4().hex, request_id=uuid.uuid4().hex, tenant=TENANT, agent="bot",
                    api_key_id=None, subject=None, model="openai/gpt-4o-mini", prompt_tokens=100,
                    completion_tokens=50, cost_usd=cost_usd, latency_ms=12.0, ttft_ms=None, status="ok",
                    http_status=200, error_type=None, stream=False, tool_calls=0, llm_calls=1,
                    created_at=datetime.now(UTC),
                )
            )  # fmt: skip


@pytest.fixture(scope="module")
def stores(postgres: Server, redis_server: Server) -> Iterator[Stores]:
    found = Stores(create_database(postgres, "operator_budget"), redis_server.url.rsplit("/", 1)[0] + "/6")
    yield found
    found.engine.dispose()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-budget")


def _start(k8s: Cluster, stores: Stores, workdir: Path) -> OperatorProcess:
    return start_operator(
        k8s, workdir / "operator.kubeconfig", workdir, redis_url=stores.redis_url,
        database_url=stores.database_url, qdrant_path=workdir / "qdrant",
        extra_env={"AGENTPLANE_OPERATOR_BUDGET_CHECK_SECONDS": "1"},
    )  # fmt: skip


def _warnings(k8s: Cluster) -> list[tuple[str, str]]:
    """(reason, message) of the budget Events on the Tenant (cluster-scoped: in `default`)."""
    return [(r, m) for t, r, m in events(k8s, "default", TENANT) if t == "Warning" and r.startswith("Budget")]


def _budget_status(k8s: Cluster) -> dict[str, Any] | None:
    found: dict[str, Any] | None = ((get(k8s, "tenant", TENANT) or {}).get("status") or {}).get("budget")
    return found


def _used(operator: OperatorProcess) -> float | None:
    samples = operator.metrics()
    return samples.get(("agentplane_tenant_budget_used_ratio", frozenset({("tenant", TENANT)})))


def test_the_tenant_is_warned_once_at_80_and_once_at_100_percent(
    k8s: Cluster, stores: Stores, workdir: Path
) -> None:
    install_operator_rbac(k8s, workdir)
    operator = _start(k8s, stores, workdir)
    try:
        delete_tenants(k8s, TENANT)
        spec = tenant(TENANT, quotas={"llm": {"monthlyBudgetUsd": BUDGET_USD}, "maxAgents": 1})
        apply(k8s, spec)
        wait_for(
            "the Tenant Ready (its budget recorded)",
            lambda: condition(get(k8s, "tenant", TENANT)).get("status") == "True",
            timeout=60,
        )
        month = datetime.now(UTC).strftime("%Y-%m")
        # under 80 %: checked (the share shows), nothing sent
        stores.spend(0.5)
        wait_for("the share used at 25 %", lambda: _used(operator) == pytest.approx(0.25), timeout=30)
        assert _warnings(k8s) == []
        assert _budget_status(k8s) is None  # nothing to record: no write

        stores.spend(1.2)  # 85 %
        wait_for(
            "a BudgetAt80Percent Event", lambda: _warnings(k8s) or None, timeout=30,
            context=lambda: operator.log_text()[-3000:],
        )  # fmt: skip
        wait_for(
            "status.budget", lambda: _budget_status(k8s) == {"month": month, "notified": [80]}, timeout=30
        )
        [(reason, message)] = _warnings(k8s)
        assert reason == "BudgetAt80Percent"
        assert f"$1.70 of its $2.00 budget for {month} (85 %)" in message
        assert (
            operator.total("agentplane_operator_budget_threshold_total", tenant=TENANT, threshold="80") == 1
        )

        # a restart: the new process reads what was sent from the status and sends nothing again
        operator.stop()
        operator = _start(k8s, stores, workdir)
        wait_for(
            "the restarted operator's first check", lambda: _used(operator) == pytest.approx(0.85), timeout=60,
            context=lambda: operator.log_text()[-3000:],
        )  # fmt: skip
        stores.spend(0.02)  # 86 %: a later check, still over 80 %, with 80 % already sent
        wait_for("a check at 86 %", lambda: _used(operator) == pytest.approx(0.86), timeout=30)
        assert [r for r, _ in _warnings(k8s)] == ["BudgetAt80Percent"]
        assert operator.total("agentplane_operator_budget_threshold_total", tenant=TENANT) == 0

        stores.spend(0.38)  # 105 %
        wait_for(
            "a BudgetExhausted Event",
            lambda: any(r == "BudgetExhausted" for r, _ in _warnings(k8s)),
            timeout=30,
        )
        wait_for(
            "status.budget with 100", lambda: _budget_status(k8s) == {"month": month, "notified": [80, 100]}
        )
        assert sorted(r for r, _ in _warnings(k8s)) == ["BudgetAt80Percent", "BudgetExhausted"]
        assert (
            operator.total("agentplane_operator_budget_threshold_total", tenant=TENANT, threshold="100") == 1
        )

        with stores.engine.connect() as conn:
            records = conn.execute(
                select(AuditRecord.action, AuditRecord.actor_subject, AuditRecord.details)
                .where(AuditRecord.tenant == TENANT)
                .order_by(AuditRecord.seq)
            ).all()
            [report] = audit.verify(conn, TENANT)
        assert [(a, s, d["threshold_percent"], d["month"]) for a, s, d in records] == [
            ("budget.threshold", "agentplane-operator", 80, month),
            ("budget.threshold", "agentplane-operator", 100, month),
        ]
        assert report.ok, report.problems
    finally:
        try:
            delete_tenants(k8s, TENANT)
        finally:
            operator.stop()
