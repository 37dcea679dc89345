"""Prometheus rules from SLO definitions: error ratios over every window, the error budget left, and
multi-window multi-burn-rate alerts (the Google SRE workbook's scheme, Sloth's names).

For each SLO, one file of plain `groups:` (what `promtool check rules` and Prometheus load; infra
wraps each in a PrometheusRule):

- `agentplane-slo-<name>`: `slo:sli_error:ratio_rate<w>` for 5m, 30m, 1h, 2h and 6h, at the
  evaluation interval Prometheus is configured with;
- `agentplane-slo-<name>-long`: 1d, 3d and the SLO window (`slo:sli_error:ratio_rate_window`), the
  window's event rate, the objective, the error budget and the share of it left, every 5 minutes
  (a 30-day range is costly to read every 30 s, and moves slowly);
- `agentplane-slo-<name>-alerts`: the page (14.4x over 1h and 5m, or 6x over 6h and 30m) and the
  ticket (3x over 1d and 2h, or 1x over 3d and 6h).

`scale` shrinks every window, interval and `for` alike while keeping the rule names, so a test can
watch the same rules fire in seconds on a real Prometheus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import names
from .slo import PAGE_BURNS, TICKET_BURNS, WINDOW, LatencySLI, ServiceSLO, duration_seconds, format_duration

SHORT_WINDOWS = ("5m", "30m", "1h", "2h", "6h")
LONG_WINDOWS = ("1d", "3d")
LONG_INTERVAL = "5m"


def _le(threshold: float) -> str:
    """A bucket boundary as client libraries write `le` (Go's float formatting: 8 -> "8.0")."""
    return repr(float(threshold))


def _matchers(selector: str, *extra: str) -> str:
    inner = selector.strip()[1:-1].strip().rstrip(",") if selector.strip() else ""
    parts = [p for p in (inner, *extra) if p]
    return "{" + ", ".join(parts) + "}" if parts else ""


def _sum(by: Sequence[str], expr: str) -> str:
    return f"sum by ({', '.join(by)}) ({expr})" if by else f"sum({expr})"


def sli_queries(s: ServiceSLO) -> tuple[str, str]:
    """The SLI's (errors, total) rates, each with `{{window}}` for the range."""
    sli = s.slo.sli
    if sli.events is not None:
        return sli.events.errors, sli.events.total
    latency: LatencySLI | None = sli.latency
    assert latency is not None  # the model holds exactly one
    by = s.slo.by
    count = _sum(by, f"rate({latency.histogram}_count{_matchers(latency.selector)}[{WINDOW}])")
    le = f'le="{_le(latency.threshold)}"'
    good = _sum(by, f"rate({latency.histogram}_bucket{_matchers(latency.selector, le)}[{WINDOW}])")
    return f"{count} - {good}", count


def error_ratio_expr(s: ServiceSLO, window: str) -> str:
    """Bad events over all events in `window`. A window with events but no bad ones is 0 (the error
    query returns nothing then, which would otherwise leave no ratio at all); one without events has
    no ratio."""
    errors, total = (q.replace(WINDOW, window) for q in sli_queries(s))
    return f"(\n  ({errors})\n  or\n  ({total}) * 0\n)\n/\n({total})"


def _selector(s: ServiceSLO) -> str:
    return f'{{{names.SLO_LABEL}="{s.name}", {names.SERVICE_LABEL}="{s.service}"}}'


def _identity(s: ServiceSLO) -> dict[str, str]:
    return {names.SERVICE_LABEL: s.service, names.SLO_LABEL: s.name}


class _Scale:
    def __init__(self, scale: float) -> None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale {scale} is not in (0, 1]")
        self.scale = scale

    def __call__(self, window: str) -> str:
        return format_duration(duration_seconds(window) * self.scale)


def _alert(s: ServiceSLO, severity: str, burns: Sequence[tuple[float, str, str]]) -> dict[str, Any]:
    slo = s.slo
    budget = slo.error_budget
    sel = _selector(s)
    conditions = []
    for burn, long, short in burns:
        threshold = f"({burn:g} * {budget:g})"
        conditions.append(
            f"(\n  {names.error_ratio(long)}{sel} > {threshold}\n  and\n"
            f"  {names.error_ratio(short)}{sel} > {threshold}\n)"
        )
    tuned = slo.alerting.page if severity == "page" else slo.alerting.ticket
    long_pair = " or ".join(f"{burn:g}x over {long} and {short}" for burn, long, short in burns)
    annotations = {
        "summary": f"{slo.name}: error budget burning",
        "description": (
            f"{slo.description.strip()} Objective {slo.objective:g}% over {slo.window}; the error "
            f"budget burns at {long_pair} ({severity})."
        ),
        **slo.alerting.annotations,
        **tuned.annotations,
        "runbook_url": slo.alerting.runbook,
    }
    return {
        "alert": slo.alerting.name,
        "expr": "\nor\n".join(conditions),
        "for": tuned.for_,
        "labels": {
            **s.labels,
            **slo.alerting.labels,
            **tuned.labels,
            names.SEVERITY_LABEL: severity,
            **_identity(s),
        },
        "annotations": annotations,
    }


def rule_groups(s: ServiceSLO, scale: float = 1.0) -> list[dict[str, Any]]:
    """The rule groups of one SLO."""
    at = _Scale(scale)
    slo = s.slo
    ident = _identity(s)

    def ratio(window: str, record: str) -> dict[str, Any]:
        return {"record": record, "expr": error_ratio_expr(s, at(window)), "labels": ident}

    total = sli_queries(s)[1].replace(WINDOW, at(slo.window))
    sel = _selector(s)
    short: dict[str, Any] = {
        "name": f"agentplane-slo-{s.name}",
        "rules": [ratio(w, names.error_ratio(w)) for w in SHORT_WINDOWS],
    }
    long: dict[str, Any] = {
        "name": f"agentplane-slo-{s.name}-long",
        "interval": at(LONG_INTERVAL),
        "rules": [
            *(ratio(w, names.error_ratio(w)) for w in LONG_WINDOWS),
            ratio(slo.window, names.window_ratio()),
            {"record": names.PERIOD_TOTAL, "expr": total, "labels": ident},
            {"record": names.OBJECTIVE, "expr": f"vector({slo.objective_ratio:g})", "labels": ident},
            {"record": names.ERROR_BUDGET, "expr": f"vector({slo.error_budget:g})", "labels": ident},
            {
                "record": names.BUDGET_REMAINING,
                "expr": f"1 - {names.window_ratio()}{sel} / {slo.error_budget:g}",
                "labels": ident,
            },
        ],
    }
    alerts: dict[str, Any] = {
        "name": f"agentplane-slo-{s.name}-alerts",
        "rules": [_alert(s, "page", PAGE_BURNS), _alert(s, "ticket", TICKET_BURNS)],
    }
    for rule in alerts["rules"]:
        # the alerts read the recorded ratios by name, which keep their nominal windows
        rule["for"] = at(rule["for"])
    return [short, long, alerts]


def rule_files(slos: Sequence[ServiceSLO], scale: float = 1.0) -> dict[str, dict[str, Any]]:
    """File name (`agent-availability.yaml`) -> its `groups:` document."""
    return {f"{s.name}.yaml": {"groups": rule_groups(s, scale)} for s in slos}
