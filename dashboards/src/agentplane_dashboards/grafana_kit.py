"""The building blocks of the generated Grafana dashboards: PromQL helpers, the template variables,
panels on grafana-foundation-sdk's builders, and a board that lays them out on the 24-column grid.

Every panel and query reads the Prometheus data source the `datasource` variable picks; every
query filters with the dashboard's variables (`tenant=~"$tenant"`), whose "All" is `.*`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, statetimeline, text
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import text as text_model

TAGS = ["agentplane"]
COLUMNS = 24
RATE = "$__rate_interval"
"""The range of rates in time series: at least four scrape intervals, Grafana's advice."""
RANGE = "$__range"
"""The dashboard's (or a panel's relative) time range: for sums over what is on screen."""

TENANT = 'tenant=~"$tenant"'
AGENT = 'agent=~"$agent"'
MODEL = 'model=~"$model"'
KIND = 'kind=~"$kind"'
RUNTIME = "agentplane_usage_buffered"
"""A series every runtime process exposes from its start, and no other: `and on (job, instance)`
with it keeps the runtime's process metrics."""
OPERATOR = "agentplane_operator_reconcile_total"
"""A series the operator exposes from its first reconcile: the same for the operator."""

QUANTILES = (0.5, 0.95, 0.99)

REQUESTS = "agentplane_requests_total"
LATENCY = "agentplane_request_duration_seconds"
TTFT = "agentplane_time_to_first_token_seconds"
OVERHEAD = "agentplane_overhead_seconds"
TOKENS = "agentplane_tokens_total"
COST = "agentplane_cost_usd_total"
ERRORS = "agentplane_errors_total"
ACTIVE = "agentplane_active_requests"
SERVER_ERROR = 'status="server_error"'
RATE_LIMITED = 'status="rate_limited"'


def datasource() -> dm.DataSourceRef:
    return dm.DataSourceRef(type_val="prometheus", uid="${datasource}")


# -- PromQL ---------------------------------------------------------------------------------------


def sel(*matchers: str) -> str:
    """A selector's braces (`{a="b", c=~"$d"}`), empty without matchers."""
    return "{" + ", ".join(matchers) + "}" if matchers else ""


def rate(metric: str, *matchers: str, window: str = RATE) -> str:
    return f"rate({metric}{sel(*matchers)}[{window}])"


def increase(metric: str, *matchers: str, window: str = RANGE) -> str:
    return f"increase({metric}{sel(*matchers)}[{window}])"


def sum_by(labels: Sequence[str], expr: str) -> str:
    return f"sum by ({', '.join(labels)}) ({expr})" if labels else f"sum({expr})"


def quantile(q: float, histogram: str, *matchers: str, by: Sequence[str] = (), window: str = RATE) -> str:
    """The `q` quantile of a histogram (its name without `_bucket`), per `by`."""
    return f"histogram_quantile({q}, {sum_by((*by, 'le'), rate(f'{histogram}_bucket', *matchers, window=window))})"


def legend(labels: Sequence[str], suffix: str = "") -> str:
    """A legend of label values (`{{tenant}}/{{agent}}`), with a suffix (`p95`)."""
    names = "/".join(f"{{{{{label}}}}}" for label in labels)
    return f"{names} {suffix}".strip() if names else suffix


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str
    instant: bool = False
    """An instant query (stats and bars of a sum over the range); a range query otherwise."""


def percentiles(
    histogram: str, *matchers: str, by: Sequence[str] = (), window: str = RATE, instant: bool = False
) -> list[Query]:
    """p50, p95 and p99 of a histogram."""
    return [
        Query(
            quantile(q, histogram, *matchers, by=by, window=window), legend(by, f"p{round(q * 100)}"), instant
        )
        for q in QUANTILES
    ]


# -- template variables ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    label: str
    query: str
    description: str


