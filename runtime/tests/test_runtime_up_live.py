"""`agentplane up` applying spec changes live, `agentplane chat` as a user runs it, and the local dense
embedding model (the runtime's `dense` extra, which `make test` installs)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from runtime_support import free_port

from agentplane_runtime.retrieval import sparse_vector
from support.agentplane_up import KEYWORDS_ONLY, Up, agentplane, copy_specs, start, up_env

QUESTION = [{"role": "user", "content": "How do I get a refund for a yearly plan?"}]


def prompt_of(client: openai.OpenAI) -> dict[str, Any]:
    reply = client.chat.completions.create(model="x", messages=QUESTION)  # type: ignore[arg-type]
    meta: dict[str, Any] = (reply.model_extra or {})["agentplane"]["prompt"]
    return meta


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp = tmp_path_factory.mktemp("live")
    server = start(copy_specs(tmp), tmp / "state", tmp / "up.log", **KEYWORDS_ONLY)
    yield server
    if server.process.poll() is None:
        server.stop()


def test_a_prompt_bump_takes_effect_without_a_restart(live: Up) -> None:
    acme = live.specs / "tenants" / "acme"
    client = live.client("acme", "billing-assistant")
    assert prompt_of(client) == {"name": "billing", "version": 1}
    prompt = acme / "prompts" / "billing.yaml"
    text = prompt.read_text()
    assert "  version: 1\n  template: |\n" in text
    prompt.write_text(
        text.replace(
            "  version: 1\n  template: |\n",
            "  version: 2\n"
            "  previousVersions:\n"
            "    - version: 1\n"
            "      template: You help Acme customers with billing in {{ region }}.\n"
            "      variables: [{name: region, default: EU}]\n"
            "  template: |\n    Answer in one short paragraph.\n",
        )
    )
    agent = acme / "agents" / "billing-assistant.yaml"
    agent.write_text(re.sub(r"(\n    name: billing\n    version: )1\n", r"\g<1>2\n", agent.read_text()))
    live.wait("the billing prompt v2", lambda: prompt_of(client)["version"] == 2)
    assert "specs: ~ acme/billing-assistant: prompt billing v1 -> billing v2" in live.output()
    # the operator would keep v1 available too: pinning it back works at once
    agent.write_text(
        agent.read_text().replace(
            "\n    name: billing\n    version: 2\n", "\n    name: billing\n    version: 1\n"
        )
    )
    live.wait("the billing prompt back at v1", lambda: prompt_of(client)["version"] == 1)


def test_a_new_agent_appears_and_a_removed_one_disappears(live: Up) -> None:
    agents = live.specs / "tenants" / "acme" / "agents"
    text = (agents / "support-bot.yaml").read_text()
    (agents / "night-shift.yaml").write_text(text.replace("name: support-bot", "name: night-shift", 1))
    (agents / "legacy-support-bot.yaml").unlink()

    new = live.client("acme", "night-shift")
    gone = live.client("acme", "legacy-support-bot")

    def served(client: openai.OpenAI) -> bool:
        try:
            client.models.list()
        except openai.NotFoundError:
            return False
        return True

    live.wait("acme/night-shift to be served", lambda: served(new))
    live.wait("acme/legacy-support-bot to be gone", lambda: not served(gone))
    reply = new.chat.completions.create(model="night-shift", messages=QUESTION)  # type: ignore[arg-type]
    assert (reply.choices[0].message.content or "").startswith("[offline model]")
    with pytest.raises(openai.NotFoundError) as error:
        gone.chat.completions.create(model="x", messages=QUESTION)  # type: ignore[arg-type]
    assert error.value.code == "agent_not_found"
    output = live.output()
    assert (
        f"specs: + acme/night-shift azure/gpt-4o-mini (offline) at {live.url('acme', 'night-shift')}"
        in output
    )
    assert "specs: - acme/legacy-support-bot" in output


def test_an_invalid_edit_is_reported_with_its_line_and_changes_nothing(live: Up) -> None:
    agent = live.specs / "tenants" / "acme" / "agents" / "support-bot.yaml"
    good = agent.read_text()
    lines = good.splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.startswith("    name: azure/gpt-4o-mini"))
    agent.write_text(good.replace("    name: azure/gpt-4o-mini", "    name: azure/gpt-5-unknown", 1))
    live.wait("the problem to be reported", lambda: "specs: not applied" in live.output())
    output = live.output()
    assert re.search(rf"support-bot\.yaml:{line}:\d+: .*gpt-5-unknown", output), output
    reply = live.client("acme", "support-bot").chat.completions.create(model="x", messages=QUESTION)  # type: ignore[arg-type]
    assert reply.model == "agentplane-offline/azure/gpt-4o-mini"

    # a reference to a prompt version that does not exist
    agent.write_text(good.replace("    name: support\n    version: 2", "    name: support\n    version: 9"))
    live.wait("the missing prompt version to be reported", lambda: "has no version 9" in live.output())
    assert re.search(r"support-bot\.yaml:17:5: .*Prompt 'support' has no version 9", live.output())
    assert prompt_of(live.client("acme", "support-bot")) == {"name": "support", "version": 2}
    agent.write_text(good)


def test_a_new_knowledge_file_is_ingested_live(live: Up) -> None:
    runbooks = live.specs / "tenants" / "globex" / "knowledge" / "runbooks"
    (runbooks / "kafka-lag.md").write_text(
        "# Runbook: consumer lag\n\nWhen the zeppelin consumer group lags, add partitions to the topic.\n"
    )

    def sources() -> set[str]:
        response = httpx.post(
            f"{live.url('globex', 'oncall-helper')}/knowledge/runbooks/query",
            json={"query": "zeppelin consumer group lags"},
            headers={"Authorization": f"Bearer {live.keys()['globex']}"},
        )
        return {hit["source"] for hit in response.json()["data"]}

    live.wait("the new runbook to be searchable", lambda: "knowledge/runbooks/kafka-lag.md" in sources())
    assert "knowledge: 1 ingested, 8 unchanged, 0 removed" in live.output()


def test_a_new_tenant_gets_its_key_and_agents(live: Up) -> None:
    tenants = live.specs / "tenants"
    initech = tenants / "initech"
    (initech / "agents").mkdir(parents=True)
    (initech / "prompts").mkdir()
    (initech / "tenant.yaml").write_text(
        (tenants / "globex" / "tenant.yaml").read_text().replace("globex", "initech")
    )
    (initech / "prompts" / "oncall.yaml").write_text(
        (tenants / "globex" / "prompts" / "oncall.yaml").read_text().replace("globex", "initech")
    )
    agent = (tenants / "globex" / "agents" / "oncall-helper.yaml").read_text().replace("globex", "initech")
    agent = re.sub(r"\n  tools:\n(    - name: .*\n)+", "\n", agent)
    (initech / "agents" / "oncall-helper.yaml").write_text(agent)
    live.wait("the initech key", lambda: live.keys().get("initech") is not None)
    client = live.client("initech", "oncall-helper")
    live.wait("initech/oncall-helper", lambda: client.models.list().data[0].id == "oncall-helper")
    assert f"specs: + tenant initech, API key {live.keys()['initech']}" in live.output()


def _chat(up: Up, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agentplane("chat", *args, "--url", up.base, "--state", str(up.state)),
        input=stdin,
        capture_output=True,
        text=True,
        env=up_env(),
        timeout=60,
    )


def test_chat_streams_the_answer_with_sources_and_usage(live: Up) -> None:
    result = _chat(live, "acme/support-bot", "How do I return an item?")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("[offline model]")
    assert "30 days" in out
    assert re.search(r"^sources:\n  \[1\] knowledge/help-center/returns\.md \(score [\d.]+\)$", out, re.M), (
        out
    )
    assert re.search(
        r"^tokens: \d+ in, \d+ out, \d+ total \(model agentplane-offline/azure/gpt-4o-mini, prompt support v2\)$",
        out,
        re.M,
    )


def test_chat_interactive_keeps_the_conversation_until_exit(live: Up) -> None:
    result = _chat(
        live,
        "acme/billing-assistant",
        stdin="what is 1200 * 5 / 12 ?\n/reset\n/bogus\nand the refund rules?\n/exit\nnever read\n",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Chatting with acme/billing-assistant at ")
    assert out.count("[offline model]") == 2
    assert 'Tool result: {"result": 500.0}' in out
    assert "(new conversation)" in out
    assert "unknown command /bogus" in out
    assert out.count("\ntokens: ") == 2


def test_chat_errors_are_one_clear_line(live: Up) -> None:
    missing = _chat(live, "acme/no-such-agent", "hi")
    assert missing.returncode == 1
    assert re.fullmatch(r"\nerror: 404 no such agent \(request id [0-9a-f]{32}\)\n", missing.stderr)
    unknown = _chat(live, "initech-never/x", "hi")
    assert unknown.returncode == 1
    assert "no API key for tenant 'initech-never'" in unknown.stderr
    assert _chat(live, "no-slash", "hi").returncode == 2
    unreachable = ["--url", f"http://127.0.0.1:{free_port()}", "--key", "ap_x_y"]
    down = subprocess.run(
        agentplane("chat", "acme/support-bot", "hi", *unreachable),
        capture_output=True,
        text=True,
        env=up_env(),
        timeout=60,
    )
    assert down.returncode == 1
    assert "is `agentplane up` running" in down.stderr


# -- the dense extra ----------------------------------------------------------------------------

# No word of this question is in the failover runbook (nor any other): only a dense model finds it.
SEMANTIC = "postgres went offline, switching to the standby"


def _query(up: Up) -> list[str]:
    response = httpx.post(
        f"{up.url('globex', 'oncall-helper')}/knowledge/runbooks/query",
        json={"query": SEMANTIC},
        headers={"Authorization": f"Bearer {up.keys()['globex']}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return [hit["source"] for hit in response.json()["data"]]


@pytest.mark.dense
def test_the_local_dense_model_finds_what_keywords_cannot(tmp_path: Path) -> None:
    specs = copy_specs(tmp_path)
    words = set(sparse_vector(SEMANTIC).indices)
    for doc in (specs / "tenants" / "globex" / "knowledge" / "runbooks").glob("*.md"):
        assert not words & set(sparse_vector(doc.read_text()).indices), doc
    state = tmp_path / "state"

    keyword = start(specs, state, tmp_path / "keyword.log", **KEYWORDS_ONLY)
    try:
        assert "globex/runbooks: keyword only (local embeddings are off)" in keyword.output()
        assert _query(keyword) == []
    finally:
        assert keyword.stop() == 0

    dense = start(specs, state, tmp_path / "dense.log")
    try:
        output = dense.output()
        assert "globex/runbooks: hybrid: dense local/all-MiniLM-L6-v2 + keyword" in output
        # the embedding mode is part of what was ingested: the runbooks are embedded again
        assert "knowledge: 3 ingested, 5 unchanged, 0 removed" in output
        assert _query(dense)[0] == "knowledge/runbooks/database-failover.md"
    finally:
        assert dense.stop() == 0
