"""What keeps an Agent from resolving is decided once (`agentplane_platform.config.agent_problems`):
`resolve_agent` (operator, `agentplane up`, `plan`) refuses exactly what `agentplane validate`
reports, in the same words, at the same field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentplane_platform.config import ResolveError, resolve_agent
from agentplane_platform.specs import validate_paths

BROKEN = Path(__file__).resolve().parents[2] / "tests" / "specs" / "broken"
AGENT_CASES = {
    "29-prompt-not-found": "PromptNotFound",
    "30-prompt-version-not-found": "PromptVersionNotFound",
    "31-tool-not-found": "ToolNotFound",
    "32-tool-not-allowed": "ToolNotAllowed",
    "33-model-not-allowed": "ModelNotAllowed",
    "34-fallback-not-allowed": "ModelNotAllowed",
    "35-knowledge-not-found": "KnowledgeBaseNotFound",
    "38-missing-required-variable": "VariableMissing",
    "39-undeclared-variable": "VariableNotDeclared",
}
"""The broken-spec cases whose one error is an Agent that does not resolve, and the operator's reason."""


@pytest.mark.parametrize(("case", "reason"), sorted(AGENT_CASES.items()))
def test_resolve_agent_refuses_what_validate_reports_in_the_same_words(case: str, reason: str) -> None:
    report = validate_paths([BROKEN / f"{case}.yaml"])
    (problem,) = report.errors
    assert problem.kind == "Agent"
    specs = report.specs
    ((namespace, name),) = [key for key in specs.agents if key[1] == problem.name]
    loaded = specs.agents[(namespace, name)]
    tenant = specs.tenant_of(namespace)
    assert tenant is not None
    with pytest.raises(ResolveError) as error:
        resolve_agent(
            loaded.resource, tenant.resource, specs.prompts_in(namespace), specs.tools_in(namespace)
        )
    assert error.value.reason == reason
    assert error.value.message == problem.message
    assert loaded.document.position(error.value.path) == problem.position


def test_a_valid_tree_resolves_every_agent() -> None:
    report = validate_paths([Path(__file__).resolve().parents[2] / "specs"])
    assert report.ok
    specs = report.specs
    for (namespace, _), loaded in specs.agents.items():
        tenant = specs.tenant_of(namespace)
        assert tenant is not None
        resolve_agent(
            loaded.resource, tenant.resource, specs.prompts_in(namespace), specs.tools_in(namespace)
        )
