"""The shape of the code holds by itself: the layering contract of `make lint`, and the pre-commit hooks
that run the same linters on each commit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
MEMBERS = ("platform", "operator", "runtime", "infra", "dashboards")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _copy_packages(into: Path) -> Path:
    """A copy of every member's package, to break on purpose; put first on PYTHONPATH, it is what
    import-linter analyses instead of the installed (editable) members."""
    packages = into / "packages"
    for member in MEMBERS:
        shutil.copytree(
            REPO / member / "src" / f"agentplane_{member}",
            packages / f"agentplane_{member}",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return packages


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    config = cwd / "pyproject.toml"
    return subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--no-cache", "--config", str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_repository_keeps_its_layers() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, ANSI.sub("", result.stdout + result.stderr)
    assert "1 kept, 0 broken" in ANSI.sub("", result.stdout)


@pytest.mark.parametrize(
    ("importer", "module", "imported"),
    [
        ("runtime", "tools", "agentplane_operator.builders"),  # the two services never import each other
        ("operator", "reconcile", "agentplane_runtime.retrieval"),
        ("platform", "config", "agentplane_runtime.llm"),  # platform never reaches up
        ("infra", "__init__", "agentplane_dashboards"),
    ],
)
def test_an_import_across_the_layers_is_refused(
    tmp_path: Path, importer: str, module: str, imported: str
) -> None:
    packages = _copy_packages(tmp_path)
    source = packages / f"agentplane_{importer}" / f"{module}.py"
    source.write_text(source.read_text() + f"\nimport {imported}  # noqa: E402\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")

    result = _lint_imports(tmp_path, pythonpath=packages)

    output = ANSI.sub("", result.stdout)
    assert result.returncode != 0, output
    target = imported.split(".")[0]
    assert f"agentplane_{importer} is not allowed to import {target}" in output, output
    where = f"agentplane_{importer}" if module == "__init__" else f"agentplane_{importer}.{module}"
    assert f"- {where} -> {imported} (l." in output, output


def _git(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_pre_commit_refuses_a_commit_that_breaks_a_linter(tmp_path: Path) -> None:
    """`pre-commit install` as CONTRIBUTING.md says, then commits as a contributor makes them: a clean one
    goes in; a lint error and an import across the layers are each refused, naming what is wrong."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in (".pre-commit-config.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, repo / name)
    (repo / ".venv").symlink_to(REPO / ".venv")
    packages = _copy_packages(repo)
    env = {
        **os.environ,
        "PYTHONPATH": str(packages),
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "NO_COLOR": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    assert _git(repo, "init", "-q", env=env).returncode == 0
    (repo / ".gitignore").write_text(".venv\n")
    installed = subprocess.run(
        [str(VENV_BIN / "pre-commit"), "install"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (repo / ".git" / "hooks" / "pre-commit").exists()
    assert (repo / ".git" / "hooks" / "pre-push").exists()

    _git(repo, "add", ".", env=env)
    clean = _git(repo, "commit", "-q", "-m", "the packages as they are", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    sloppy = packages / "agentplane_runtime" / "sloppy.py"
    sloppy.write_text("import os\n")  # F401: imported but unused
    _git(repo, "add", str(sloppy), env=env)
    refused = _git(repo, "commit", "-q", "-m", "an unused import", env=env)
    assert refused.returncode != 0
    assert "F401" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    sloppy.unlink()
    _git(repo, "add", "-A", env=env)

    tools = packages / "agentplane_runtime" / "tools.py"
    tools.write_text(tools.read_text() + "\nfrom agentplane_operator import builders  # noqa: E402, F401\n")
    _git(repo, "add", str(tools), env=env)
    refused = _git(repo, "commit", "-q", "-m", "the runtime reaching into the operator", env=env)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "agentplane_runtime is not allowed to import agentplane_operator" in output, output
