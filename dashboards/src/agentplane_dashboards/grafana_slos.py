"""The SLO dashboard: a summary of every error budget, then one row per SLO with its SLI, budget left
and burn rates, all read from the recording rules of `rules.py` (names in `names`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import names
from .grafana_kit import (
    AGENT,
    BAD,
    GOOD,
    TENANT,
    WARN,
    Board,
    Query,
    Steps,
    bars,
    legend,
    note,
    sel,
    single,
    timeseries,
)
from .slo import PAGE_BURNS, TICKET_BURNS, ServiceSLO

FILTERS = {"tenant": TENANT, "agent": AGENT}
"""The dashboard's variables, applied to the SLOs whose `by` has their label."""
BURN_WINDOWS = ("5m", "1h", "6h", "3d")
"""The burn-rate alerts' windows: the page's 5m and 1h (and 6h), the ticket's 3d."""
BURN_STEPS: Steps = [(None, GOOD), (1, "yellow"), (3, WARN), (6, BAD), (14.4, "dark-red")]
"""1x spends the budget in exactly the window; 3x and 1x over 1d/3d ticket; 14.4x and 6x page."""
BUDGET_STEPS: Steps = [(None, BAD), (0, WARN), (0.25, GOOD)]


def _burns(burns: Sequence[tuple[float, str, str]]) -> str:
    return " or ".join(f"{burn:g}x over {long} and {short}" for burn, long, short in burns)


def _about(s: ServiceSLO) -> str:
    slo = s.slo
    per = ", ".join(slo.by) if slo.by else "the whole service"
    return "\n".join(
        [
            slo.description.strip(),
            "",
            "| | |",
            "|---|---|",
            f"| Service | `{s.service}` |",
            f"| Objective | {slo.objective:g}% of events good over {slo.window} |",
            f"| Error budget | {slo.error_budget * 100:g}% of events |",
            f"| Per | {per} |",
            f"| Page | `{slo.alerting.name}` at {_burns(PAGE_BURNS)} |",
            f"| Ticket | `{slo.alerting.name}` at {_burns(TICKET_BURNS)} |",
            "",
            f"[Runbook]({slo.alerting.runbook})",
        ]
    )


def _slo_rows(board: Board, s: ServiceSLO) -> None:
    slo = s.slo
    objective = slo.objective_ratio
    matchers = (
        f'{names.SLO_LABEL}="{s.name}"',
        f'{names.SERVICE_LABEL}="{s.service}"',
        *(FILTERS[label] for label in slo.by if label in FILTERS),
    )
    series = sel(*matchers)
    runbook = [slo.alerting.runbook]
    board.row(f"{s.name}: {slo.objective:g}% over {slo.window}")
    board.line(
        (
            8,
            note(
                f"{s.name}: what it measures",
                f"The {s.name} SLO of {s.service}, its objective, alerts and runbook.",
                _about(s),
            ),
        ),
        (
            6,
            single(
                "SLI now (worst)",
                f"Share of good events over the last 5 minutes and the last hour, for the worst of "
                f"{', '.join(slo.by) or 'the service'}. Red below the objective ({slo.objective:g}%): "
                "the error budget burns; follow the runbook.",
                "percentunit",
                [Query(f"1 - max({names.error_ratio(w)}{series})", w, instant=True) for w in ("5m", "1h")],
                steps=[(None, BAD), (objective, GOOD)],
                decimals=2,
                links=runbook,
            ),
        ),
        (
            5,
            single(
                f"Error budget left ({slo.window})",
                f"Share of the {slo.window} error budget left, for the worst series; below 0 the "
                "objective is missed for the window. Low: slow down risky changes and follow the runbook.",
                "percentunit",
                [Query(f"min({names.BUDGET_REMAINING}{series})", "left", instant=True)],
                steps=BUDGET_STEPS,
                decimals=1,
                links=runbook,
            ),
        ),
        (
            5,
            single(
                f"Events per second ({slo.window})",
                f"Events the SLI counts, per second over {slo.window}. Zero or no data: the SLO has no "
                "traffic to judge, and its budget and burn rates mean nothing.",
                "short",
                [Query(f"sum({names.PERIOD_TOTAL}{series})", "events/s", instant=True)],
                links=runbook,
            ),
        ),
        height=7,
    )
    board.line(
        (
            12,
            timeseries(
                "SLI",
                f"Share of good events over 5 minutes and 1 hour, per {', '.join(slo.by) or 'service'}; "
                f"the dashed line is the objective ({slo.objective:g}%). Below it the budget burns.",
                "percentunit",
                [
                    Query(f"1 - {names.error_ratio(w)}{series}", legend(slo.by, w) if slo.by else w)
                    for w in ("5m", "1h")
                ],
                lines=[(None, BAD), (objective, GOOD)],
                links=runbook,
            ),
        ),
        (
            12,
            timeseries(
                "Burn rate",
                f"Error ratio over 5m, 1h, 6h and 3d divided by the error budget ({slo.error_budget:g}), "
                "worst series: 1x spends the budget in exactly the SLO window. Dashed lines: the "
                "alerts' thresholds (page at 14.4x over 1h and 6x over 6h, ticket at 3x and 1x).",
                "short",
                [
                    Query(f"max({names.error_ratio(w)}{series}) / {slo.error_budget:g}", w)
                    for w in BURN_WINDOWS
                ],
                lines=BURN_STEPS,
                minimum=0,
                links=runbook,
            ),
        ),
    )


def slo_dashboard(slos: Sequence[ServiceSLO]) -> dict[str, Any]:
    board = Board(
        "agentplane-slos",
        "agentplane / SLOs",
        "Every SLO of dashboards/slos: SLIs, error budgets left and burn rates, with their runbooks",
        ["tenant", "agent"],
    )
    board.row("Error budgets")
    board.line(
        (
            12,
            bars(
                "Error budget left by SLO",
                "Share of each SLO's error budget left over its window, worst series (every tenant and "
                "agent). Below 0 the objective is missed: its row below links the runbook.",
                "percentunit",
                Query(
                    f"min by ({names.SERVICE_LABEL}, {names.SLO_LABEL}) ({names.BUDGET_REMAINING})",
                    "{{slo}}",
                    True,
                ),
                steps=BUDGET_STEPS,
                maximum=1,
            ),
        ),
        (
            12,
            bars(
                "Burn rate over 1h by SLO",
                "Each SLO's error ratio over the last hour divided by its error budget, worst series "
                "(every tenant and agent). Above 14.4x (with 5m) it pages.",
                "short",
                Query(
                    f"max by ({names.SERVICE_LABEL}, {names.SLO_LABEL}) ({names.error_ratio('1h')} "
                    f"/ on ({names.SERVICE_LABEL}, {names.SLO_LABEL}) group_left {names.ERROR_BUDGET})",
                    "{{slo}}",
                    True,
                ),
                steps=BURN_STEPS,
            ),
        ),
    )
    for s in slos:
        _slo_rows(board, s)
    return board.build()
