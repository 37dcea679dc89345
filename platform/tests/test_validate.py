"""`agentplane validate`: the example specs are clean, and every broken case yields exactly its errors."""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from agentplane_platform.cli import run
from agentplane_platform.policies import PolicySet, load_policies
from agentplane_platform.specs import Position, Problem, validate_paths
from agentplane_platform.tool_schema import arguments_validator, schema_problems

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "specs" / "broken"
EXPECTED = REPO / "tests" / "specs" / "broken.expected"
POLICY_CASE = "-policy-"
"""Cases named `NN-policy-*.yaml` are checked against the prod admission policies of `policies/`
(the others without: the policies would add their own findings, e.g. ownership labels, to each)."""


def _prod_policies() -> PolicySet:
    return load_policies(REPO / "policies", "prod")


def _expected_by_case() -> dict[str, list[str]]:
    cases: dict[str, list[str]] = defaultdict(list)
    for path in sorted(BROKEN.rglob("*.yaml")):
        cases[_case_of(path.name)]  # every case file is a case, even one expected to be clean
    for line in EXPECTED.read_text(encoding="utf-8").splitlines():
        cases[_case_of(Path(line.split(":", 1)[0]).name)].append(line)
    return cases


def _case_of(filename: str) -> str:
    match = re.match(r"(\d+)", filename)
    assert match, filename
    return match.group(1)


CASES = _expected_by_case()


def _validate_lines(monkeypatch: pytest.MonkeyPatch, paths: list[Path]) -> list[str]:
    monkeypatch.chdir(BROKEN)
    policies = _prod_policies() if any(POLICY_CASE in p.name for p in paths) else None
    report = validate_paths([p.relative_to(BROKEN) for p in paths], policies=policies)
    return [problem.format() for problem in report.problems]


def test_examples_are_clean() -> None:
    report = validate_paths([REPO / "specs"])
    assert [p.format() for p in report.problems] == []
    assert len(report.specs.tenants) >= 2
    assert {t.resource.spec.tier for t in report.specs.tenants.values()} >= {"premium", "free"}
    assert report.generated == 5  # the CRDs of Tenant, Agent, Tool, Prompt and TierLimits
    kinds = {type(loaded.resource.spec).__name__ for loaded in report.specs.tools.values()}
    assert kinds == {"HttpTool", "McpTool", "BuiltinTool"}
    pinned = {
        (a.resource.spec.prompt.name, a.resource.spec.prompt.version) for a in report.specs.agents.values()
    }
    assert {("support", 1), ("support", 2)} <= pinned


