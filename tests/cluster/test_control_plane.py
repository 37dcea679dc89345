"""The test control plane behaves like a real cluster where it matters to us."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from support.cluster import FAKE_NODE_NAMES, Cluster
from support.waiting import wait_for

TIMEOUT = 90.0


wait_until = functools.partial(wait_for, timeout=TIMEOUT)


def names(k8s: Cluster, *args: str) -> list[str]:
    return k8s.kubectl("get", *args, "-o", "name").stdout.split()


@pytest.fixture
def namespace(k8s: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s.kubectl("create", "namespace", name)
    yield name
    k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)


def deployment(name: str, replicas: int) -> str:
    manifest: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.invalid/agentplane/app:1",
                            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        }
                    ]
                },
            },
        },
    }
    return json.dumps(manifest)


def test_fake_nodes_are_ready_with_large_capacity(k8s: Cluster) -> None:
    nodes = k8s.kubectl_json("get", "nodes")["items"]
    by_name = {n["metadata"]["name"]: n for n in nodes}
    assert set(FAKE_NODE_NAMES) <= set(by_name)
    for name in FAKE_NODE_NAMES:
        status = by_name[name]["status"]
        ready = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert [c["status"] for c in ready] == ["True"]
        assert status["allocatable"]["cpu"] == "64"
        assert status["allocatable"]["pods"] in ("1000", "1k")  # kwok re-renders quantities


def test_deployment_becomes_available_with_ready_pods(k8s: Cluster, namespace: str) -> None:
    k8s.kubectl("apply", "-n", namespace, "-f", "-", input=deployment("web", 2))
    k8s.kubectl(
        "wait", "-n", namespace, "--for=condition=Available", "deployment/web", f"--timeout={TIMEOUT:.0f}s"
    )
    k8s.kubectl("rollout", "status", "-n", namespace, "deployment/web", f"--timeout={TIMEOUT:.0f}s")

    dep = k8s.kubectl_json("get", "-n", namespace, "deployment/web")
    assert dep["status"]["readyReplicas"] == 2
    assert dep["status"]["availableReplicas"] == 2

    pods = k8s.kubectl_json("get", "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] in FAKE_NODE_NAMES
        assert pod["status"]["phase"] == "Running"
        ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
        assert [c["status"] for c in ready] == ["True"]
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner["kind"] == "ReplicaSet"


def test_deleting_deployment_garbage_collects_replicasets_and_pods(k8s: Cluster, namespace: str) -> None:
    k8s.kubectl("apply", "-n", namespace, "-f", "-", input=deployment("gc", 2))
    k8s.kubectl("rollout", "status", "-n", namespace, "deployment/gc", f"--timeout={TIMEOUT:.0f}s")
    assert len(names(k8s, "replicasets", "-n", namespace, "-l", "app=gc")) == 1
    assert len(names(k8s, "pods", "-n", namespace, "-l", "app=gc")) == 2

    k8s.kubectl("delete", "-n", namespace, "deployment/gc", "--cascade=background")

    wait_until(
        "ReplicaSet and pods to be garbage-collected",
        lambda: not names(k8s, "replicasets,pods", "-n", namespace, "-l", "app=gc"),
    )


def test_deleting_owner_garbage_collects_dependent(k8s: Cluster, namespace: str) -> None:
    k8s.kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=k=v")
    uid = k8s.kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    assert uid
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
        "data": {"k": "v"},
    }
    k8s.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(dependent))
    assert names(k8s, "configmaps", "-n", namespace, "--field-selector=metadata.name=dependent")

    k8s.kubectl("delete", "configmap", "owner", "-n", namespace)

    wait_until(
        "dependent ConfigMap to be garbage-collected",
        lambda: not names(k8s, "configmaps", "-n", namespace, "--field-selector=metadata.name=dependent"),
    )


def test_server_side_apply_twice_is_a_noop(k8s: Cluster, namespace: str) -> None:
    manifest = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ssa", "labels": {"app": "ssa"}},
            "data": {"a": "1", "b": "2"},
        }
    )

    def apply() -> str:
        return k8s.kubectl(
            "apply",
            "--server-side",
            "--field-manager=agentplane-test",
            "-n",
            namespace,
            "-f",
            "-",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
            input=manifest,
        ).stdout

    first = apply()
    second = apply()
    assert first
    assert second == first
    current = k8s.kubectl(
        "get", "configmap", "ssa", "-n", namespace, "-o", "jsonpath={.metadata.resourceVersion}"
    )
    assert current.stdout == first


def test_non_admin_user_is_forbidden_to_list_secrets(k8s: Cluster) -> None:
    whoami = k8s.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", user=True)
    assert whoami.stdout == "alice"

    result = k8s.kubectl("get", "secrets", "-n", "default", user=True, check=False)
    assert result.returncode != 0
    assert "forbidden" in result.stderr.lower()
    assert 'User "alice" cannot list resource "secrets"' in result.stderr

    can_i = k8s.kubectl("auth", "can-i", "list", "secrets", "-n", "default", user=True, check=False)
    assert can_i.stdout.strip() == "no"
    assert k8s.kubectl("auth", "can-i", "list", "secrets", "-n", "default").stdout.strip() == "yes"


def test_validating_admission_policy_is_enforced(k8s: Cluster, namespace: str) -> None:
    policy_name = f"deny-forbidden-label-{namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["configmaps"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "!has(object.metadata.labels) || !('forbidden' in object.metadata.labels)",
                    "message": "label 'forbidden' is not allowed",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy_name},
        "spec": {
            "policyName": policy_name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    items = {"apiVersion": "v1", "kind": "List", "items": [policy, binding]}
    k8s.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(items))
    try:
        # Dry-run on the server runs admission without persisting anything.
        bad = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "bad", "labels": {"forbidden": "y"}},
        }

        def denied() -> bool:
            result = k8s.kubectl(
                "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False
            )
            return result.returncode != 0 and "label 'forbidden' is not allowed" in result.stderr

        wait_until("the ValidatingAdmissionPolicy to deny", denied, timeout=60)
        k8s.kubectl("create", "configmap", "good", "-n", namespace, "--from-literal=k=v")
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            k8s.kubectl("delete", kind, policy_name, "--ignore-not-found", check=False)
