"""The SLO rules and the Grafana dashboards of `dashboards/`, proven on a real Prometheus.

Prometheus (Debian's package) scrapes `agentplane up` serving the example agents through litellm's
real HTTP path to the fake provider, and the operator reconciling the example specs on the test
control plane, while the locust scenario runs and the fake provider fails, falls back and calls
tools. Then every query of every panel of every generated dashboard must be valid and return data,
every recording rule must produce samples, and once the provider fails every call of one model,
the availability SLO's page alert must reach `firing`.

The rules are the generated ones with every window 60 times shorter (1h -> 1m, `for: 2m` -> 2s),
made by the same code (`rule_files(..., scale=...)`), so the alert fires in seconds.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from agentplane_dashboards import names
from agentplane_dashboards.cli import render_rules
from agentplane_dashboards.rules import rule_files
from agentplane_dashboards.slo import load_slos
from support.agentplane_up import KEYWORDS_ONLY, Up, copy_specs, start
from support.cluster import Cluster
from support.fake_llm import FakeLLM, error, reply, tool_calls
from support.locust import collect, locust
from support.operator_process import (
    OperatorProcess,
    condition,
    delete_tenants,
    get,
    install_operator_rbac,
    start_operator,
)
from support.prometheus import Prometheus, running_prometheus
from support.service_fixtures import unavailable
from support.services import Server, ServiceUnavailable, create_database
from support.waiting import wait_for

pytestmark = [pytest.mark.k8s, pytest.mark.postgres, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = REPO / "dashboards"
SCALE = 1 / 60
ACME = (
    "/t/acme/a/support-bot/v1#help-center",
    "/t/acme/a/billing-assistant/v1#billing-policies",
    "/t/acme/a/legacy-support-bot/v1",
)
GLOBEX = "/t/globex/a/oncall-helper/v1#runbooks"
VARIABLES = {
    # what Grafana puts in place of its variables, with "All" chosen for every template variable
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "5m",
    "${__range}": "5m",
}


@dataclass
class Stack:
    prometheus: Prometheus
    up: Up
    fake: FakeLLM
    operator: OperatorProcess


def _hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    server = FakeLLM(record=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def up(fake: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """The example specs with globex held to 20 requests a minute (so the load meets 429s), every
    provider pointed at the fake one."""
    tmp = tmp_path_factory.mktemp("slo-up")
    specs = copy_specs(tmp)
    tenant = specs / "tenants" / "globex" / "tenant.yaml"
    text = tenant.read_text()
    assert "requestsPerMinute: 60" in text
    tenant.write_text(text.replace("requestsPerMinute: 60", "requestsPerMinute: 20"))
    server = start(
        specs, tmp / "state", tmp / "up.log", **KEYWORDS_ONLY,
        OPENAI_API_KEY="sk-slo", OPENAI_API_BASE=fake.base_url,
        AZURE_API_KEY="az-slo", AZURE_API_BASE=fake.root_url, AZURE_API_VERSION="2024-10-21",
    )  # fmt: skip
    yield server
    server.stop()


@pytest.fixture(scope="module")
def operator(
    k8s: Cluster, postgres: Server, redis_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator with the example Tenants and Agents applied, Ready (kwok runs their pods)."""
    workdir = tmp_path_factory.mktemp("slo-operator")
    kubeconfig = install_operator_rbac(k8s, workdir)
    running = start_operator(
        k8s, kubeconfig, workdir, redis_url=redis_server.url.rsplit("/", 1)[0] + "/5",
        database_url=create_database(postgres, "slo_dashboards"), qdrant_path=workdir / "qdrant",
        resync_seconds=5,
    )  # fmt: skip
    examples = REPO / "specs" / "tenants"

    def ready(kind: str, name: str, namespace: str | None = None) -> bool:
        return condition(get(k8s, kind, name, namespace)).get("status") == "True"

    try:
        delete_tenants(k8s, "acme", "globex")
        for name in ("acme", "globex"):
            k8s.kubectl("apply", "-f", str(examples / name / "tenant.yaml"))
        for name in ("acme", "globex"):
            wait_for(f"tenant {name} Ready", lambda: ready("tenant", name))  # noqa: B023
        k8s.kubectl("apply", "-R", "-f", str(examples))
        for namespace, name in (("tenant-acme", "support-bot"), ("tenant-globex", "oncall-helper")):
            wait_for(f"agent {namespace}/{name} Ready", lambda: ready("agent", name, namespace), timeout=120)  # noqa: B023
        yield running
        delete_tenants(k8s, "acme", "globex")
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stack(
    up: Up, fake: FakeLLM, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("slo-prometheus")
    rules = tmp / "rules"
    rules.mkdir()
    for name, document in rule_files(load_slos(DASHBOARDS.joinpath("slos").glob("*.yaml")), SCALE).items():
        rules.joinpath(name).write_text(render_rules(document))
    try:
        with running_prometheus(
            tmp / "prometheus",
            targets={
                "agentplane-runtime": [_hostport(up.base)],
                "agentplane-operator": [_hostport(operator.metrics_url)],
            },
            rule_files=sorted(rules.iterdir()),
        ) as prometheus:
            prometheus.wait_for_targets()
            yield Stack(prometheus, up, fake, operator)
    except ServiceUnavailable as exc:
        unavailable("prometheus", str(exc))


@pytest.fixture(scope="module")
def traffic(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """The load scenario on both tenants while the fake provider fails some calls (fallbacks, server
    errors) and asks for tools."""
    tmp = tmp_path_factory.mktemp("slo-locust")
    state = str(stack.up.state)
    runs = {
        "acme": locust(
            stack.up.base, tmp / "acme", 20, 3, AGENTPLANE_STATE=state, AGENTPLANE_LOAD_TARGETS=",".join(ACME)
        ),
        "globex": locust(
            stack.up.base, tmp / "globex", 20, 2, AGENTPLANE_STATE=state, AGENTPLANE_LOAD_TARGETS=GLOBEX
        ),
    }
    stop = threading.Event()

    def provider_trouble() -> None:
        while not stop.wait(1.0):
            # billing-assistant's azure/gpt-4o fails every attempt of a request (the runtime's 3): its
            # fallback answers
            stack.fake.script("gpt-4o", [error(500)] * 3)
            # oncall-helper's model asks for the calculator first
            stack.fake.script(
                "gpt-4o-mini", [tool_calls(("calculator", {"expression": "2 * 21"})), reply("42")]
            )

    thread = threading.Thread(target=provider_trouble, daemon=True)
    thread.start()
    try:
        done = {name: collect(process, tmp / name) for name, process in runs.items()}
    finally:
        stop.set()
        thread.join()
        stack.fake.reset()  # what the load left unconsumed
    assert done["acme"].count("POST", "chat") > 0, done["acme"].output
    # a client error the platform is not to blame for
    keys = stack.up.keys()
    response = httpx.post(
        f"{stack.up.url('acme', 'support-bot')}/chat/completions",
        headers={"Authorization": f"Bearer {keys['acme']}"},
        json={"model": "x", "messages": "not a list"},
        timeout=10,
    )
    assert 400 <= response.status_code < 500
    return stack


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def _queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, query with Grafana's variables put in) of every panel target."""
    found = []
    for path in sorted(DASHBOARDS.joinpath("grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard):
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if not expr:
                    continue
                for variable, value in VARIABLES.items():
                    expr = expr.replace(variable, value)
                expr = re.sub(r"\$\{?(tenant|agent|model|tool|kind)(:\w+)?\}?", ".*", expr)
                assert "$" not in expr, (path.name, panel.get("title"), expr)
                found.append((path.name, str(panel.get("title")), expr))
    return found


def test_every_panel_query_is_valid_and_returns_data(traffic: Stack) -> None:
    queries = _queries()
    assert len(queries) >= 40
    empty = []
    for dashboard, title, expr in queries:
        result = traffic.prometheus.query(expr)  # raises on a query Prometheus refuses
        if not result:
            empty.append(f"{dashboard} / {title}: {expr}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_every_recording_rule_produces_samples(traffic: Stack) -> None:
    slos = load_slos(DASHBOARDS.joinpath("slos").glob("*.yaml"))
    missing: list[str] = []
    # the long group runs every 5 s here; give it one round after the traffic
    deadline = time.monotonic() + 15
    while True:
        missing = []
        for document in rule_files(slos, SCALE).values():
            for group in document["groups"]:
                for rule in group["rules"]:
                    if "record" in rule:
                        slo = rule["labels"][names.SLO_LABEL]
                        if not traffic.prometheus.query(f'{rule["record"]}{{slo="{slo}"}}'):
                            missing.append(f"{rule['record']}{{slo={slo!r}}}")
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert missing == []
    unhealthy = [r for r in traffic.prometheus.rules() if r.get("health") != "ok"]
    assert unhealthy == []


def test_a_failing_provider_fires_the_availability_page(traffic: Stack) -> None:
    """Every call of gpt-4o-mini fails: legacy-support-bot (no fallback) answers 502s, and within
    seconds (the windows scaled 60x down) the page of its tenant and agent fires."""
    prometheus, up, fake = traffic.prometheus, traffic.up, traffic.fake
    client = httpx.Client(headers={"Authorization": f"Bearer {up.keys()['acme']}"}, timeout=30)
    url = f"{up.url('acme', 'legacy-support-bot')}/chat/completions"
    body = {"model": "x", "messages": [{"role": "user", "content": "Where is my order?"}]}

    def page() -> list[dict[str, Any]]:
        return [
            a for a in prometheus.alerts()
            if a["labels"].get("alertname") == "AgentAvailabilityBudgetBurn"
            and a["labels"].get("severity") == "page"
            and a["labels"].get("agent") == "legacy-support-bot"
        ]  # fmt: skip

    assert page() == []
    fake.reset()
    statuses: list[int] = []
    firing: list[dict[str, Any]] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            fake.script("gpt-4o-mini", [error(503)] * 3)  # the runtime's 3 attempts of one request
            statuses.append(client.post(url, json=body).status_code)
            firing = [a for a in page() if a["state"] == "firing"]
            if firing:
                break
            time.sleep(0.2)
    finally:
        fake.reset()
        client.close()
    assert firing, f"no page after {len(statuses)} requests ({set(statuses)}); alerts: {prometheus.alerts()}"
    failed = set(statuses) - {200}
    assert failed, statuses
    assert min(failed) >= 500, statuses
    alert = firing[0]
    assert alert["labels"] == {
        "alertname": "AgentAvailabilityBudgetBurn", "severity": "page", "slo": "agent-availability",
        "service": "agentplane-runtime", "team": "platform", "tenant": "acme", "agent": "legacy-support-bot",
    }  # fmt: skip
    assert alert["annotations"]["runbook_url"].endswith("RUNBOOKS.md#agent-availability")
    assert alert["annotations"]["summary"] == "acme/legacy-support-bot is failing chat requests"
    # the budget of that agent is going, and Prometheus says so in the recorded series
    ratio = prometheus.query(
        f'{names.error_ratio("5m")}{{slo="agent-availability", agent="legacy-support-bot"}}'
    )
    assert float(ratio[0]["value"][1]) > 14.4 * 0.005
