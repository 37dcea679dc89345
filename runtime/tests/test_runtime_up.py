"""`agentplane up` as a user runs it: a subprocess on a free port, over a copy of the example specs,
talked to with the OpenAI SDK (the offline model: no provider key in its environment)."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from runtime_support import free_port

from support.agentplane_up import AGENTS, KEYWORDS_ONLY, Up, agentplane, copy_specs, start, up_env


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("up")
    server = start(copy_specs(tmp), tmp / "state", tmp / "up.log")
    yield server
    if server.process.poll() is None:
        server.stop()


def test_banner_lists_every_agent_offline_with_its_url_and_tenant_key(up: Up) -> None:
    text = up.output()
    keys = up.keys()
    for tenant, agent in AGENTS:
        line = next(line for line in text.splitlines() if up.url(tenant, agent) in line)
        assert "(offline)" in line
        assert keys[tenant] in line
    assert keys["acme"] != keys["globex"]
    assert "curl -s" in text
    assert "from openai import OpenAI" in text
    assert "knowledge: 8 ingested, 0 unchanged, 0 removed" in text
    assert f"Prometheus metrics: {up.base}/metrics" in text
    metrics = httpx.get(f"{up.base}/metrics")
    assert metrics.status_code == 200
    assert "# TYPE agentplane_requests_total counter" in metrics.text


@pytest.mark.parametrize(("tenant", "agent"), AGENTS)
def test_each_agent_answers_through_the_openai_sdk_saying_it_is_offline(
    up: Up, tenant: str, agent: str
) -> None:
    reply = up.client(tenant, agent).chat.completions.create(
        model=agent, messages=[{"role": "user", "content": "How do I return an item I bought?"}]
    )
    content = reply.choices[0].message.content or ""
    assert content.startswith("[offline model]")
    assert reply.model.startswith("agentplane-offline/")
    assert reply.usage is not None
    assert reply.usage.total_tokens > 0


def test_offline_answer_quotes_the_tenants_knowledge(up: Up) -> None:
    reply = up.client("acme", "support-bot").chat.completions.create(
        model="support-bot", messages=[{"role": "user", "content": "How do I return an item?"}]
    )
    content = reply.choices[0].message.content or ""
    assert "returns.md" in content
    assert "30 days" in content
    extra = reply.model_extra or {}
    assert extra["agentplane"]["retrieval"]["status"] == "ok"


def test_offline_model_streams_and_uses_the_calculator_tool(up: Up) -> None:
    stream = up.client("acme", "billing-assistant").chat.completions.create(
        model="billing-assistant",
        stream=True,
        messages=[{"role": "user", "content": "What is the pro-rated refund: 1200 * 5 / 12 ?"}],
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("[offline model]")
    assert 'Tool result: {"result": 500.0}' in text


def test_knowledge_query_finds_the_runbook(up: Up) -> None:
    response = httpx.post(
        f"{up.url('globex', 'oncall-helper')}/knowledge/runbooks/query",
        json={"query": "how do I promote the database replica"},
        headers={"Authorization": f"Bearer {up.keys()['globex']}"},
    )
    assert response.status_code == 200, response.text
    hits = response.json()["data"]
    assert hits[0]["source"] == "knowledge/runbooks/database-failover.md"


def test_a_tenants_key_does_not_open_another_tenants_agent(up: Up) -> None:
    client = openai.OpenAI(
        base_url=up.url("globex", "oncall-helper"), api_key=up.keys()["acme"], max_retries=0
    )
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])


def test_quota_bites_and_a_restart_keeps_keys_usage_and_knowledge(tmp_path: Path) -> None:
    specs = copy_specs(tmp_path)
    tenant_file = specs / "tenants" / "globex" / "tenant.yaml"
    text = tenant_file.read_text()
    assert "requestsPerMinute: 60" in text
    tenant_file.write_text(text.replace("requestsPerMinute: 60", "requestsPerMinute: 3"))
    state = tmp_path / "state"
    first = start(specs, state, tmp_path / "first.log", **KEYWORDS_ONLY)
    try:
        key = first.keys()["globex"]
        client = first.client("globex", "oncall-helper")
        # the limit is per minute window: a window boundary may let a second batch of 3 through
        admitted, refused = 0, None
        for _ in range(10):
            try:
                client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "latency is high"}]
                )
            except openai.RateLimitError as exc:
                refused = exc
                break
            admitted += 1
        assert refused is not None
        assert 3 <= admitted <= 6
        assert refused.response.headers.get("retry-after")
    finally:
        code = first.stop()
    assert code == 0, first.output()
    assert "agentplane up: stopped" in first.output()
    with sqlite3.connect(state / "agentplane.db") as db:
        rows = db.execute("select count(*) from usage_records where tenant = 'globex'").fetchone()[0]
    assert rows >= 3

    second = start(specs, state, tmp_path / "second.log", **KEYWORDS_ONLY)
    try:
        assert second.keys()["globex"] == key
        assert key in second.output()
        assert "knowledge: 0 ingested, 8 unchanged, 0 removed" in second.output()
        reply = second.client("globex", "oncall-helper").chat.completions.create(
            model="x", messages=[{"role": "user", "content": "certificate expires soon"}]
        )
        assert "certificate-expiry.md" in (reply.choices[0].message.content or "")
    finally:
        assert second.stop() == 0
    with sqlite3.connect(state / "agentplane.db") as db:
        after = db.execute("select count(*) from usage_records where tenant = 'globex'").fetchone()[0]
    assert after == rows + 1


def test_changed_knowledge_is_reingested_and_removed_files_deleted(tmp_path: Path) -> None:
    specs = copy_specs(tmp_path)
    state = tmp_path / "state"
    start(specs, state, tmp_path / "first.log", **KEYWORDS_ONLY).stop()
    runbooks = specs / "tenants" / "globex" / "knowledge" / "runbooks"
    (runbooks / "high-latency.md").unlink()
    (runbooks / "certificate-expiry.md").write_text(
        "# Certificates\n\nRenew them with the zebra procedure.\n"
    )
    second = start(specs, state, tmp_path / "second.log", **KEYWORDS_ONLY)
    try:
        assert "knowledge: 1 ingested, 6 unchanged, 1 removed" in second.output()
        response = httpx.post(
            f"{second.url('globex', 'oncall-helper')}/knowledge/runbooks/query",
            json={"query": "zebra procedure latency cordon"},
            headers={"Authorization": f"Bearer {second.keys()['globex']}"},
        )
        sources = {hit["source"] for hit in response.json()["data"]}
        assert "knowledge/runbooks/certificate-expiry.md" in sources
        assert "knowledge/runbooks/high-latency.md" not in sources
    finally:
        second.stop()


def test_invalid_specs_refuse_to_start_and_print_the_problems(tmp_path: Path) -> None:
    specs = copy_specs(tmp_path)
    agent = specs / "tenants" / "acme" / "agents" / "support-bot.yaml"
    agent.write_text(agent.read_text().replace("name: azure/gpt-4o-mini", "name: azure/gpt-5-unknown", 1))
    state = tmp_path / "state"
    result = subprocess.run(
        agentplane("up", str(specs), "--port", str(free_port()), "--state", str(state)),
        capture_output=True,
        text=True,
        env=up_env(),
        timeout=120,
    )
    assert result.returncode == 1
    assert "support-bot.yaml:" in result.stdout
    assert "gpt-5-unknown" in result.stdout
    assert "1 error" in result.stdout
    assert "agentplane up: not starting" in result.stdout
    assert not state.exists()
