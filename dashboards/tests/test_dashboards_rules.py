"""The SLO definitions, the rules generated from them, and their promtool unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from agentplane_dashboards import names
from agentplane_dashboards.cli import generate, main, render_rules
from agentplane_dashboards.rules import rule_files
from agentplane_dashboards.slo import ServiceSLO, SLOError, load_slos
from agentplane_operator.metrics import READY_BUCKETS
from agentplane_runtime.core import telemetry
from support.prometheus import promtool

DASHBOARDS = Path(__file__).resolve().parents[1]
ROOT = DASHBOARDS.parent


@pytest.fixture(scope="module")
def slos() -> list[ServiceSLO]:
    return load_slos(DASHBOARDS.joinpath("slos").glob("*.yaml"))


def test_the_platform_ships_its_slos(slos: list[ServiceSLO]) -> None:
    assert {s.name for s in slos} == {
        "agent-availability",
        "chat-latency",
        "time-to-first-token",
        "platform-overhead",
        "tool-success",
        "retrieval-availability",
        "usage-durability",
        "operator-reconcile-success",
        "agent-ready",
    }
    per_agent = {s.name for s in slos if s.slo.by == ["tenant", "agent"]}
    assert {"agent-availability", "chat-latency", "tool-success", "retrieval-availability"} <= per_agent


def test_latency_thresholds_are_buckets_of_their_histograms(slos: list[ServiceSLO]) -> None:
    """A threshold between two buckets would match no `le` and the SLI would have no data."""
    buckets = {
        "agentplane_request_duration_seconds": telemetry.LATENCY_BUCKETS,
        "agentplane_time_to_first_token_seconds": telemetry.TTFT_BUCKETS,
        "agentplane_overhead_seconds": telemetry.OVERHEAD_BUCKETS,
        "agentplane_operator_agent_ready_seconds": READY_BUCKETS,
    }
    latency = [s.slo.sli.latency for s in slos if s.slo.sli.latency is not None]
    assert len(latency) == 4
    for sli in latency:
        assert sli.threshold in buckets[sli.histogram], sli
    durability = next(s for s in slos if s.name == "usage-durability").slo.sli.events
    assert durability is not None
    assert 60 in telemetry.USAGE_DELAY_BUCKETS
    assert 'le="60.0"' in durability.errors


def test_every_runbook_link_has_its_section(slos: list[ServiceSLO]) -> None:
    text = DASHBOARDS.joinpath("RUNBOOKS.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", text, re.M)
    }
    for s in slos:
        url = s.slo.alerting.runbook
        assert url.startswith("https://github.com/agentplane/agentplane/blob/main/dashboards/RUNBOOKS.md#")
        assert url.rsplit("#", 1)[1] in anchors, url


def test_generated_files_are_current() -> None:
    """`make generate` was run after the last change to an SLO or to the generators."""
    assert generate(DASHBOARDS, check=True) == []


def test_check_names_a_stale_file_and_generate_mends_it(tmp_path: Path) -> None:
    shutil.copytree(DASHBOARDS / "slos", tmp_path / "slos")
    shutil.copytree(DASHBOARDS / "rules", tmp_path / "rules")
    shutil.copytree(DASHBOARDS / "grafana", tmp_path / "grafana")
    (tmp_path / "rules" / "agent-ready.yaml").write_text("groups: []\n")
    (tmp_path / "rules" / "gone.yaml").write_text("groups: []\n")
    assert main(["generate", "--check", "--dir", str(tmp_path)]) == 1
    assert (tmp_path / "rules" / "gone.yaml").exists()
    assert sorted(Path(p).name for p in generate(tmp_path, check=False)) == ["agent-ready.yaml", "gone.yaml"]
    assert not (tmp_path / "rules" / "gone.yaml").exists()
    assert generate(tmp_path, check=True) == []


def test_no_slo_file_is_refused_not_an_empty_rule_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(DASHBOARDS / "rules", tmp_path / "rules")
    (tmp_path / "slos").mkdir()
    assert main(["generate", "--dir", str(tmp_path)]) == 1
    assert "no SLO files (*.yaml) here" in capsys.readouterr().err
    assert len(list((tmp_path / "rules").glob("*.yaml"))) == 9


def test_promtool_accepts_every_generated_rule_file() -> None:
    files = sorted(DASHBOARDS.joinpath("rules").glob("*.yaml"))
    assert len(files) == 9
    result = subprocess.run([promtool(), "check", "rules", *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_burn_rate_alerts() -> None:
    """Page under a 20x burn after its `for`, silent under 0.5x; ticket under 4x and not the page;
    the budget left on a known input; zero errors a ratio of 0, not no data (dashboards/tests/promtool)."""
    tests = sorted(DASHBOARDS.joinpath("tests", "promtool").glob("*.test.yaml"))
    assert len(tests) == 2
    result = subprocess.run(
        [promtool(), "test", "rules", *(t.name for t in tests)],
        capture_output=True,
        text=True,
        cwd=tests[0].parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def test_every_slo_records_every_window_and_alerts_twice(slos: list[ServiceSLO]) -> None:
    files = rule_files(slos)
    for s in slos:
        groups = files[f"{s.name}.yaml"]["groups"]
        records = [r["record"] for g in groups for r in g["rules"] if "record" in r]
        for window in names.ALERT_WINDOWS:
            assert names.error_ratio(window) in records
        assert {names.window_ratio(), names.BUDGET_REMAINING, names.OBJECTIVE, names.ERROR_BUDGET} <= set(
            records
        )
        alerts = [r for g in groups for r in g["rules"] if "alert" in r]
        assert [a["labels"]["severity"] for a in alerts] == ["page", "ticket"]
        assert all(a["labels"]["slo"] == s.name and a["annotations"]["runbook_url"] for a in alerts)
        every = [r for g in groups for r in g["rules"]]
        assert all(r["labels"][names.SLO_LABEL] == s.name for r in every)


def test_scaled_rules_keep_their_names_and_shrink_their_ranges(
    slos: list[ServiceSLO], tmp_path: Path
) -> None:
    """What the Prometheus test loads is the production rules with shorter ranges, nothing else."""
    normal = rule_files(slos)["agent-availability.yaml"]["groups"]
    scaled = rule_files(slos, scale=1 / 60)["agent-availability.yaml"]["groups"]
    assert [[r.get("record") or r["alert"] for r in g["rules"]] for g in normal] == [
        [r.get("record") or r["alert"] for r in g["rules"]] for g in scaled
    ]
    exprs = {r.get("record"): r["expr"] for r in scaled[0]["rules"] + scaled[1]["rules"]}
    assert "[1m]" in exprs[names.error_ratio("1h")]
    assert "[1h]" not in exprs[names.error_ratio("1h")]
    assert "[12h]" in exprs[names.window_ratio()]
    assert scaled[1]["interval"] == "5s"
    assert scaled[2]["rules"][0]["for"] == "2s"
    for name, document in rule_files(slos, scale=1 / 60).items():
        (tmp_path / name).write_text(render_rules(document))
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, sorted(tmp_path.iterdir()))], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


BROKEN = """\
service: agentplane-runtime
slos:
  - name: availability
    description: x
    objective: 90
    sli:
      events:
        errors: sum(rate(a[5m]))
        total: sum(rate(b[{{window}}]))
    alerting:
      name: Availability
      runbook: http://example.invalid/runbook
      severity: page
  - name: latency
    description: y
    objective: 99
    window: 1d
    sli:
      latency: {histogram: h, threshold: 1}
      events: {errors: "x[{{window}}]", total: "y[{{window}}]"}
    alerting: {name: Latency, runbook: "https://example.invalid/r", labels: {severity: page}}
