"""Benchmark: the cost of one audit `append` (a batch of 1 and of 100 records) on PostgreSQL, as the
runtime calls it (asyncpg, `AsyncConnection.run_sync`, one transaction per batch), and of `verify`
over the chain that makes.

Run: uv run python loadtests/bench_audit.py [--rounds N] [--database-url URL]
Without --database-url it starts a private PostgreSQL (tests/support/services.py). Prints the median
and 95th percentile wall-clock time per append and per record.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from agentplane_platform import audit
from agentplane_platform.audit import AuditAction, AuditEvent
from agentplane_platform.db import create_engine, migrate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.services import create_database, start_postgres  # noqa: E402


def _events(tenant: str, count: int) -> list[AuditEvent]:
    now = datetime.now(UTC)
    return [
        AuditEvent(
            tenant=tenant,
            action=AuditAction.TOOL_CALLED,
            at=now,
            actor_subject="user@acme.example",
            actor_key_id="0123456789abcdef",
            actor_auth="api-key",
            source="10.0.0.7",
            agent="support-bot",
            target="tool:search",
            request_id=f"req-{i}",
            details={"duration_ms": 12.5, "outcome": "ok"},
        )
        for i in range(count)
    ]


async def _bench(url: str, rounds: int) -> None:
    engine = create_engine(url, pool_size=2)
    try:
        await migrate(engine)
        for size in (1, 100):
            tenant = f"bench-{size}"
            timings = []
            for _ in range(rounds + 5):
                batch = _events(tenant, size)
                started = time.perf_counter()
                async with engine.begin() as connection:
                    await connection.run_sync(audit.append, batch)
                timings.append(time.perf_counter() - started)
            timings = sorted(timings[5:])  # the first few warm the pool and the statement cache
            median, p95 = statistics.median(timings), timings[int(len(timings) * 0.95) - 1]
            print(
                f"append, batch of {size:>3}: median {median * 1000:7.2f} ms, p95 {p95 * 1000:7.2f} ms "
                f"per append; {median / size * 1000:6.3f} ms per record ({rounds} appends)"
            )
        async with engine.connect() as connection:
            started = time.perf_counter()
            reports = await connection.run_sync(audit.verify, "bench-100")
            took = time.perf_counter() - started
        print(f"verify: {reports[0].records} records in {took * 1000:.0f} ms, ok={reports[0].ok}")
    finally:
        await engine.dispose()


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    options.add_argument("--rounds", type=int, default=200)
    options.add_argument("--database-url", help="an empty PostgreSQL database (default: start one)")
    args = options.parse_args()
    if args.database_url:
        asyncio.run(_bench(args.database_url, args.rounds))
        return
    with tempfile.TemporaryDirectory() as work:
        postgres = start_postgres(Path(work) / "pg")
        try:
            asyncio.run(_bench(create_database(postgres, "bench_audit"), args.rounds))
        finally:
            postgres.stop()


if __name__ == "__main__":
    main()