VARIABLES = {
    v.name: v
    for v in (
        Variable(
            "tenant",
            "Tenant",
            "label_values(agentplane_requests_total, tenant)",
            "Tenants that sent chat requests",
        ),
        Variable(
            "agent",
            "Agent",
            'label_values(agentplane_requests_total{tenant=~"$tenant"}, agent)',
            "Agents of the chosen tenants",
        ),
        Variable(
            "model",
            "Model",
            'label_values(agentplane_requests_total{tenant=~"$tenant", agent=~"$agent"}, model)',
            "Models that answered the chosen agents (primaries and fallbacks)",
        ),
        Variable(
            "kind",
            "Kind",
            "label_values(agentplane_operator_reconcile_total, kind)",
            "Kinds of objects the operator reconciles",
        ),
    )
}


def _variable(v: Variable) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(v.name)
        .label(v.label)
        .description(v.description)
        .query(v.query)
        .datasource(datasource())
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


# -- panels ---------------------------------------------------------------------------------------

Steps = Sequence[tuple[float | None, str]]
"""Threshold steps: (from value, color), the first from None (minus infinity)."""
GOOD = "green"
WARN = "orange"
BAD = "red"


class _Panel(Protocol):
    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: dm.DataSourceRef) -> Self: ...
    def with_target(self, target: Builder[Dataquery]) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def links(self, links: list[Builder[dm.DashboardLink]]) -> Self: ...
    def thresholds(self, thresholds: Builder[dm.ThresholdsConfig]) -> Self: ...
    def build(self) -> dm.Panel: ...


P = TypeVar("P", bound=_Panel)


def thresholds(steps: Steps) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def link(title: str, url: str) -> dashboard.DashboardLink:
    return dashboard.DashboardLink(title).type(dm.DashboardLinkType.LINK).url(url).target_blank(True)


def _common(
    panel: P,
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    steps: Steps | None,
    links: Sequence[str],
) -> P:
    panel = panel.title(title).description(description).datasource(datasource()).unit(unit)
    for index, q in enumerate(queries):
        target = prometheus.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + index))
        target = target.datasource(datasource())
        panel = panel.with_target(target.instant() if q.instant else target.range())
    if steps is not None:
        panel = panel.thresholds(thresholds(steps))
    if links:
        panel = panel.links([link("Runbook", url) for url in links])
    return panel


def timeseries(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    stack: bool = False,
    lines: Steps | None = None,
    minimum: float | None = None,
    links: Sequence[str] = (),
) -> ts.Panel:
    """Series over time; `lines` draws thresholds as dashed lines (objectives, burn rates)."""
    panel = _common(ts.Panel(), title, description, unit, queries, lines, links)
    panel = panel.fill_opacity(10).show_points(cm.VisibilityMode.NEVER).span_nulls(False)
    panel = panel.legend(
        common.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.LIST)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
    )
    panel = panel.tooltip(
        common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
    )
    if stack:
        panel = panel.stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(40)
    if lines is not None:
        panel = panel.thresholds_style(
            common.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)
        )
    if minimum is not None:
        panel = panel.min(minimum)
    return panel