"""


def test_a_broken_slo_file_says_what_and_where(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    with pytest.raises(SLOError) as caught:
        load_slos([path])
    messages = "\n".join(p.format() for p in caught.value.problems)
    lines = {p.path: p.position.line for p in caught.value.problems}
    assert lines["slos[0].sli.events.errors"] == 8
    assert lines["slos[0].alerting.runbook"] == 12
    assert lines["slos[0].alerting.severity"] == 13
    assert "unknown field" in messages
    assert lines["slos[1].window"] == 17
    assert "at least 3d" in messages
    assert "set exactly one of events and latency" in messages
    assert "label 'severity' is set by the generator" in messages
    assert f"{path}:" in messages
    # 90 % cannot page at 14.4x: said at the SLO
    assert lines["slos[0].objective"] == 5
    assert "objective 90% leaves an error budget of 0.1: a 14.4x burn would need" in messages


def test_slo_names_are_unique_across_files(tmp_path: Path) -> None:
    one = DASHBOARDS.joinpath("slos", "operator.yaml").read_text()
    (tmp_path / "a.yaml").write_text(one)
    (tmp_path / "b.yaml").write_text(one)
    with pytest.raises(
        SLOError, match=r"b.yaml:\d+:\d+: slos\[0\].name: SLO 'operator-reconcile-success' is also defined in"
    ):
        load_slos(sorted(tmp_path.iterdir()))


def test_generated_rules_are_plain_groups_prometheus_loads() -> None:
    for path in DASHBOARDS.joinpath("rules").glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        assert set(document) == {"groups"}
        assert path.read_text().startswith("# Generated by `agentplane-dashboards generate`")
