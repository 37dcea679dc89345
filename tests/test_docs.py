"""The contributor documents stay true: every file, module and make target they name exists."""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ("docs/architecture.md", "CONTRIBUTING.md")
CODE = re.compile(r"`([^`\n]+)`")
MODULE = re.compile(r"^agentplane_[a-z_]+(\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAKE = re.compile(r"^make ([a-z][a-z-]*)", re.MULTILINE)
FILE_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".sh", ".toml", ".json")


def _repo_paths() -> list[str]:
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    paths = set(listed)
    for path in listed:  # and every folder above a file
        parts = path.split("/")
        paths.update("/".join(parts[:i]) + "/" for i in range(1, len(parts)))
    return sorted(paths)


def _names(doc: str) -> list[str]:
    return CODE.findall((REPO / doc).read_text())


def _path_like(token: str) -> str | None:
    """The part of a `code` token that names a repository path, if it names one."""
    skip = ("/", "http", "-", "$", ".venv", ".agentplane", "agentplane.io/")
    if " " in token or "=" in token or token.startswith(skip) or "..." in token or "*" in token:
        return None
    if "<" in token:  # `specs/tenants/<tenant>/` and `platform/tests/test_<module>.py` name their folder
        folder = token.split("<", 1)[0].rpartition("/")[0]
        return folder + "/" if folder else None
    if "/" in token or token.endswith(FILE_SUFFIXES):
        return token
    return None


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_document_names_exists(doc: str) -> None:
    paths = _repo_paths()
    missing = []
    for token in _names(doc):
        path = _path_like(token)
        if path is None or not path:
            continue
        # a full path from the root, or the tail of one (`api/schemas.py`, `manifests.py`)
        wanted = (path, path.rstrip("/") + "/")
        if not any(p in wanted or p.endswith(tuple("/" + w for w in wanted)) for p in paths):
            missing.append(token)
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[i:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS)
def test_every_module_a_document_names_exists(doc: str) -> None:
    modules = [token for token in _names(doc) if MODULE.match(token)]
    assert modules, f"{doc} names no module: the pattern no longer matches how it names them"
    missing = [name for name in modules if not _resolves(name)]
    assert not missing, f"{doc} names modules or attributes that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_make_target_a_document_names_exists(doc: str) -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    text = (REPO / doc).read_text()
    named = set(MAKE.findall(text))  # in code blocks
    for token in _names(doc):  # in `make x`
        match = MAKE.match(token)
        if match is not None:
            named.add(match.group(1))
    assert named or doc != "CONTRIBUTING.md", "CONTRIBUTING.md names no make target: the pattern is stale"
    missing = sorted(named - targets)
    assert not missing, f"{doc} names make targets the Makefile does not have: {missing}"


def test_a_wrong_name_is_caught() -> None:
    """The checks above find what they look for (so a green run means something)."""
    assert _path_like("specs/tenants/<tenant>/") == "specs/tenants/"
    assert _path_like("platform/tests/test_<module>.py") == "platform/tests/"
    assert _path_like("api/schemas.py") == "api/schemas.py"
    assert _path_like("X-Request-Id") is None
    assert _resolves("agentplane_platform.config.resolve_agent")
    assert not _resolves("agentplane_platform.config.resolve_agnet")
    assert not _resolves("agentplane_runtime.no_such_module")
