"""The generated Grafana dashboards: the SDK's schema, the grid, variables, and queries that read only
metrics the runtime, the operator or the SLO rules export, in PromQL that promtool accepts."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from agentplane_dashboards import names
from agentplane_dashboards.cli import render_dashboard
from agentplane_dashboards.grafana import build_dashboards
from agentplane_dashboards.grafana_kit import Board, Query, single
from agentplane_dashboards.slo import ServiceSLO, load_slos
from agentplane_operator import metrics as operator_metrics
from agentplane_runtime.core import telemetry
from support.prometheus import promtool

DASHBOARDS = Path(__file__).resolve().parents[1]
UIDS = {
    "agentplane-overview.json": "agentplane-overview",
    "agentplane-tenant-usage.json": "agentplane-tenant-usage",
    "agentplane-agent.json": "agentplane-agent",
    "agentplane-slos.json": "agentplane-slos",
    "agentplane-operator.json": "agentplane-operator",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
UNITS = {"s", "reqps", "percentunit", "currencyUSD", "short", "bytes"}
FILTERS = {"tenant", "agent", "model", "kind"}
"""The query variables: multi-valued, `.*` for All, matched with `=~`."""
JSONBoard = dict[str, Any]


@pytest.fixture(scope="module")
def slos() -> list[ServiceSLO]:
    return load_slos(DASHBOARDS.joinpath("slos").glob("*.yaml"))


@pytest.fixture(scope="module")
def boards(slos: list[ServiceSLO]) -> dict[str, JSONBoard]:
    return build_dashboards(slos)


def panels(board: JSONBoard) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels of collapsed rows."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queried(board: JSONBoard) -> Iterator[dict[str, Any]]:
    return (p for p in panels(board) if p["type"] not in ("row", "text"))


def exprs(board: JSONBoard) -> list[str]:
    return [t["expr"] for p in queried(board) for t in p["targets"]]


def variables(board: JSONBoard) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = _LABEL_LISTS.sub(" ", expr)
    found = set()
    for token in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[token.end() :].lstrip().startswith("(") or token.group().lower() in _KEYWORDS:
            continue
        found.add(token.group())
    return found


def exported() -> set[str]:
    """Every series name the runtime's and the operator's registries can expose."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    found: set[str] = set()
    for registry in (telemetry.Metrics().registry, operator_metrics.Metrics().registry):
        for family in registry.collect():
            found |= {family.name + s for s in suffixes.get(family.type, ())}
            found |= {sample.name for sample in family.samples}
    return found


def recorded() -> set[str]:
    windows = {names.error_ratio(w) for w in names.ALERT_WINDOWS}
    return windows | {
        names.window_ratio(),
        names.BUDGET_REMAINING,
        names.OBJECTIVE,
        names.ERROR_BUDGET,
        names.PERIOD_TOTAL,
    }


def test_five_dashboards_with_stable_uids_titles_and_tags(boards: dict[str, JSONBoard]) -> None:
    assert {name: board["uid"] for name, board in boards.items()} == UIDS
    titles = [board["title"] for board in boards.values()]
    assert len(set(titles)) == 5
    assert all(t.startswith("agentplane / ") for t in titles)
    for board in boards.values():
        assert board["tags"] == ["agentplane"]
        assert board["description"]
        assert json.loads(render_dashboard(board)) == board


def test_dashboards_are_what_the_sdk_model_reads_and_writes(boards: dict[str, JSONBoard]) -> None:
    """Decoded into the SDK's Dashboard model (its panel and query plugins registered) and encoded
    again, each dashboard is unchanged: no field outside the schema, none the SDK would rewrite."""
    register_default_plugins()
    for name, board in boards.items():
        model = Dashboard.from_json(json.loads(render_dashboard(board)))
        assert json.loads(json.dumps(model, cls=JSONEncoder)) == board, name
    broken = json.loads(render_dashboard(boards["agentplane-overview.json"]))
    broken["panels"][1]["fieldConfig"]["defaults"]["colour"] = "red"
    assert json.loads(json.dumps(Dashboard.from_json(broken), cls=JSONEncoder)) != broken


