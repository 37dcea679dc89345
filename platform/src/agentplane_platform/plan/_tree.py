"""A spec tree as `agentplane plan` compares it: the valid objects and the Git-kept knowledge files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agentplane_platform.specs import Report, SpecSet, validate_paths


@dataclass(slots=True)
class SpecTree:
    """The objects of a tree (indexed as `validate` indexes them) and its knowledge files."""

    specs: SpecSet
    knowledge: dict[str, dict[str, str]] = field(default_factory=dict)
    """tenant -> `<knowledge base>/<path>` -> sha256 of the file's content."""
    invalid: set[tuple[str, str]] = field(default_factory=set)
    """(kind, name) of objects present but not valid (they are not in `specs`)."""


def knowledge_files(paths: Sequence[Path]) -> dict[str, dict[str, str]]:
    """The files under `tenants/<tenant>/knowledge/<kb>/` below the paths, by tenant, with content hashes."""
    found: dict[str, dict[str, str]] = {}
    for path in paths:
        if not path.is_dir():
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            parts = Path(root).parts
            for index in range(len(parts) - 3, -1, -1):
                if parts[index] == "tenants" and parts[index + 2] == "knowledge":
                    tenant, below = parts[index + 1], parts[index + 3 :]
                    break
            else:
                continue
            for name in sorted(files):
                digest = hashlib.sha256(Path(root, name).read_bytes()).hexdigest()
                found.setdefault(tenant, {})["/".join((*below, name))] = digest
    return found


def load_tree(paths: Sequence[Path], *, report: Report | None = None) -> tuple[SpecTree, Report]:
    """Read a spec tree (validated as `agentplane validate` does, unless `report` is given)."""
    report = report if report is not None else validate_paths(paths)
    valid = {(loaded.resource.kind_name, loaded.resource.name) for loaded in report.specs_objects()}
    invalid = {
        (p.kind, p.name)
        for p in report.errors
        if p.kind is not None and p.name is not None and (p.kind, p.name) not in valid
    }
    return SpecTree(report.specs, knowledge_files(paths), invalid), report
