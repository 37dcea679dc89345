"""CRDs and JSON Schemas are derived from the models, structural, documented and checked in fresh."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentplane_platform.api.v1alpha1 import KINDS, Agent, Prompt, Tool
from agentplane_platform.cli import run
from agentplane_platform.explain import ExplainError, explain
from agentplane_platform.generate import generate
from agentplane_platform.schemas import crd, json_schema
from agentplane_platform.specs import validate_paths
from agentplane_platform.templates import TemplateError, render, variables_used

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_generated_files_are_fresh() -> None:
    result = generate(REPO / "specs", check=True)
    assert (result.stale, result.unexpected) == ([], []), "run `agentplane generate`"


def test_generate_check_fails_on_stale_and_generate_fixes_it(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run(["generate", "--specs", str(tmp_path)], out) == 0
    stale = tmp_path / "crds" / "agentplane.io_agents.yaml"
    stale.write_text(stale.read_text().replace("Primary model", "Main model"))
    (tmp_path / "schemas" / "leftover.json").write_text("{}")
    out = io.StringIO()
    assert run(["generate", "--check", "--specs", str(tmp_path)], out) == 1
    assert f"{stale}: stale" in out.getvalue()
    assert "leftover.json: not generated" in out.getvalue()
    assert run(["generate", "--specs", str(tmp_path)], io.StringIO()) == 0
    assert run(["generate", "--check", "--specs", str(tmp_path)], io.StringIO()) == 0
    assert not (tmp_path / "schemas" / "leftover.json").exists()


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Violations of the structural-schema rules the API server enforces."""
    bad = []
    for key in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs"):
        if key in node:
            bad.append(f"{path}: has {key}")
    if node.get("additionalProperties") is False:
        bad.append(f"{path}: additionalProperties: false")
    if "properties" in node and "additionalProperties" in node:
        bad.append(f"{path}: both properties and additionalProperties")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        bad.append(f"{path}: no type")
    if "default" in node and node["default"] is None:
        bad.append(f"{path}: null default")
    for name, sub in node.get("properties", {}).items():
        bad.extend(_walk(sub, f"{path}.{name}"))
    if isinstance(node.get("items"), dict):
        bad.extend(_walk(node["items"], f"{path}[]"))
    if isinstance(node.get("additionalProperties"), dict):
        bad.extend(_walk(node["additionalProperties"], f"{path}.*"))
    return bad


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_crd_schema_is_structural(kind: Any) -> None:
    definition = crd(kind)
    version = definition["spec"]["versions"][0]
    assert _walk(version["schema"]["openAPIV3Schema"], kind.kind_name) == []
    # TierLimits (parameters of the admission policies) has no status for the operator to write
    assert version.get("subresources") == ({"status": {}} if "status" in kind.model_fields else None)
    # `kubectl get agentplane` lists what tenants manage, not the policies' parameters
    assert definition["spec"]["names"].get("categories") == (["agentplane"] if kind.tenant_object else None)
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert ({"Ready", "Age"} if "status" in kind.model_fields else {"Age"}) <= columns


def test_every_name_a_kind_answers_to_is_its_own() -> None:
    """The API server accepts no name two CRDs of a group share: the later one is never Established."""
    owners: dict[str, list[str]] = {}
    for kind in KINDS.values():
        names = crd(kind)["spec"]["names"]
        for name in {names["plural"], names["singular"], *names.get("shortNames", [])}:
            owners.setdefault(name, []).append(kind.kind_name)
    assert {name: kinds for name, kinds in owners.items() if len(kinds) > 1} == {}


def test_descriptions_come_from_docstrings() -> None:
    schema = crd(Agent)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    model = schema["properties"]["spec"]["properties"]["model"]
    assert model["description"] == "The model that answers and its fallbacks."
    assert model["properties"]["name"]["description"].startswith("Primary model, as a litellm model name")


def test_cel_rules_the_schema_cannot_say() -> None:
    prompt = crd(Prompt)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["rule"] for r in prompt["x-kubernetes-validations"]}
    assert "self.template == oldSelf.template || self.version > oldSelf.version" in rules
    assert "self.version >= oldSelf.version" in rules
    tool = crd(Tool)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    tool_rules = {r["rule"] for r in tool["x-kubernetes-validations"]}
    assert "self.type != 'http' || has(self.url)" in tool_rules
    assert "self.type != 'builtin' || !has(self.url)" in tool_rules
    # A variant-only field carries no default, or the API server would set it on every variant.
    assert "default" not in tool["properties"]["method"]
    secret = tool["properties"]["auth"]["properties"]["secretRef"]
    assert secret["x-kubernetes-validations"][0]["rule"] == "has(self.kubernetes) != has(self.keyVault)"


def test_json_schema_is_for_editors() -> None:
    schema = json_schema(Tool)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "status" not in schema["properties"]
    assert "x-kubernetes-validations" not in str(schema)
    assert schema["required"][:2] == ["apiVersion", "kind"]


def test_examples_round_trip_through_the_models() -> None:
    report = validate_paths([REPO / "specs" / "tenants"])
    for loaded in report.specs_objects():
        dumped = loaded.resource.model_dump(mode="json", exclude_none=True)
        again = type(loaded.resource).model_validate(dumped, by_alias=True, by_name=False)
        assert again == loaded.resource
        assert yaml.safe_load(yaml.safe_dump(dumped)) == dumped


def test_explain_prints_field_docs() -> None:
    text = explain("agent.spec.model")
    assert "KIND:       Agent" in text
    assert "FIELD: model <Object> -required-" in text
    assert "fallbacks\t<[]string>" in text
    assert "Possible values: http, mcp, builtin" in explain("tool.spec.type")
    assert "changing the template requires a higher version" in explain("prompts.spec")
    with pytest.raises(ExplainError, match=r"field 'modle' does not exist in agent\.spec"):
        explain("ag.spec.modle")
    with pytest.raises(ExplainError, match="unknown kind 'gadget'"):
        explain("gadget")


def test_templates() -> None:
    used, malformed = variables_used("Hi {{ name }}, {{name}} and {{ date }} {{ bad-one }}")
    assert used == {"name", "date"}
    assert malformed == ["{{ bad-one }}"]
    assert render("Hi {{ name }}!", {"name": "Ada"}) == "Hi Ada!"
    with pytest.raises(TemplateError, match="no value for variable 'who'"):
        render("{{ who }}", {})