def test_every_panel_reads_the_datasource_variable_and_says_what_it_shows(
    boards: dict[str, JSONBoard],
) -> None:
    for name, board in boards.items():
        ds = variables(board)["datasource"]
        assert (ds["type"], ds["query"]) == ("datasource", "prometheus"), name
        for panel in panels(board):
            if panel["type"] == "row":
                assert panel["title"]
                continue
            assert panel["title"], name
            assert panel["description"], (name, panel["title"])
            if panel["type"] == "text":
                assert panel["options"]["content"]
                continue
            where = (name, panel["title"])
            assert panel["datasource"] == DATASOURCE, where
            assert panel["fieldConfig"]["defaults"]["unit"] in UNITS, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                assert target["datasource"] == DATASOURCE, where
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), where


def test_panel_ids_are_unique_and_panels_tile_the_24_columns(boards: dict[str, JSONBoard]) -> None:
    for name, board in boards.items():
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), name
        boxes = []
        for panel in panels(board):
            g = panel["gridPos"]
            assert min(g["x"], g["y"]) >= 0, (name, panel["title"])
            assert min(g["w"], g["h"]) > 0, (name, panel["title"])
            assert g["x"] + g["w"] <= 24, (name, panel["title"])
            if panel["type"] == "row":
                assert (g["x"], g["w"], g["h"]) == (0, 24, 1)
            boxes.append((panel["title"], g))
        for (a, p), (b, q) in combinations(boxes, 2):
            apart = (
                p["x"] + p["w"] <= q["x"]
                or q["x"] + q["w"] <= p["x"]
                or p["y"] + p["h"] <= q["y"]
                or q["y"] + q["h"] <= p["y"]
            )
            assert apart, f"{name}: {a!r} overlaps {b!r}"
        assert board["panels"][0]["type"] == "row", name


def test_a_line_of_panels_must_fill_the_row() -> None:
    board = Board("x", "x", "x", [])
    with pytest.raises(ValueError, match="must fill 24 columns"):
        board.line((12, single("a", "a", "short", [Query("up", "up")])))


def test_every_variable_a_query_uses_is_defined_and_matched_as_a_regex(boards: dict[str, JSONBoard]) -> None:
    used = re.compile(r"\$\{?(\w+)")
    for name, board in boards.items():
        defined = variables(board)
        queries = [*exprs(board), *(v["query"] for v in defined.values() if v["type"] == "query")]
        for expr in queries:
            for variable in used.findall(expr):
                if variable.startswith("__"):
                    continue  # Grafana's own ($__rate_interval, $__range)
                assert variable in defined, f"{name}: ${variable} is not a variable of the dashboard: {expr}"
                assert f'=~"${variable}"' in expr, f"{name}: ${variable} must be matched with =~: {expr}"
        for variable in FILTERS & defined.keys():
            v = defined[variable]
            assert (v["multi"], v["includeAll"], v["allValue"]) == (True, True, ".*"), (name, variable)
            assert v["datasource"] == DATASOURCE
        if "model" in defined:
            assert '{tenant=~"$tenant", agent=~"$agent"}' in defined["model"]["query"]
            assert '{tenant=~"$tenant"}' in defined["agent"]["query"]
    assert set(variables(boards["agentplane-operator.json"])) == {"datasource", "kind"}


def test_rates_use_the_rate_interval_and_sums_over_the_range_use_the_range(
    boards: dict[str, JSONBoard],
) -> None:
    for name, board in boards.items():
        for panel in queried(board):
            for target in panel["targets"]:
                expr = target["expr"]
                ranges = set(re.findall(r"\[([^\]]+)\]", expr))
                if target.get("instant"):
                    assert ranges <= {"$__range"}, (name, panel["title"], expr)
                elif panel["type"] == "timeseries" and "slo:" not in expr:
                    assert ranges == {"$__rate_interval"} or not ranges, (name, panel["title"], expr)


def test_metric_names_are_found_in_queries() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (tenant, le) (rate(a_bucket{x="y{z}", le!=""}[$__rate_interval]))) '
        "/ on (job, instance) group_left b and on (job) max by (model) (slo:c:ratio) * 3600 or vector(0)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "slo:c:ratio"}