def single(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    steps: Steps | None = None,
    decimals: int | None = None,
    links: Sequence[str] = (),
) -> stat.Panel:
    """The last value of each query as a big number, coloured by `steps`."""
    panel = _common(stat.Panel(), title, description, unit, queries, steps, links)
    panel = panel.reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    panel = panel.graph_mode(cm.BigValueGraphMode.NONE).color_mode(
        cm.BigValueColorMode.VALUE if steps is not None else cm.BigValueColorMode.NONE
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def bars(
    title: str,
    description: str,
    unit: str,
    query: Query,
    *,
    steps: Steps | None = None,
    maximum: float | None = None,
) -> bargauge.Panel:
    """One horizontal bar per series of an instant query (top-k lists)."""
    panel = _common(bargauge.Panel(), title, description, unit, [query], steps, ())
    panel = panel.orientation(cm.VizOrientation.HORIZONTAL).display_mode(cm.BarGaugeDisplayMode.BASIC)
    panel = panel.reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    panel = panel.min(0)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def states(
    title: str, description: str, query: Query, values: Sequence[tuple[int, str, str]]
) -> statetimeline.Panel:
    """A state per series over time; `values` are (value, text, color)."""
    panel = _common(statetimeline.Panel(), title, description, "short", [query], None, ())
    mapping = dm.ValueMap(
        options={
            str(value): dm.ValueMappingResult(text=label, color=color, index=index)
            for index, (value, label, color) in enumerate(values)
        }
    )
    return panel.mappings([mapping]).show_value(cm.VisibilityMode.AUTO).merge_values(True).fill_opacity(80)


def note(title: str, description: str, markdown: str) -> text.Panel:
    """A markdown text panel (no query)."""
    return (
        text.Panel()
        .title(title)
        .description(description)
        .mode(text_model.TextMode.MARKDOWN)
        .content(markdown)
    )


def process_panels(who: str, series: str) -> list[ts.Panel]:
    """CPU and resident memory of the processes that expose `series` (the runtime's or the operator's)."""
    cpu = timeseries(
        f"{who} CPU (cores)",
        f"CPU seconds per second of each {who.lower()} process. Near its CPU limit it is throttled and "
        "every latency grows: add replicas or raise the limit.",
        "short",
        [Query(f"{rate('process_cpu_seconds_total')} and on (job, instance) {series}", "{{instance}}")],
        minimum=0,
    )
    memory = timeseries(
        f"{who} resident memory",
        f"Resident memory of each {who.lower()} process. Growing without bound is a leak; near the "
        "memory limit the pod is OOM-killed: raise the limit or find what holds memory.",
        "bytes",
        [Query(f"process_resident_memory_bytes and on (job, instance) {series}", "{{instance}}")],
        minimum=0,
    )
    return [cpu, memory]


# -- the board ------------------------------------------------------------------------------------


class Board:
    """A dashboard whose panels come row by row, each line of panels filling the 24 columns."""

    def __init__(self, uid: str, title: str, description: str, variables: Sequence[str]) -> None:
        builder = (
            dashboard.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(TAGS)
            .timezone("browser")
            .time("now-6h", "now")
            .refresh("1m")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(
                dashboard.DashboardLink("agentplane")
                .type(dm.DashboardLinkType.DASHBOARDS)
                .tags(TAGS)
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .with_variable(
                dashboard.DatasourceVariable("datasource")
                .label("Data source")
                .description("The Prometheus that scrapes agentplane")
                .type("prometheus")
            )
        )
        for name in variables:
            builder = builder.with_variable(_variable(VARIABLES[name]))
        self._builder = builder
        self._panels: list[dm.Panel | dm.RowPanel] = []
        self._y = 0

    def _next_id(self) -> int:
        return len(self._panels) + 1

    def row(self, title: str) -> None:
        row = dashboard.Row(title).id(self._next_id()).grid_pos(dm.GridPos(h=1, w=COLUMNS, x=0, y=self._y))
        self._panels.append(row.build())
        self._y += 1

    def line(self, *cells: tuple[int, Builder[dm.Panel]], height: int = 8) -> None:
        """Panels side by side, left to right: (width, panel)."""
        widths = [w for w, _ in cells]
        if sum(widths) != COLUMNS:
            raise ValueError(f"a line of panels must fill {COLUMNS} columns, not {widths}")
        x = 0
        for width, builder in cells:
            panel = builder.build()
            panel.id_val = self._next_id()
            panel.grid_pos = dm.GridPos(h=height, w=width, x=x, y=self._y)
            self._panels.append(panel)
            x += width
        self._y += height

    def build(self) -> dict[str, Any]:
        """The dashboard as the SDK's JSON encoder writes it."""
        model = self._builder.build()
        model.panels = list(self._panels)
        encoded: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
        return encoded
