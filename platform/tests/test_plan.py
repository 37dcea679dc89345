"""`agentplane plan` on temporary Git repositories holding a copy of the example specs: what a
reviewer reads for each kind of change, and the exit code (0 no change, 1 changes, 2 errors)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from agentplane_platform.cli import run

REPO = Path(__file__).resolve().parents[2]
ACME = Path("specs/tenants/acme")


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=plan test", "-c", "user.email=plan@example.test", "-c", "commit.gpgsign=false",
         *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repository whose `main` holds the example tenants; the working directory is its root."""
    shutil.copytree(REPO / "specs" / "tenants", tmp_path / "specs" / "tenants")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "add", "specs", "policies")
    _git(tmp_path, "commit", "-q", "-m", "base")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def plan(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run(["plan", *args], out)
    return code, out.getvalue()


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) >= count, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


def bump_support_prompt(repo: Path) -> None:
    """Prompt `support` v3 (v2 kept for agents that pin it), and support-bot pinned to v3."""
    prompt = repo / ACME / "prompts" / "support.yaml"
    text = prompt.read_text()
    current = text[text.index("  template: |") : text.index("  previousVersions:")]
    kept = "\n".join("    " + line if line.strip() else line for line in current.splitlines())
    kept = "    - version: 2\n" + kept.replace("    " + "  template: |", "      template: |", 1)
    edit(prompt, "  version: 2\n", "  version: 3\n")
    edit(prompt, "Keep answers under", "Be brief. Keep answers under")
    edit(prompt, "  previousVersions:\n", "  previousVersions:\n" + kept + "\n")
    edit(repo / ACME / "agents" / "support-bot.yaml", "    version: 2\n", "    version: 3\n")


def test_no_change_exits_0_and_names_the_base(repo: Path) -> None:
    code, out = plan()
    assert code == 0, out
    assert out.startswith("agentplane plan: specs compared with main at ")
    assert "(merge base of HEAD and main)" in out
    assert "no changes" in out
    assert out.rstrip().endswith("plan: 0 added, 0 changed, 0 removed; 0 agents roll; 0 errors, 0 warnings")


def test_default_base_is_the_merge_base_with_main_and_the_working_tree_counts(repo: Path) -> None:
    base = _git(repo, "rev-parse", "HEAD").strip()
    _git(repo, "checkout", "-q", "-b", "feature")
    edit(repo / ACME / "tenant.yaml", "pods: 60", "pods: 70")
    _git(repo, "commit", "-q", "-am", "more pods")
    edit(repo / ACME / "tenant.yaml", "pods: 70", "pods: 80")  # left uncommitted
    code, out = plan()
    assert code == 1, out
    assert f"compared with main at {base[:12]} (merge base of HEAD and main)" in out
    assert "quotas.compute.pods: 60 -> 80" in out
    code, out = plan("--base", "HEAD")
    assert "compared with HEAD" in out
    assert "quotas.compute.pods: 70 -> 80" in out


def test_new_agent(repo: Path) -> None:
    source = (repo / ACME / "agents" / "support-bot.yaml").read_text()
    (repo / ACME / "agents" / "night-shift.yaml").write_text(
        source.replace("name: support-bot", "name: night-shift")
    )
    code, out = plan()
    assert code == 1, out
    assert "tenant acme (tenant-acme): 1 added, 0 changed, 0 removed" in out
    assert "+ Agent night-shift: Deployment, Service, HTTPRoute and config created; its pods start" in out
    assert "pods roll" not in out


def test_prompt_version_bump_rolls_the_agents_that_pin_it(repo: Path) -> None:
    bump_support_prompt(repo)
    code, out = plan()
    assert code == 1, out
    assert "~ Prompt support: versions added: v3" in out
    assert "spec.version: 2 -> 3" in out
    assert "spec.previousVersions[2]: added" in out
    assert "pods roll (1 agent):" in out
    roll = next(line for line in out.splitlines() if "~ support-bot: config " in line)
    assert roll.endswith("(Agent support-bot, Prompt support changed)")
    assert "prompt.version: 2 -> 3" in out
    assert "+       billing team instead. Be brief. Keep answers under {{ max_sentences }} sentences." in out
    assert "legacy-support-bot: config" not in out  # it pins v1, which did not change


