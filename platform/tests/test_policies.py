"""The admission policies of policies/, offline: their cases, `agentplane policy test`, loading
errors, and `agentplane validate` checking a spec tree against them."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import cast

import pytest
import yaml

from agentplane_platform.api.v1alpha1 import KINDS, AgentLimits, TenantQuotas
from agentplane_platform.cli import run
from agentplane_platform.policies import Case, PolicyError, load_cases, load_policies, run_case

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
CASES = load_cases(POLICIES / "tests")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.policy}: {c.name}" for c in CASES])
def test_every_case_passes_offline(case: Case) -> None:
    result = run_case(POLICIES, case)
    assert result.passed, f"{case.file}:{case.line}: {result.describe()}"


@pytest.mark.parametrize("case", CASES, ids=[f"{c.policy}: {c.name}" for c in CASES])
def test_every_case_object_is_one_the_crd_admits(case: Case) -> None:
    """The API server refuses an object its CRD's schema refuses before any policy runs: such a case
    would say nothing about its policy at admission (tests/k8s/test_policies_admission.py)."""
    for obj in (case.object, case.old_object):
        if obj is not None:
            KINDS[obj["kind"]].model_validate(obj)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.policy}: {c.name}" for c in CASES])
def test_no_other_policy_denies_a_cases_object(case: Case) -> None:
    """At admission the API server answers with one denial, of whichever policy it evaluates first:
    a case's object another policy denies too would not show what its own policy does."""
    labels = {"agentplane.io/tier": case.tier} if case.tier is not None else {}
    violations = load_policies(POLICIES, case.environment).evaluate(
        case.object, old=case.old_object, namespace_labels=labels
    )
    assert sorted({v.policy for v in violations} - {case.policy}) == [], f"{case.file}:{case.line}"


def test_every_policy_has_admit_and_deny_cases() -> None:
    policies = load_policies(POLICIES, "prod")
    for name in policies.policies:
        verdicts = {c.expect for c in CASES if c.policy == name}
        assert verdicts == {"admit", "deny"}, name


def test_policy_test_prints_a_summary_per_policy() -> None:
    out = io.StringIO()
    assert run(["policy", "test", str(POLICIES)], out) == 0
    lines = out.getvalue().splitlines()
    assert "ok   agentplane-fallback-providers: 4 passed, 0 failed" in lines
    assert lines[-1] == f"{len(CASES)}/{len(CASES)} cases passed, 7 policies"