def test_every_metric_a_query_reads_is_exported_or_recorded(boards: dict[str, JSONBoard]) -> None:
    known = exported() | recorded()
    assert {"agentplane_requests_total", "agentplane_request_duration_seconds_bucket"} <= known
    assert {"agentplane_operator_reconcile_total", "process_cpu_seconds_total"} <= known
    for name, board in boards.items():
        read = {m for expr in exprs(board) for m in metric_names(expr)}
        assert read, name
        assert read <= known, f"{name} reads series nobody exports: {sorted(read - known)}"
        for v in variables(board).values():
            if v["type"] == "query":
                inner = re.fullmatch(r"label_values\((\w+)(\{.*\})?, (\w+)\)", v["query"])
                assert inner is not None, (name, v["query"])
                assert inner.group(1) in known, (name, v["query"])


def test_the_operator_dashboard_reads_no_tenant_and_no_namespace(boards: dict[str, JSONBoard]) -> None:
    for expr in exprs(boards["agentplane-operator.json"]):
        assert "tenant" not in expr, expr
        assert "namespace" not in expr, expr
    for expr in exprs(boards["agentplane-agent.json"]):
        if "agentplane_llm_attempts_total" in expr or "agentplane_circuit_state" in expr:
            # these have only `model`: the agent's runtimes are found through its requests
            assert (
                'agentplane_llm_attempts_total{model=~"$model"}' in expr
                or "agentplane_circuit_state{" in expr
            )
            assert 'group by (job, instance) (agentplane_requests_total{tenant=~"$tenant"' in expr


def test_the_slo_dashboard_has_a_row_per_slo_with_objective_budget_burns_and_runbook(
    boards: dict[str, JSONBoard], slos: list[ServiceSLO]
) -> None:
    board = boards["agentplane-slos.json"]
    rows: list[tuple[str, list[dict[str, Any]]]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            rows.append((panel["title"], []))
        else:
            rows[-1][1].append(panel)
    assert rows[0][0] == "Error budgets"
    assert [title.split(":")[0] for title, _ in rows[1:]] == [s.name for s in slos]
    for s, (title, row) in zip(slos, rows[1:], strict=True):
        slo = s.slo
        assert f"{slo.objective:g}% over {slo.window}" in title
        about = next(p for p in row if p["type"] == "text")["options"]["content"]
        assert f"[Runbook]({slo.alerting.runbook})" in about
        assert f"{slo.objective:g}% of events good" in about
        for panel in row:
            if panel["type"] != "text":
                assert [link["url"] for link in panel["links"]] == [slo.alerting.runbook], panel["title"]
        stat = next(p for p in row if p["title"] == "SLI now (worst)")
        steps = stat["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[1]["color"] == "green"
        assert steps[1]["value"] == slo.objective_ratio
        burn = next(p for p in row if p["title"] == "Burn rate")
        assert [t["legendFormat"] for t in burn["targets"]] == ["5m", "1h", "6h", "3d"]
        assert all(t["expr"].endswith(f"/ {slo.error_budget:g}") for t in burn["targets"])
        assert [st["value"] for st in burn["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
            None,
            1,
            3,
            6,
            14.4,
        ]
        texts = [t["expr"] for p in row if p["type"] != "text" for t in p["targets"]]
        assert any(names.BUDGET_REMAINING in e for e in texts)
        for expr in texts:
            assert f'slo="{s.name}", service="{s.service}"' in expr, expr
            assert ('tenant=~"$tenant"' in expr) == ("tenant" in slo.by), expr
            assert ('agent=~"$agent"' in expr) == ("agent" in slo.by), expr


def test_promtool_parses_every_query(boards: dict[str, JSONBoard], tmp_path: Path) -> None:
    """Each query, with Grafana's variables put in as Grafana would, as a recording rule for promtool."""
    values = {"$__rate_interval": "1m", "$__range": "1h", **{f"${v}": ".*" for v in FILTERS}}
    rules: list[dict[str, str]] = []
    for expr in (e for board in boards.values() for e in exprs(board)):
        for variable, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard_query_{len(rules)}", "expr": expr})
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout
