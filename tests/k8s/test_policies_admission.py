"""Every case of `policies/tests/`, offline and at admission: the API server, with the policies and
an environment's TierLimits installed, gives each case's object the verdict and the message that
`agentplane validate`'s evaluation gives it, and that the case expects; and it type-checks every
policy without a warning.

The session's cluster is shared: the policies are installed for this module only, and removed (and
no longer enforced) when it ends. Each change (install, params of another environment, a namespace's
tier) is waited for on the API server's own answers (`support.admission.AdmissionProbes`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentplane_platform.api.v1alpha1 import TIER_LABEL
from agentplane_platform.policies import Case, PolicySet, Violation, load_cases, load_policies, run_case
from support.admission import AdmissionProbes, Answer, ApiServer, collection_path
from support.cluster import Cluster, apply_policies, delete_policies, policy_files

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
CASES = load_cases(POLICIES / "tests")
ENVIRONMENTS = sorted({case.environment for case in CASES})


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str
    """The message of a denial, as the API server returns it; empty when admitted."""
    reason: str
    """`Status.reason` of a denial; empty when admitted."""


@dataclass
class Installed:
    """The policies as installed in the session's cluster for this module."""

    warnings: dict[str, list[str]]
    """Policy name -> the API server's type-check warnings."""
    probes: AdmissionProbes
    environment: str
    """Whose TierLimits are installed."""
    created: set[str] = field(default_factory=set)
    """Namespaces this module created."""
    labelled: dict[str, str | None] = field(default_factory=dict)
    """Namespaces this module labelled, with the tier label they had before."""


def _param_objects(environment: str) -> list[dict[str, Any]]:
    return [
        doc
        for path in policy_files(POLICIES, environment).params
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


@pytest.fixture(scope="module")
def api(k8s: Cluster) -> ApiServer:
    return ApiServer(k8s)


def _existing(k8s: Cluster) -> list[dict[str, Any]]:
    """The objects of `policies/` (params of every environment first) already in the cluster, as
    they could be applied again: a `make cluster` reused by the tests has the dev ones."""
    files = [path for name in ENVIRONMENTS for path in policy_files(POLICIES, name).params]
    files += policy_files(POLICIES, ENVIRONMENTS[0]).policies
    found: list[dict[str, Any]] = []
    for path in files:
        out = k8s.kubectl("get", "-f", str(path), "--ignore-not-found", "-o", "json").stdout
        listed = json.loads(out) if out.strip() else {"items": []}
        items = listed.get("items") or [] if "items" in listed else [listed]
        for item in items:
            meta = item["metadata"]
            keep = ("name", "namespace", "labels", "annotations")
            found.append({**item, "metadata": {k: meta[k] for k in keep if k in meta}, "status": None})
    return [{k: v for k, v in item.items() if v is not None} for item in found]


@pytest.fixture(scope="module")
def installed(k8s: Cluster, api: ApiServer) -> Iterator[Installed]:
    environment = ENVIRONMENTS[0]
    probes = AdmissionProbes(k8s, api, _param_objects(environment)[0])
    state = Installed({}, probes, environment)
    before = _existing(k8s)
    try:
        state.warnings = apply_policies(k8s, POLICIES, environment)
        probes.install()  # after the policies: enforced means they are too
        yield state
    finally:
        for name in ENVIRONMENTS:
            delete_policies(k8s, POLICIES, name)
        probes.uninstall()  # after the policies: not enforced means they are not either
        for namespace, tier in state.labelled.items():
            if namespace not in state.created:
                label = f"{TIER_LABEL}={tier}" if tier is not None else f"{TIER_LABEL}-"
                k8s.kubectl("label", "namespace", namespace, label, "--overwrite")
        for namespace in state.created:
            k8s.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")
        if before:  # put back what was there
            listing = {"apiVersion": "v1", "kind": "List", "items": before}
            k8s.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(listing))


@pytest.fixture(scope="module")
def environment(request: pytest.FixtureRequest, k8s: Cluster, installed: Installed) -> str:
    """The environment whose TierLimits are in effect (switched when another one was)."""
    wanted: str = request.param
    if installed.environment != wanted:
        old = policy_files(POLICIES, installed.environment).params
        k8s.kubectl("delete", "--ignore-not-found", *[arg for path in old for arg in ("-f", str(path))])
        new = policy_files(POLICIES, wanted).params
        k8s.kubectl("apply", "--server-side", *[arg for path in new for arg in ("-f", str(path))])
        installed.environment = wanted
    installed.probes.sync_params()
    return wanted