def test_shared_tool_changed_rolls_its_agents_indirectly(repo: Path) -> None:
    edit(repo / ACME / "tools" / "order-lookup.yaml", "timeoutSeconds: 10", "timeoutSeconds: 20")
    code, out = plan()
    assert code == 1, out
    assert "~ Tool order-lookup" in out
    assert "spec.timeoutSeconds: 10 -> 20" in out
    rolled = sorted(line.split(":")[0].strip("~ ") for line in out.splitlines() if ": config " in line)
    assert rolled == ["billing-assistant", "support-bot"]
    assert "(indirectly, Tool order-lookup changed)" in out
    assert "tools[order-lookup].timeout_seconds: 10 -> 20" in out


def test_template_edited_without_a_version_bump_is_refused(repo: Path) -> None:
    edit(repo / ACME / "prompts" / "support.yaml", "Keep answers under", "Be brief. Keep answers under")
    code, out = plan()
    assert code == 2, out
    assert (
        "error: specs/tenants/acme/prompts/support.yaml:7:1: Prompt/support: spec: "
        "changing the template requires a higher version (the CRD's rule "
        "`self.template == oldSelf.template || self.version > oldSelf.version`"
    ) in out
    edit(repo / ACME / "prompts" / "support.yaml", "Be brief. Keep answers under", "Keep answers under")
    edit(repo / ACME / "prompts" / "support.yaml", "Use the context", "Use only the context")
    code, out = plan()
    assert code == 2, out
    assert "spec.previousVersions[0]: a prompt version is immutable: bump the version" in out


def test_tool_removed_while_in_use_names_the_agents(repo: Path) -> None:
    (repo / ACME / "tools" / "order-lookup.yaml").unlink()
    code, out = plan()
    assert code == 2, out
    assert "- Tool order-lookup" in out
    for agent, line, index in (("support-bot", 21, 0), ("billing-assistant", 19, 1)):
        assert (
            f"error: specs/tenants/acme/agents/{agent}.yaml:{line}:7: Agent/{agent}: spec.tools[{index}].name: "
            f"Agent {agent} cannot be resolved: ToolNotFound: Tool 'order-lookup' not found in namespace tenant-acme "
            "(Tool order-lookup is removed by this change)"
        ) in out, out
    assert "the new tree (agentplane validate)" not in out  # the same two errors, said once
    assert out.rstrip().endswith("2 errors, 0 warnings")


def test_quota_raised_shows_before_and_after_and_rolls_nothing(repo: Path) -> None:
    edit(repo / ACME / "tenant.yaml", "tokensPerMinute: 400000", "tokensPerMinute: 600000")
    code, out = plan()
    assert code == 1, out
    assert "~ Tenant acme: quota changes apply at once, without rolling pods" in out
    assert "quotas (before -> after):\n        quotas.llm.tokensPerMinute: 400000 -> 600000" in out
    assert "pods roll" not in out


def test_quota_raised_past_the_tier_ceiling_is_the_policy_error(repo: Path) -> None:
    edit(repo / ACME / "tenant.yaml", "tokensPerMinute: 400000", "tokensPerMinute: 2000000")
    code, out = plan()
    assert code == 2, out
    assert "quotas.llm.tokensPerMinute: 400000 -> 2000000" in out
    assert (
        "! error: specs/tenants/acme/tenant.yaml:29:7: Tenant/acme: spec.quotas.llm.tokensPerMinute: "
        "[agentplane-tenant-quotas] spec.quotas.llm.tokensPerMinute is 2000000 (100000 when unset), "
        "above the premium tier's ceiling of 1000000"
    ) in out
    assert out.rstrip().endswith("1 error, 0 warnings")
    code, out = plan("--no-policies")
    assert code == 1, out


def test_tenant_removed(repo: Path) -> None:
    shutil.rmtree(repo / "specs" / "tenants" / "globex")
    code, out = plan()
    assert code == 1, out
    assert "tenant globex (tenant-globex) removed: 0 added, 0 changed, 10 removed" in out
    assert "- Tenant globex: namespace tenant-globex and everything in it deleted" in out
    assert "- Agent oncall-helper: its Deployment, Service, route and config are deleted" in out
    assert "deletionPolicy Delete: its collections (globex--runbooks) and quota records are deleted" in out
    assert (
        "- KnowledgeFile runbooks/database-failover.md: goes with the tenant (see its deletionPolicy)" in out
    )


def test_new_tenant_gets_its_namespace_and_collections(repo: Path) -> None:
    shutil.copytree(repo / "specs" / "tenants" / "globex", repo / "specs" / "tenants" / "initech")
    for path in (repo / "specs" / "tenants" / "initech").rglob("*.yaml"):
        path.write_text(path.read_text().replace("globex", "initech"))
    code, out = plan()
    assert code == 1, out
    assert "tenant initech (tenant-initech) added" in out
    assert "+ Tenant initech: namespace tenant-initech created" in out
    assert "collections created: initech--runbooks" in out
    assert "quotas.llm.tokensPerMinute: (none) -> 20000\n" in out


