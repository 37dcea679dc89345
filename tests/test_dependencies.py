"""Each member imports only what its own dependencies install. An image installs a member with its
dependencies alone (`uv sync --package agentplane-runtime --no-dev`): a module that a dev dependency
happened to bring into the workspace (hiredis came with LiteLLM's proxy extra) is there in every
test of the workspace and missing in the pod, which would not start."""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
MEMBERS = ("platform", "operator", "runtime", "infra", "dashboards")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_closure(name: str) -> set[str]:
    """The distributions `name` installs, itself included, with every extra of its own (their
    imports are guarded: a member's extra is optional) and the extras its requirements name."""
    own = distribution(name).metadata.get_all("Provides-Extra") or []
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, frozenset(own))]
    while todo:
        dist, extras = todo.pop()
        if (_normal(dist), extras) in seen:
            continue
        seen.add((_normal(dist), extras))
        try:
            requires = distribution(dist).requires or []
        except PackageNotFoundError:  # an extra not installed here (`dense` outside `make test`)
            continue
        for raw in requires:
            requirement = Requirement(raw)
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({"extra": e}) for e in ("", *extras)):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return {dist for dist, _ in seen}


def _imports(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Top-level modules imported at run time (not under `if TYPE_CHECKING:`), with their lines."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.Import):
            yield from ((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno
        yield from _imports(node)


def missing_imports(source: Path, closure: set[str]) -> list[str]:
    """`file:line: module` for each module `source`'s code imports that is installed here, but by no
    distribution of `closure` (the standard library and the workspace's own packages aside)."""
    providers = packages_distributions()
    missing = []
    for path in sorted(source.rglob("*.py")):
        for module, line in _imports(ast.parse(path.read_text(), str(path))):
            if (
                module in sys.stdlib_module_names
                or module.startswith("agentplane_")
                or module == "__future__"
            ):
                continue
            provided_by = {_normal(d) for d in providers.get(module, [])}
            # nothing here provides it: an extra's module, not installed (its import is guarded)
            if provided_by and not provided_by & closure:
                missing.append(f"{path.relative_to(source.parent)}:{line}: {module}")
    return missing


@pytest.mark.parametrize("member", MEMBERS)
def test_a_member_imports_only_what_its_dependencies_install(member: str) -> None:
    closure = installed_closure(f"agentplane-{member}")
    assert missing_imports(REPO / member / "src", closure) == []


def test_an_import_no_dependency_installs_is_found(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("import os\nimport hiredis\nimport redis\n")
    closure = installed_closure("agentplane-runtime") - {"hiredis"}  # as before it was declared
    missing = missing_imports(tmp_path / "pkg", closure)
    assert [entry.rsplit(": ", 1)[1] for entry in missing] == ["hiredis"]