def _copy_policies(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    return copy


def test_a_failing_case_fails_policy_test_and_shows_why(tmp_path: Path) -> None:
    policies = _copy_policies(tmp_path)
    cases = yaml.safe_load((policies / "tests" / "agentplane-fallback-providers.yaml").read_text())
    cases["cases"][0]["expect"] = "deny"  # the case admits: expecting a denial must fail
    cases["cases"][0]["message"] = "nope"
    cases["cases"][2]["message"] = "a different message"  # denied, but not with this message
    (policies / "tests" / "agentplane-fallback-providers.yaml").write_text(
        yaml.safe_dump(cases, sort_keys=False)
    )
    out = io.StringIO()
    assert run(["policy", "test", str(policies)], out) == 1
    text = out.getvalue()
    assert "FAIL agentplane-fallback-providers: 2 passed, 2 failed" in text
    assert (
        "agentplane-fallback-providers.yaml:3: fallback from another provider: expected deny 'nope', got admit"
        in text
    )
    assert (
        "expected deny 'a different message', got deny 'the model and every fallback use provider azure"
        in text
    )
    assert text.splitlines()[-1] == f"{len(CASES) - 2}/{len(CASES)} cases passed, 7 policies"


def test_a_deny_case_needs_its_message(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text(
        "policy: p\ncases:\n  - name: n\n    object: {kind: Agent}\n    expect: deny\n"
    )
    with pytest.raises(PolicyError, match=r"x.yaml:3:5: case 'n': a deny case needs the message"):
        load_cases(tmp_path)


def test_broken_policy_files_are_refused_with_file_and_line(tmp_path: Path) -> None:
    policies = _copy_policies(tmp_path)
    target = policies / "agentplane-fallback-providers.yaml"
    text = target.read_text()
    target.write_text(
        text.replace("size(object.spec.model.fallbacks) == 0", "size(object.spec.model.fallbacks) == ")
    )
    with pytest.raises(
        PolicyError, match=r"agentplane-fallback-providers.yaml:\d+:\d+: compile error .*Syntax error"
    ):
        load_policies(policies, "prod")
    target.write_text(
        text.replace("policyName: agentplane-fallback-providers", "policyName: agentplane-nothing")
    )
    with pytest.raises(
        PolicyError, match=r"binding agentplane-fallback-providers names no policy 'agentplane-nothing'"
    ):
        load_policies(policies, "prod")
    with pytest.raises(
        PolicyError, match=r"unknown policy environment 'staging' \(environments: dev, prod\)"
    ):
        load_policies(POLICIES, "staging")
    with pytest.raises(PolicyError, match="no such policies directory"):
        load_policies(tmp_path / "nope", "prod")


def test_what_the_api_server_refuses_in_a_validation_is_refused(tmp_path: Path) -> None:
    """A ValidatingAdmissionPolicy validation has expression, message, messageExpression and reason
    only: the API server refuses anything else (a `fieldPath` too), so the policy would not install."""
    policies = _copy_policies(tmp_path)
    target = policies / "agentplane-tool-endpoints.yaml"
    text = target.read_text()
    target.write_text(
        text.replace("    reason: Invalid\n", "    reason: Invalid\n    fieldPath: .spec.url\n", 1)
    )
    with pytest.raises(
        PolicyError,
        match=r"agentplane-tool-endpoints.yaml:\d+:\d+: a ValidatingAdmissionPolicy validation has no "
        r"fieldPath .* goes in the agentplane.io/field-paths annotation",
    ):
        load_policies(policies, "prod")
    target.write_text(text.replace('[".spec.url", ".spec.timeoutSeconds"]', '[".spec.url"]'))
    with pytest.raises(
        PolicyError, match=r"agentplane-tool-endpoints.yaml:\d+:\d+: expected a JSON list of 2 field paths"
    ):
        load_policies(policies, "prod")


def _agent(limits: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "agentplane.io/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "a", "namespace": "tenant-x"},
        "spec": {
            "model": {"name": "openai/gpt-4o-mini"},
            "prompt": {"name": "p", "version": 1},
            "limits": limits,
        },
    }


def test_crd_defaults_apply_before_the_policies_as_at_admission() -> None:
    policies = load_policies(POLICIES, "prod")
    free = {"agentplane.io/tier": "free"}
    # limits is set but maxToolCalls is not: the CRD defaults it to 8, above free's 6
    (violation,) = policies.evaluate(_agent({"timeoutSeconds": 30}), namespace_labels=free)
    assert violation.policy == "agentplane-agent-limits"
    assert violation.binding == "agentplane-agent-limits-free"
    assert violation.field_path == ".spec.limits.maxToolCalls"
    assert violation.reason == "Forbidden"
    assert violation.admission_message().startswith(
        "ValidatingAdmissionPolicy 'agentplane-agent-limits' with binding 'agentplane-agent-limits-free' "
        "denied request: spec.limits.maxToolCalls is 8"
    )
    assert policies.evaluate(_agent({"maxToolCalls": 6}), namespace_labels=free) == []
    # a namespace without a tier label matches none of the tiered bindings
    assert policies.evaluate(_agent({"timeoutSeconds": 30}), namespace_labels={}) == []


def test_a_tier_without_its_params_is_denied(tmp_path: Path) -> None:
    policies = _copy_policies(tmp_path)
    (policies / "params" / "prod" / "free.yaml").unlink()
    violations = load_policies(policies, "prod").evaluate(
        _agent({"maxToolCalls": 1}), namespace_labels={"agentplane.io/tier": "free"}
    )
    assert {v.policy for v in violations} == {"agentplane-approved-models", "agentplane-agent-limits"}
    assert {v.message for v in violations} == {
        "failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction"
    }


SPECS = {
    "tenant.yaml": """\
apiVersion: agentplane.io/v1alpha1
kind: Tenant
metadata:
  name: t
spec:
  owners: [{name: ops@example.com}]
  tier: free
  allowedModels: [azure/*]
  quotas:
    llm: {tokensPerMinute: 20000, requestsPerMinute: 60, monthlyBudgetUsd: 50}
    maxAgents: 3
    compute: {cpu: "2", memory: 4Gi, pods: 8}
""",
    "agent.yaml": """\
apiVersion: agentplane.io/v1alpha1
kind: Prompt
metadata: {name: p, namespace: tenant-t}
spec: {version: 1, template: Be helpful.}
---
apiVersion: agentplane.io/v1alpha1
kind: Agent
metadata:
  name: a
  namespace: tenant-t
spec:
  model:
    name: azure/gpt-4o
    fallbacks: [azure/gpt-4o-mini]
  prompt: {name: p, version: 1}
  limits: {maxToolCalls: 2}
""",
}


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "specs"
    tree.mkdir()
    for name, text in SPECS.items():
        (tree / name).write_text(text)
    return tree


def test_validate_reports_every_policy_violation_at_its_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    assert run(["validate", "specs", "--policies", str(POLICIES)], out) == 1
    lines = out.getvalue().splitlines()
    assert lines[:-1] == [
        "specs/agent.yaml:13:5: Agent/a: spec.model.name: [agentplane-approved-models] model azure/gpt-4o is not "
        "approved for the free tier: use one of openai/gpt-4o-mini, ollama/* (or ask the platform team to approve it)",
        "specs/agent.yaml:14:5: Agent/a: spec.model.fallbacks: [agentplane-approved-models] fallback "
        "azure/gpt-4o-mini is not approved for the free tier: use one of openai/gpt-4o-mini, ollama/* "
        "(or ask the platform team to approve it)",
        "specs/agent.yaml:14:5: Agent/a: spec.model.fallbacks: [agentplane-fallback-providers] the model and every "
        "fallback use provider azure: add a fallback from another provider, so that an outage of azure does not "
        "stop the agent",
        "specs/tenant.yaml:3:1: Tenant/t: metadata.labels: [agentplane-ownership-labels] label agentplane.io/cost-center "
        "is required: set metadata.labels['agentplane.io/cost-center'] to the cost center that pays for the tenant "
        "(cc-<digits>)",
        "specs/tenant.yaml:3:1: Tenant/t: metadata.labels: [agentplane-ownership-labels] label agentplane.io/team is "
        "required: set metadata.labels['agentplane.io/team'] to the owning team's name (lowercase letters, digits "
        "and '-')",
    ]
    out = io.StringIO()
    assert run(["validate", "specs", "--policies", str(POLICIES), "--format", "json"], out) == 1
    payload = json.loads(out.getvalue())
    assert [(p["file"], p["line"], p["column"]) for p in payload["problems"]] == [
        ("specs/agent.yaml", 13, 5),
        ("specs/agent.yaml", 14, 5),
        ("specs/agent.yaml", 14, 5),
        ("specs/tenant.yaml", 3, 1),
        ("specs/tenant.yaml", 3, 1),
    ]
    assert tree.is_dir()


def test_validate_fails_closed_without_a_policies_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert run(["validate", "specs"], io.StringIO()) == 2
    assert capsys.readouterr().err == (
        "error: policies: no policies directory (give it with --policies DIR, "
        "or skip the admission policies with --no-policies)\n"
    )
    out = io.StringIO()
    assert run(["validate", "specs", "--format", "json"], out) == 2
    assert json.loads(out.getvalue())["ok"] is False
    out = io.StringIO()
    assert run(["validate", "specs", "--no-policies"], out) == 0
    assert out.getvalue().endswith(": no problems\n")
    assert run(["validate", "specs", "--policies", str(POLICIES), "--environment", "qa"], io.StringIO()) == 2
    assert "unknown policy environment 'qa'" in capsys.readouterr().err


@pytest.mark.parametrize("tier", ["free", "standard", "premium"])
def test_the_defaults_the_policies_assume_are_the_models_defaults(tier: str) -> None:
    """A whole `limits` or `quotas` left out is not defaulted by the CRD; the policies use the
    runtime's defaults for it (`orValue(...)`). They must be the models' defaults: leaving the
    object out and writing the defaults in must get the same verdicts."""
    policies = load_policies(POLICIES, "prod")
    labels = {"agentplane.io/tier": tier}

    def verdicts(obj: dict[str, object]) -> list[tuple[str, str]]:
        return sorted((v.policy, v.message) for v in policies.evaluate(obj, namespace_labels=labels))

    agent = _agent(AgentLimits().model_dump(by_alias=True))
    spec = cast("dict[str, object]", agent["spec"])
    without_limits = {**agent, "spec": {k: v for k, v in spec.items() if k != "limits"}}
    assert verdicts(without_limits) == verdicts(agent)
    tenant = yaml.safe_load(SPECS["tenant.yaml"])
    tenant["spec"]["tier"] = tier
    tenant["spec"]["quotas"] = TenantQuotas().model_dump(by_alias=True)
    without_quotas = {**tenant, "spec": {k: v for k, v in tenant["spec"].items() if k != "quotas"}}
    assert verdicts(without_quotas) == verdicts(tenant)
    if tier == "free":  # the defaults are above the free ceilings: the comparison is not vacuous
        assert any(p == "agentplane-tenant-quotas" for p, _ in verdicts(tenant))
        assert any(p == "agentplane-agent-limits" for p, _ in verdicts(agent))
