"""Loading and validating spec trees: `agentplane validate` and everything that reads `specs/`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agentplane_platform.api.v1alpha1 import Resource, tenant_namespace_labels

from ._check import SpecSet, check, tenant_dir
from ._load import Loaded, LoadResult, load_paths, load_yaml_models
from ._problems import Position, Problem, dotted
from ._yaml import Document

if TYPE_CHECKING:
    from agentplane_platform.policies import PolicySet

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
    "policy_problems",
    "tenant_dir",
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

    def specs_objects(self) -> list[Loaded[Resource]]:
        """Every valid object found."""
        s = self.specs
        return [*s.tenants.values(), *s.agents.values(), *s.tools.values(), *s.prompts.values()]

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_paths(paths: Sequence[Path], *, policies: PolicySet | None = None) -> Report:
    """Load every spec under the paths and report all of their problems at once; with `policies`,
    also what those admission policies would deny of each valid object (as a CREATE, its namespace
    labelled as the operator labels its tenant's), at the field each denial names."""
    loaded: LoadResult = load_paths(paths)
    specs, problems = check(loaded)
    report = Report(specs, loaded.files, loaded.documents, loaded.generated)
    if policies is not None:
        problems.extend(policy_problems(report, policies))
    report.problems = sorted([*loaded.problems, *problems], key=Problem.sort_key)
    return report


def policy_problems(report: Report, policies: PolicySet) -> list[Problem]:
    """What `policies` deny of the valid objects of a report, each at its field's file:line:column,
    the message prefixed with the policy's name."""
    from agentplane_platform.policies import field_path  # here: policies imports specs

    found: list[Problem] = []
    for loaded in report.specs_objects():
        labels: dict[str, str] | None = None
        namespace = loaded.resource.metadata.namespace
        if namespace is not None:
            tenant = report.specs.tenant_of(namespace)
            labels = tenant_namespace_labels(tenant.resource) if tenant is not None else None
        for violation in policies.evaluate(loaded.document.data, namespace_labels=labels):
            path = field_path(violation.field_path) if violation.field_path else ()
            found.append(loaded.at(path, f"[{violation.policy}] {violation.message}"))
    return found
