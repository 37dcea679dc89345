"""Loading and validating spec trees: `agentplane validate` and everything that reads `specs/`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._check import SpecSet, check
from ._load import Loaded, LoadResult, load_paths, load_yaml_models
from ._problems import Position, Problem, dotted
from ._yaml import Document

__all__ = [
    "Document",
    "LoadResult",
    "Loaded",
    "Position",
    "Problem",
    "Report",
    "SpecSet",
    "dotted",
    "load_yaml_models",
    "validate_paths",
]


@dataclass(slots=True)
class Report:
    """The outcome of validating a spec tree."""

    specs: SpecSet
    files: int
    documents: int
    generated: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def specs_objects(self) -> list[Loaded[Any]]:
        """Every valid object found."""
        s = self.specs
        return [*s.tenants.values(), *s.agents.values(), *s.tools.values(), *s.prompts.values()]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_paths(paths: Sequence[Path]) -> Report:
    """Load every spec under the paths and report all of their problems at once."""
    loaded: LoadResult = load_paths(paths)
    specs, problems = check(loaded)
    everything = sorted([*loaded.problems, *problems], key=Problem.sort_key)
    return Report(specs, loaded.files, loaded.documents, loaded.generated, everything)
