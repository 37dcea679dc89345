"""The operator's dashboard: reconciles, errors, queue, API writes, time to Ready, its process."""

from __future__ import annotations

from typing import Any

from .grafana_kit import (
    BAD,
    GOOD,
    KIND,
    OPERATOR,
    RANGE,
    WARN,
    Board,
    Query,
    increase,
    percentiles,
    process_panels,
    quantile,
    rate,
    sel,
    single,
    sum_by,
    timeseries,
)


def operator() -> dict[str, Any]:
    board = Board(
        "agentplane-operator",
        "agentplane / Operator",
        "The operator's reconciles, errors, queue, API writes and time to Ready of Agents",
        ["kind"],
    )
    reconciles = "agentplane_operator_reconcile_total"
    duration = "agentplane_operator_reconcile_duration_seconds"
    ready = "agentplane_operator_agent_ready_seconds"
    board.row("Reconciles")
    board.line(
        (
            12,
            timeseries(
                "Reconciles by kind and result",
                "Reconciles run per second by kind and result. Errors that persist leave objects behind "
                "their specs: see Reconcile errors by reason and the operator's logs.",
                "short",
                [Query(sum_by(("kind", "result"), rate(reconciles, KIND)), "{{kind}} {{result}}")],
                stack=True,
            ),
        ),
        (
            12,
            timeseries(
                "Reconciles by kind and cause",
                "Reconciles per second by what caused them (an event, a timer, a child's change). A "
                "storm of one cause is a loop: two writers fighting over a field.",
                "short",
                [Query(sum_by(("kind", "cause"), rate(reconciles, KIND)), "{{kind}} {{cause}}")],
                stack=True,
            ),
        ),
    )
    board.line(
        (
            12,
            timeseries(
                "Reconcile errors by kind and reason",
                "Reconciles that ended in a failing condition or an error, by reason. The reason says "
                "what to fix (an invalid spec, a missing Secret, the API server refusing a write).",
                "short",
                [
                    Query(
                        sum_by(("kind", "reason"), rate("agentplane_operator_reconcile_errors_total", KIND)),
                        "{{kind}} {{reason}}",
                    )
                ],
                stack=True,
            ),
        ),
        (
            12,
            timeseries(
                "Reconcile duration",
                "Time one reconcile took, p50/p95/p99. Seconds: the API server or a dependency "
                "(registry, Key Vault) is slow.",
                "s",
                percentiles(duration, KIND),
            ),
        ),
    )
    board.line(
        (
            8,
            timeseries(
                "p95 reconcile duration by kind",
                "95th percentile of reconcile duration per kind: which kind is slow.",
                "s",
                [Query(quantile(0.95, duration, KIND, by=("kind",)), "{{kind}}")],
            ),
        ),
        (
            8,
            timeseries(
                "Queue depth by kind",
                "Reconciles waiting for or holding their object's lock. Growing: reconciles are slower "
                "than changes arrive; see durations and errors.",
                "short",
                [Query(sum_by(("kind",), f"agentplane_operator_queue_depth{sel(KIND)}"), "{{kind}}")],
                minimum=0,
            ),
        ),
        (
            8,
            timeseries(
                "API writes by kind and verb",
                "Write requests the reconcilers send to the Kubernetes API. Writes with nothing "
                "changing mean reconciles are not idempotent (a field that differs on every run).",
                "short",
                [
                    Query(
                        sum_by(("kind", "verb"), rate("agentplane_operator_api_writes_total", KIND)),
                        "{{kind}} {{verb}}",
                    )
                ],
                stack=True,
            ),
        ),
    )
    board.row("Agents")
    board.line(
        (
            16,
            single(
                "Time to Ready over the range",
                "From the operator first seeing a new Agent generation to its Ready, p50/p95/p99 over "
                "the time range (image pull, rollout and probes included). Above 120 s: see the "
                "agent-ready SLO's runbook (image size, node capacity, failing probes).",
                "s",
                percentiles(ready, window=RANGE, instant=True),
                steps=[(None, GOOD), (60, WARN), (120, BAD)],
            ),
        ),
        (
            8,
            single(
                "Agent generations Ready over the range",
                "New Agent generations that became Ready over the time range.",
                "short",
                [Query(sum_by((), increase(f"{ready}_count")), "generations", instant=True)],
            ),
        ),
        height=5,
    )
    board.row("Process")
    board.line(*((12, panel) for panel in process_panels("Operator", OPERATOR)))
    return board.build()
