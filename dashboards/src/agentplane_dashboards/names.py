"""Names of the series the generated rules record: what dashboards and alerts query.

One recording rule name per window for every SLO (Sloth's convention), the SLO told apart by its
`slo` and `service` labels and split by the SLO's `by` labels (`tenant`, `agent`, ...):

    slo:sli_error:ratio_rate5m{service="agentplane-runtime", slo="agent-availability", tenant="acme", agent="support"}
"""

from __future__ import annotations

ALERT_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
"""The windows the burn-rate alerts read, shortest first; the SLO window is recorded besides."""

OBJECTIVE = "slo:objective:ratio"
"""The objective as a ratio (0.995), one series per SLO (labels `slo`, `service`)."""
ERROR_BUDGET = "slo:error_budget:ratio"
"""The error budget as a ratio (1 - objective), one series per SLO."""
BUDGET_REMAINING = "slo:error_budget_remaining:ratio"
"""Share of the window's error budget left: 1 - error ratio over the SLO window / error budget (may go
below 0 once the budget is spent), per SLO and `by` labels."""
PERIOD_TOTAL = "slo:sli_total:rate_window"
"""Events per second over the SLO window (requests, tool calls, ...): whether an SLO has traffic."""

SLO_LABEL = "slo"
SERVICE_LABEL = "service"
SEVERITY_LABEL = "severity"


def error_ratio(window: str) -> str:
    """The recording rule of the SLI's error ratio over `window` (`5m`, `1h`, `30d`)."""
    return f"slo:sli_error:ratio_rate{window}"


def window_ratio() -> str:
    """The error ratio over each SLO's own window (30d unless it says otherwise)."""
    return "slo:sli_error:ratio_rate_window"