def test_knowledge_bases_and_files(repo: Path) -> None:
    tenant = repo / ACME / "tenant.yaml"
    edit(
        tenant,
        "  egress:\n",
        "    - name: faq\n      embeddingModel: azure/text-embedding-3-small\n      dimensions: 1536\n  egress:\n",
    )
    (repo / ACME / "knowledge" / "faq").mkdir()
    (repo / ACME / "knowledge" / "faq" / "hours.md").write_text("# Opening hours\n")
    edit(repo / ACME / "knowledge" / "help-center" / "returns.md", "", "Updated.\n")
    code, out = plan()
    assert code == 1, out
    assert "+ KnowledgeBase faq: collection acme--faq created" in out
    assert "+ KnowledgeFile faq/hours.md: ingested at the next sync" in out
    assert "~ KnowledgeFile help-center/returns.md: re-embedded at the next sync" in out
    edit(
        tenant,
        "      dimensions: 1536\n      distance: Cosine",
        "      dimensions: 3072\n      distance: Cosine",
    )
    code, out = plan()
    assert code == 2, out
    assert (
        "knowledge base 'help-center': collection 'acme--help-center' exists with 1536 dimensions/Cosine, "
        "the knowledge base declares 3072/Cosine; left unchanged (its points would be lost)"
    ) in out
    rolled = sorted(line.split(":")[0].strip("~ ") for line in out.splitlines() if ": config " in line)
    assert rolled == ["legacy-support-bot", "support-bot"]
    assert "(indirectly, Tenant acme changed)" in out


def test_markdown_is_a_pull_request_comment(repo: Path) -> None:
    bump_support_prompt(repo)
    (repo / ACME / "tools" / "calculator.yaml").unlink()
    code, out = plan("--format", "markdown")
    assert code == 2, out
    lines = out.splitlines()
    assert lines[0] == "### agentplane plan"
    header = lines.index("| added | changed | removed | agents that roll | errors | warnings |")
    assert lines[header + 2] == "| 0 | 2 | 1 | 1 | 1 | 0 |"
    errors = lines.index("**Errors** (fix them before merging):")
    assert lines[errors + 2].startswith("- specs/tenants/acme/agents/billing-assistant.yaml:18:")
    assert "Agent billing-assistant cannot be resolved: ToolNotFound" in lines[errors + 2]
    assert "**Pods roll:** `acme/support-bot`" in out
    details = lines.index(
        "<details><summary>tenant acme (tenant-acme): 0 added, 2 changed, 1 removed, 1 agent rolls, 1 error</summary>"
    )
    assert details > errors
    assert lines[details + 2] == "```diff"
    assert "~ Prompt support: versions added: v3" in lines[details:]
    assert "- Tool calculator" in lines[details:]
    assert lines[-1] == "</details>"


def test_json_has_stable_keys(repo: Path) -> None:
    bump_support_prompt(repo)
    code, out = plan("--format", "json")
    assert code == 1
    data = json.loads(out)
    assert data["version"] == 1
    assert data["base"]["ref"] == "main"
    assert data["base"]["how"] == "merge base of HEAD and main"
    assert data["summary"] == {"added": 0, "changed": 2, "removed": 0, "rolls": 1, "errors": 0, "warnings": 0}
    assert data["exitCode"] == 1
    (acme,) = data["tenants"]
    assert acme["name"] == "acme"
    assert acme["action"] == "changed"
    prompt = next(c for c in acme["changes"] if c["kind"] == "Prompt")
    assert prompt["notes"] == ["versions added: v3"]
    assert {"path": "spec.version", "before": 2, "after": 3} in prompt["fields"]
    (roll,) = acme["rolls"]
    assert roll["agent"] == "support-bot"
    assert roll["indirect"] is False
    assert roll["causes"] == ["Agent support-bot", "Prompt support"]
    assert roll["config"]["before"] != roll["config"]["after"]
    assert {"path": "prompt.version", "before": 2, "after": 3} in roll["fields"]
    assert data["problems"] == []


def test_outside_a_repository_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(REPO / "specs" / "tenants", tmp_path / "specs" / "tenants")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    code, _ = plan("--no-policies")
    assert code == 2
    assert "specs: not in a Git repository" in capsys.readouterr().err