def _set_tier(k8s: Cluster, installed: Installed, namespace: str, tier: str | None) -> None:
    """Label `namespace` (created when missing) with the case's tier; wait until admission sees it."""
    found = k8s.kubectl_json("get", "namespaces", "--field-selector", f"metadata.name={namespace}")["items"]
    if not found:
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        k8s.kubectl("create", "-f", "-", input=json.dumps(manifest))
        installed.created.add(namespace)
        current = None
    else:
        current = (found[0]["metadata"].get("labels") or {}).get(TIER_LABEL)
    installed.labelled.setdefault(namespace, current)
    if tier is not None:
        if current != tier:
            k8s.kubectl("label", "namespace", namespace, f"{TIER_LABEL}={tier}", "--overwrite")
        installed.probes.wait_for_tier(namespace, tier)
    elif current is not None:
        k8s.kubectl("label", "namespace", namespace, f"{TIER_LABEL}-")
        installed.probes.wait_for_no_tier(namespace)


def _verdict(answer: Answer) -> Verdict:
    # A dry-run create of a name that exists is refused by storage, after admission admitted it.
    if answer.allowed or answer.reason == "AlreadyExists":
        return Verdict(True, "", "")
    return Verdict(False, answer.message, answer.reason)


@functools.cache
def _policy_set(environment: str) -> PolicySet:
    return load_policies(POLICIES, environment)


def _offline(case: Case) -> tuple[Verdict, list[Violation]]:
    """What `agentplane validate`'s evaluation of every policy of the case's environment makes of the
    case's object, as the API server would answer it; and the violations."""
    labels = {TIER_LABEL: case.tier} if case.tier is not None else {}
    violations = _policy_set(case.environment).evaluate(
        case.object, old=case.old_object, namespace_labels=labels
    )
    if not violations:
        return Verdict(True, "", ""), violations
    first = violations[0]  # the API server answers with its first denial
    resource = collection_path(case.object).rsplit("/", 1)[1]
    group = case.object["apiVersion"].split("/")[0]
    name = case.object["metadata"]["name"]
    message = f'{resource}.{group} "{name}" is forbidden: {first.admission_message()}'
    return Verdict(False, message, first.reason), violations


def _at_admission(k8s: Cluster, api: ApiServer, case: Case) -> Verdict:
    """The API server's verdict: a dry-run create, or for an update, a dry-run update of the
    oldObject created for real (and deleted after)."""
    if case.old_object is None:
        return _verdict(api.dry_run_create(case.object))
    old = json.dumps(case.old_object)
    k8s.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true", input=old)
    created = api.answer("POST", collection_path(case.old_object), case.old_object)
    assert created.allowed, f"{case.name}: the oldObject is not admitted on create: {created.message}"
    try:
        return _verdict(api.dry_run_update(case.object))
    finally:
        k8s.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=true", input=old)


def test_the_api_server_type_checks_every_policy_without_warnings(installed: Installed) -> None:
    names = {
        doc["metadata"]["name"]
        for path in policy_files(POLICIES, installed.environment).policies
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "ValidatingAdmissionPolicy"
    }
    assert names, f"{POLICIES} holds no ValidatingAdmissionPolicy"
    assert set(installed.warnings) == names
    assert {name: w for name, w in installed.warnings.items() if w} == {}


def test_every_environment_of_the_cases_has_params() -> None:
    assert CASES, f"{POLICIES / 'tests'} holds no case"
    for environment in ENVIRONMENTS:
        assert _param_objects(environment), environment


@pytest.mark.parametrize(
    ("environment", "case"),
    [(case.environment, case) for case in CASES],
    ids=[f"{case.environment}-{case.policy}-{case.name}" for case in CASES],
    indirect=["environment"],
)
def test_the_api_server_gives_each_case_the_offline_verdict(
    k8s: Cluster, api: ApiServer, installed: Installed, environment: str, case: Case
) -> None:
    namespace = case.object["metadata"].get("namespace")
    if namespace:
        _set_tier(k8s, installed, namespace, case.tier)
    result = run_case(POLICIES, case)
    assert result.passed, f"{case.file}:{case.line}: {result.describe()}"
    offline, violations = _offline(case)
    others = sorted({v.policy for v in violations} - {case.policy})
    # The API server answers with one denial, of whichever policy it evaluates first: a case whose
    # object another policy denies too would not show what its own policy does.
    assert not others, f"{case.file}:{case.line}: the object is denied by {others} too: {violations}"
    online = _at_admission(k8s, api, case)
    assert online == offline, f"{case.file}:{case.line}:\n  at admission: {online}\n  offline:      {offline}"