def test_corpus_covers_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_case_yields_exactly_its_errors(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(p for p in BROKEN.rglob("*.yaml") if _case_of(p.name) == case)
    assert _validate_lines(monkeypatch, files) == CASES[case]
    assert CASES[case], "every broken case must yield at least one error"


def test_whole_corpus_at_once_reports_every_case(monkeypatch: pytest.MonkeyPatch) -> None:
    """One bad file never hides the problems of the others."""
    monkeypatch.chdir(BROKEN)
    expected = EXPECTED.read_text(encoding="utf-8").splitlines()
    report = validate_paths([Path(".")])
    assert [p.format() for p in report.problems] == [line for line in expected if POLICY_CASE not in line]
    assert report.files == sum(1 for _ in BROKEN.rglob("*.yaml"))
    policy_cases = sorted(p.relative_to(BROKEN) for p in BROKEN.rglob(f"*{POLICY_CASE}*.yaml"))
    report = validate_paths(policy_cases, policies=_prod_policies())
    assert [p.format() for p in report.problems] == [line for line in expected if POLICY_CASE in line]


def test_huge_file_is_refused_and_the_rest_still_checked(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as handle:
        handle.write(
            b"apiVersion: agentplane.io/v1alpha1\nkind: Tenant\nmetadata: {name: big}\nspec:\n  displayName: "
        )
        handle.write(b"x" * (50 * 1024 * 1024))
        handle.write(b"\n")
    (tmp_path / "other.yaml").write_text(
        "apiVersion: agentplane.io/v1alpha1\nkind: Tenant\nmetadata: {name: Bad_Name}\n"
    )
    report = validate_paths([tmp_path])
    messages = [p.format() for p in report.problems]
    assert any(m.startswith(f"{huge}:1:1: file is 50.0 MiB") for m in messages), messages
    assert any("other.yaml:1:1: Tenant/Bad_Name: spec: required field is missing" in m for m in messages), (
        messages
    )


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    report = validate_paths([tmp_path / "nope"])
    assert [p.message for p in report.problems] == ["no such file or directory"]


def test_cli_exit_codes_and_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    assert run(["validate", "specs"], out) == 0
    assert out.getvalue().rstrip().endswith(": no problems")

    out = io.StringIO()
    assert run(["validate", "--format", "json", str(BROKEN / "15-enum.yaml")], out) == 1
    payload = json.loads(out.getvalue())
    assert payload["ok"] is False
    (problem,) = payload["problems"]
    assert problem == {
        "file": "tests/specs/broken/15-enum.yaml",
        "line": 9,
        "column": 3,
        "severity": "error",
        "kind": "Tenant",
        "name": "case15",
        "path": "spec.tier",
        "message": "got 'gold' (expected 'free', 'standard' or 'premium')",
    }


def test_github_format_annotates_the_line_and_escapes_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    assert run(["validate", "--no-policies", "--format", "github", str(BROKEN / "15-enum.yaml")], out) == 1
    annotation, summary = out.getvalue().splitlines()
    assert annotation == (
        "::error file=tests/specs/broken/15-enum.yaml,line=9,col=3,title=Tenant/case15%3A spec.tier"
        "::got 'gold' (expected 'free', 'standard' or 'premium')"
    )
    assert summary.endswith("1 error, 0 warnings")
    problem = Problem("a,b.yaml", Position(1, 2), "50% off\nsecond line", severity="warning")
    assert problem.github_annotation() == (
        "::warning file=a%2Cb.yaml,line=1,col=2,title=agentplane validate::50%25 off%0Asecond line"
    )


def test_unused_prompt_variable_is_a_warning_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        "apiVersion: agentplane.io/v1alpha1\nkind: Tenant\nmetadata: {name: w}\n"
        "spec: {owners: [{name: a@example.com}], allowedModels: [m]}\n---\n"
        "apiVersion: agentplane.io/v1alpha1\nkind: Prompt\nmetadata: {name: p, namespace: tenant-w}\n"
        "spec:\n  version: 1\n  template: Hi\n  variables: [{name: unused, default: x}]\n"
    )
    report = validate_paths([tmp_path])
    assert report.ok
    assert [p.message for p in report.warnings] == [
        "variable 'unused' is declared but the template never uses it"
    ]


def test_stale_crd_among_specs_is_reported(tmp_path: Path) -> None:
    crd = (REPO / "specs" / "crds" / "agentplane.io_tools.yaml").read_text(encoding="utf-8")
    (tmp_path / "tools.yaml").write_text(crd.replace("shortNames:\n    - tl", "shortNames:\n    - tool"))
    report = validate_paths([tmp_path])
    assert [p.format().split(": ", 1)[1] for p in report.problems] == [
        "CustomResourceDefinition/tools.agentplane.io: generated CRD is stale or edited by hand "
        "(expected the output of `agentplane generate`)"
    ]


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[0-9]+$", "format": "uuid"}}},
        {  # references to $defs, to an anchor, inside a subschema with an $id of its own, to the metaschema
            "type": "object",
            "$defs": {"id": {"$anchor": "order", "type": "string"}},
            "properties": {
                "a": {"$ref": "#/$defs/id"},
                "b": {"$ref": "#order"},
                "c": {
                    "$id": "https://example.com/c",
                    "$defs": {"n": {"type": "integer"}},
                    "$ref": "#/$defs/n",
                },
                "d": {"$ref": "https://json-schema.org/draft/2020-12/schema"},
                "e": {"type": "object", "default": {"$ref": "#/not/a/reference"}, "enum": [{"$ref": "x"}]},
            },
            "required": ["a"],
        },
    ],
)
def test_usable_parameter_schemas_have_no_problems(schema: dict[str, object]) -> None:
    assert schema_problems(schema) == []
    arguments_validator(schema).validate({"a": "1"})


def test_arguments_are_checked_against_every_common_format() -> None:
    """Formats are assertions here (the metaschema's own and the model's arguments): date-time, uri
    and hostname too, which jsonschema checks only with its format-nongpl extras installed."""
    validator = arguments_validator(
        {
            "type": "object",
            "properties": {
                "when": {"type": "string", "format": "date-time"},
                "site": {"type": "string", "format": "uri"},
                "host": {"type": "string", "format": "hostname"},
                "mail": {"type": "string", "format": "email"},
            },
        }
    )
    bad = {"when": "yesterday", "site": "not a uri", "host": "-bad-", "mail": "nobody"}
    assert sorted(e.message for e in validator.iter_errors(bad)) == [
        "'-bad-' is not a 'hostname'",
        "'nobody' is not a 'email'",
        "'not a uri' is not a 'uri'",
        "'yesterday' is not a 'date-time'",
    ]
    good = {
        "when": "2026-11-30T12:00:00Z",
        "site": "https://x.example/a",
        "host": "x.example",
        "mail": "a@b.example",
    }
    assert list(validator.iter_errors(good)) == []
