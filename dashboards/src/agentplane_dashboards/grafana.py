"""Grafana dashboards of the platform, built with grafana-foundation-sdk: the overview, tenant usage
and cost, one agent in detail, the SLOs and their error budgets, and the operator.

Panels query the runtime's and the operator's own metrics (`/metrics`) and the SLO recording rules
(`names`); `build_dashboards` returns each dashboard as the SDK's JSON encoder writes it, which
`agentplane-dashboards generate` stores under `dashboards/grafana/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .grafana_operator import operator
from .grafana_runtime import agent_detail, overview
from .grafana_slos import slo_dashboard
from .grafana_usage import tenant_usage
from .slo import ServiceSLO


def build_dashboards(slos: Sequence[ServiceSLO]) -> dict[str, dict[str, Any]]:
    """File name (e.g. "agentplane-overview.json") -> the dashboard as JSON-able dict (what the SDK's
    JSON encoder produces for the built Dashboard model)."""
    return {
        "agentplane-overview.json": overview(),
        "agentplane-tenant-usage.json": tenant_usage(),
        "agentplane-agent.json": agent_detail(),
        "agentplane-slos.json": slo_dashboard(slos),
        "agentplane-operator.json": operator(),
    }


__all__ = ["build_dashboards"]
