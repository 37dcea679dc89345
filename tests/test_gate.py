"""The spec repository's gate: the workflow's commands run as written, CODEOWNERS gives each team its files."""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import yaml

from agentplane_platform.cli import run

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "specs.yaml"
CODEOWNERS = REPO / ".github" / "CODEOWNERS"
PLATFORM_TEAM = "@agentplane/platform-team"


def _agentplane_commands() -> list[list[str]]:
    """Every `uv run agentplane ...` command of the workflow, with its env values substituted."""
    workflow = yaml.safe_load(WORKFLOW.read_text())
    env = {**workflow["env"], "BASE_REF": "main"}
    commands = []
    for step in workflow["jobs"]["gate"]["steps"]:
        script = step.get("run", "")
        script = re.sub(r"\\\n\s*", " ", script)  # join continued lines
        for line in script.splitlines():
            line = line.strip().split(" > ")[0]
            if line.startswith("uv run agentplane "):
                expanded = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line)
                commands.append(shlex.split(expanded)[3:])
    return commands


def test_the_workflow_runs_validate_policy_tests_and_plan() -> None:
    assert [command[0] for command in _agentplane_commands()] == ["validate", "policy", "plan"]


def test_every_agentplane_command_of_the_workflow_runs_as_written(tmp_path: Path) -> None:
    """On a clone whose branch is the base: validate and the policy tests pass, plan says no change."""
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "update-ref", "refs/remotes/origin/main", "HEAD"], check=True)
    cwd = os.getcwd()
    os.chdir(clone)
    try:
        for command in _agentplane_commands():
            out = io.StringIO()
            code = run(command, out)
            assert code == 0, f"agentplane {shlex.join(command)} exited {code}:\n{out.getvalue()}"
            if command[0] == "validate":
                assert "::error" not in out.getvalue()
    finally:
        os.chdir(cwd)


def _owners(path: str) -> list[str]:
    """GitHub's rule for our patterns: the last matching line wins; `/x/` owns everything under x."""
    owners: list[str] = []
    for line in CODEOWNERS.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pattern, *who = line.split()
        if pattern == "*":
            matched = True
        elif pattern.endswith("/"):
            prefix = pattern.strip("/")
            matched = fnmatchcase(path, f"{prefix}/*") and all(
                fnmatchcase(part, glob)
                for part, glob in zip(path.split("/"), prefix.split("/"), strict=False)
            )
        else:
            matched = fnmatchcase(path, pattern.lstrip("/")) and path.count("/") == pattern.lstrip("/").count(
                "/"
            )
        if matched:
            owners = who
    return owners


def _files(under: Path) -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in under.rglob("*") if p.is_file())


@pytest.mark.parametrize("tenant", sorted(p.name for p in (REPO / "specs" / "tenants").iterdir()))
def test_each_tenant_team_owns_its_folder_but_not_its_limits(tenant: str) -> None:
    folder = REPO / "specs" / "tenants" / tenant
    files = _files(folder)
    tenant_file = f"specs/tenants/{tenant}/tenant.yaml"
    assert tenant_file in files
    assert _owners(tenant_file) == [PLATFORM_TEAM], "the tier, quotas and budget are the platform's"
    team = {tuple(_owners(f)) for f in files if f != tenant_file}
    assert len(team) == 1, f"{tenant}: one team for the whole folder, got {team}"
    (owners,) = team
    assert owners, f"{tenant}: no owners"
    assert PLATFORM_TEAM not in owners, f"{tenant}: no tenant team in CODEOWNERS"


def test_the_platform_team_owns_policies_and_generated_files() -> None:
    for path in ["policies/README.md", "specs/crds/agentplane.io_agents.yaml", ".github/CODEOWNERS"]:
        assert _owners(path) == [PLATFORM_TEAM], path
