"""The generated CRDs on a real API server: examples apply, kubectl shows our columns and docs,
the server refuses what `agentplane validate` refuses, and prompt versions are immutable."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentplane_platform.specs import validate_paths
from support.cluster import Cluster, KubectlError

REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "tests" / "specs" / "broken"
SERVER_MARK = "# The API server rejects this too"
SERVER_CASES = sorted(
    p for p in BROKEN.glob("*.yaml") if p.read_text(errors="replace").startswith(SERVER_MARK)
)


def _ensure_namespace(k8s: Cluster, name: str) -> None:
    manifest = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    k8s.kubectl("apply", "-f", "-", input=manifest)


@pytest.fixture(scope="module")
def examples(k8s: Cluster) -> Iterator[None]:
    for tenant in sorted((REPO / "specs" / "tenants").iterdir()):
        _ensure_namespace(k8s, f"tenant-{tenant.name}")
    k8s.kubectl("apply", "-R", "-f", str(REPO / "specs" / "tenants"))
    yield
    k8s.kubectl("delete", "-R", "-f", str(REPO / "specs" / "tenants"), "--ignore-not-found", "--wait=false")


@pytest.mark.usefixtures("examples")
def test_examples_apply_and_show_printer_columns(k8s: Cluster) -> None:
    agents = k8s.kubectl("get", "agents", "-A").stdout
    header = agents.splitlines()[0].split()
    assert header[:5] == ["NAMESPACE", "NAME", "MODEL", "PROMPT", "VERSION"]
    assert re.search(r"tenant-acme\s+legacy-support-bot\s+azure/gpt-4o-mini\s+support\s+1\b", agents), agents
    assert re.search(r"tenant-acme\s+support-bot\s+azure/gpt-4o-mini\s+support\s+2\b", agents), agents
    tenants = k8s.kubectl("get", "tenants").stdout
    assert tenants.splitlines()[0].split()[:3] == ["NAME", "TIER", "NAMESPACE"]
    assert re.search(r"^acme\s+premium\b", tenants, re.MULTILINE), tenants
    everything = k8s.kubectl("get", "tenants,agents,tools,prompts", "-A", "-o", "name").stdout.split()
    assert len(everything) == 16
    tools = k8s.kubectl("get", "tl", "-n", "tenant-acme").stdout
    assert re.search(r"order-lookup\s+http\b", tools), tools
    assert re.search(r"product-docs\s+mcp\b", tools), tools
    by_category = k8s.kubectl("get", "agentplane", "-A", "-o", "name").stdout.split()
    assert sorted(by_category) == sorted(everything)


@pytest.mark.usefixtures("examples")
def test_server_applies_defaults_from_the_models(k8s: Cluster) -> None:
    tenant = k8s.kubectl_json("get", "tenant", "globex")
    assert tenant["spec"]["knowledgeBases"][0]["distance"] == "Cosine"
    tool = k8s.kubectl_json("get", "tool", "calculator", "-n", "tenant-acme")
    assert tool["spec"]["timeoutSeconds"] == 30
    assert "method" not in tool["spec"], "a variant-only default must not leak into other variants"


def test_kubectl_explain_shows_our_descriptions(k8s: Cluster) -> None:
    out = k8s.kubectl("explain", "agent.spec.model").stdout
    assert "The model that answers and its fallbacks." in out
    assert "Primary model, as a litellm model name" in out
    prompt = k8s.kubectl("explain", "prompt.spec.version").stdout
    assert "A version is immutable" in prompt


@pytest.mark.parametrize("case", SERVER_CASES, ids=[p.stem for p in SERVER_CASES])
def test_server_rejects_what_validate_rejects(k8s: Cluster, case: Path) -> None:
    report = validate_paths([case])
    assert report.errors, f"agentplane validate accepted {case.name}"
    documents = [d for d in yaml.safe_load_all(case.read_text()) if d]
    for document in documents:
        namespace = document.get("metadata", {}).get("namespace")
        if namespace:
            _ensure_namespace(k8s, namespace)
    tenants = [d for d in documents if d.get("kind") == "Tenant" and d is not documents[-1]]
    try:
        for tenant in tenants:
            k8s.kubectl("apply", "-f", "-", input=yaml.safe_dump(tenant))
        with pytest.raises(KubectlError) as refused:
            k8s.kubectl("apply", "-f", "-", input=yaml.safe_dump(documents[-1]))
        stderr = refused.value.stderr
        # 422 (`The Agent "a" is invalid`) or 400 (strict decoding) — answers of the server, not of kubectl.
        assert "is invalid" in stderr or "Error from server" in stderr, stderr
        assert "error validating data" not in stderr, f"refused by kubectl, not by the API server: {stderr}"
        (problem,) = report.errors
        field = (problem.path or "").split(".")[-1].split("[")[0]
        assert field in stderr or problem.path == "metadata.name", (problem.format(), stderr)
    finally:
        for document in documents:
            k8s.kubectl(
                "delete", "-f", "-", "--ignore-not-found", "--wait=false", input=yaml.safe_dump(document)
            )


PROMPT: dict[str, Any] = {
    "apiVersion": "agentplane.io/v1alpha1",
    "kind": "Prompt",
    "metadata": {"name": "immutable", "namespace": "tenant-immutability"},
}
V1: dict[str, Any] = {
    "version": 1,
    "template": "Answer in {{ language }}.",
    "variables": [{"name": "language", "default": "English"}],
}


def _apply_prompt(k8s: Cluster, spec: dict[str, Any]) -> str:
    manifest = {**PROMPT, "spec": spec}
    return k8s.kubectl(
        "apply", "--server-side", "--field-manager=test", "-f", "-", input=json.dumps(manifest)
    ).stdout


def test_prompt_version_is_immutable_on_the_server(k8s: Cluster) -> None:
    _ensure_namespace(k8s, "tenant-immutability")
    v1 = dict(V1)
    _apply_prompt(k8s, v1)
    with pytest.raises(KubectlError) as refused:
        _apply_prompt(k8s, {**v1, "template": "Answer in {{ language }}, briefly."})
    assert "changing the template requires a higher version" in refused.value.stderr

    v2 = {
        **v1,
        "version": 2,
        "template": "Answer in {{ language }}, briefly.",
        "previousVersions": [{"version": 1, "template": v1["template"], "variables": v1["variables"]}],
    }
    _apply_prompt(k8s, v2)
    stored = k8s.kubectl_json("get", "prompt", "immutable", "-n", "tenant-immutability")
    assert stored["spec"]["version"] == 2

    with pytest.raises(KubectlError) as lowered:
        _apply_prompt(k8s, {**v2, "version": 1, "previousVersions": []})
    assert "version must never decrease" in lowered.value.stderr

    edited_history = {**v2, "previousVersions": [{"version": 1, "template": "Something else."}]}
    with pytest.raises(KubectlError) as rewritten:
        _apply_prompt(k8s, edited_history)
    assert "a prompt version is immutable" in rewritten.value.stderr


@pytest.mark.usefixtures("examples")
def test_server_side_apply_twice_is_a_no_op(k8s: Cluster) -> None:
    path = REPO / "specs" / "tenants" / "acme" / "agents" / "support-bot.yaml"
    args = ("apply", "--server-side", "--field-manager=agentplane-gitops", "-f", str(path))
    k8s.kubectl(*args)
    first = k8s.kubectl_json("get", "agent", "support-bot", "-n", "tenant-acme")["metadata"][
        "resourceVersion"
    ]
    out = k8s.kubectl(*args).stdout
    second = k8s.kubectl_json("get", "agent", "support-bot", "-n", "tenant-acme")["metadata"][
        "resourceVersion"
    ]
    assert first == second, out
    assert "serverside-applied" in out


def test_non_admin_user_cannot_create_tenants(k8s: Cluster) -> None:
    with pytest.raises(KubectlError) as denied:
        k8s.kubectl("get", "tenants", user=True)
    assert "forbidden" in denied.value.stderr.lower()
