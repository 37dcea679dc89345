"""The operator's own manifests: namespace, least-privilege RBAC, Deployment, metrics Service and
the kopf peering object. Generated into `operator/deploy/` by `agentplane-operator manifests`,
checked by a test, applied by the tests' cluster and by the Pulumi program.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agentplane_operator.builders import GROUP, MANAGED_BY, TENANT_EDITOR_ROLE, Manifest
from agentplane_platform.contract import METRICS_PATH, METRICS_PORT_NAME, RUNTIME_APP_NAME

NAMESPACE = "agentplane-system"
NAME = "agentplane-operator"
PEERING = "agentplane"
SHARD_LABEL = f"{GROUP}/shard"
CREDENTIALS_SECRET = "agentplane-operator"
"""Secret with `redis-url`, `database-url` and (optional) `qdrant-api-key`."""
IMAGE = "ghcr.io/agentplane/operator:latest"
METRICS_PORT = 8080

_WRITE = ["get", "create", "patch"]


def _rule(group: str, resources: list[str], verbs: list[str], names: list[str] | None = None) -> Manifest:
    rule: Manifest = {"apiGroups": [group], "resources": resources, "verbs": verbs}
    if names:
        rule["resourceNames"] = names
    return rule


RULES: list[Manifest] = [
    # The four kinds: kopf watches them, patches annotations/finalizers; we patch their status.
    _rule(GROUP, ["tenants", "agents", "tools", "prompts"], ["get", "list", "watch", "patch"]),
    _rule(GROUP, ["tenants/status", "agents/status", "tools/status", "prompts/status"], ["get", "patch"]),
    # Children, applied server-side (apply-create needs `create`, apply-update `patch`).
    _rule("", ["namespaces"], _WRITE),
    _rule("", ["resourcequotas", "limitranges", "serviceaccounts"], _WRITE),
    # An Agent's Service and ConfigMap are watched (like its Deployment): a resync reads none of them.
    _rule("", ["services"], [*_WRITE, "list", "watch"]),
    _rule("", ["configmaps"], [*_WRITE, "list", "watch", "delete"]),
    _rule("networking.k8s.io", ["networkpolicies"], _WRITE),
    _rule("rbac.authorization.k8s.io", ["rolebindings"], _WRITE),
    _rule("rbac.authorization.k8s.io", ["clusterroles"], ["bind"], [TENANT_EDITOR_ROLE]),
    _rule("apps", ["deployments"], [*_WRITE, "list", "watch"]),
    _rule("autoscaling", ["horizontalpodautoscalers"], [*_WRITE, "delete"]),
    _rule("policy", ["poddisruptionbudgets"], [*_WRITE, "delete"]),
    _rule("gateway.networking.k8s.io", ["httproutes"], _WRITE),
    _rule("secrets-store.csi.x-k8s.io", ["secretproviderclasses"], _WRITE),
    # Why agent pods do not run (waiting reasons, termination messages) goes into Agent status.
    _rule("", ["pods"], ["list", "watch"]),
    # Git-kept knowledge: each revision of the Flux source starts a knowledge-sync Job.
    _rule("source.toolkit.fluxcd.io", ["gitrepositories"], ["get", "list", "watch"]),
    _rule("batch", ["jobs"], ["get", "create", "patch", "list", "watch"]),
    # Each tenant namespace's runtime and LLM Secrets are written; tools' secret references are
    # checked to exist. Secrets are never listed or watched.
    _rule("", ["secrets"], _WRITE),
    _rule("", ["events"], ["create", "patch"]),
    _rule("events.k8s.io", ["events"], ["create", "patch"]),
    _rule("kopf.dev", ["clusterkopfpeerings"], ["get", "list", "watch", "patch"], None),
]


def _meta(name: str, namespace: str | None = None, **labels: str) -> Manifest:
    meta: Manifest = {"name": name, "labels": {**MANAGED_BY, "app.kubernetes.io/name": NAME, **labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _env(settings: dict[str, str]) -> list[Manifest]:
    env: list[Manifest] = [{"name": f"AGENTPLANE_OPERATOR_{k}", "value": v} for k, v in settings.items()]
    for key, variable, optional in (
        ("redis-url", "REDIS_URL", False),
        ("database-url", "DATABASE_URL", False),
        ("qdrant-api-key", "QDRANT_API_KEY", True),
    ):
        env.append(
            {
                "name": f"AGENTPLANE_OPERATOR_{variable}",
                "valueFrom": {"secretKeyRef": {"name": CREDENTIALS_SECRET, "key": key, "optional": optional}},
            }
        )
    return env


def build_operator_manifests(
    *, image: str = IMAGE, replicas: int = 2, shards: int = 1
) -> dict[str, list[Manifest]]:
    """The manifests, by the file they go to. `shards` above 1: a Deployment and a peering per shard
    (`agentplane_operator.shards`), each Deployment's replicas standing by for its one active."""
    peering_crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusterkopfpeerings.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": "Cluster",
            "names": {
                "plural": "clusterkopfpeerings",
                "singular": "clusterkopfpeering",
                "kind": "ClusterKopfPeering",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }
    peerings = [
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": _meta(name)}
        for name in (shard_peerings(shards) if shards > 1 else [PEERING])
    ]
    editor = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta(TENANT_EDITOR_ROLE),
        "rules": [
            _rule(
                GROUP,
                ["agents", "tools", "prompts"],
                ["get", "list", "watch", "create", "update", "patch", "delete"],
            ),
            _rule(GROUP, ["agents/status", "tools/status", "prompts/status"], ["get"]),
        ],
    }
    return {
        "00-namespace.yaml": [{"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(NAMESPACE)}],
        "10-crds.yaml": [peering_crd],
        "15-peering.yaml": peerings,
        "20-rbac.yaml": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME, NAMESPACE)},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": _meta(NAME),
                "rules": RULES,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": _meta(NAME),
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
                "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
            },
            editor,
        ],
        "30-deployment.yaml": [
            *(
                _deployment(image, replicas, (index, shards) if shards > 1 else None)
                for index in range(shards)
            ),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(f"{NAME}-metrics", NAMESPACE),
                "spec": {
                    "selector": {"app.kubernetes.io/name": NAME},
                    "ports": [
                        {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}
                    ],
                },
            },
        ],
    }


def _deployment(image: str, replicas: int, shard: tuple[int, int] | None) -> Manifest:
    """The operator's Deployment; as one of several shards, that of shard `index` of `count`."""
    labels = {"app.kubernetes.io/name": NAME}
    name, env = NAME, {}
    if shard is not None:
        index, count = shard
        labels[SHARD_LABEL] = str(index)
        name, env = f"{NAME}-{index}", {"SHARD": f"{index}/{count}"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, NAMESPACE),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            # Peering keeps one replica active; never run two old+new actives during a rollout.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
                    "containers": [
                        {
                            "name": "operator",
                            "image": image,
                            "args": ["run"],
                            "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
                            "env": _env(
                                {
                                    "QDRANT_URL": f"http://qdrant.{NAMESPACE}.svc:6333",
                                    "PLATFORM_NAMESPACE": NAMESPACE,
                                    "METRICS_PORT": str(METRICS_PORT),
                                    **env,
                                }
                            ),
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "256Mi"},
                                "limits": {"memory": "1Gi"},
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "metrics"},
                                "periodSeconds": 10,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "metrics"},
                                "periodSeconds": 5,
                            },
                            "securityContext": {
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def shard_peerings(count: int) -> list[str]:
    """The peering of each of `count` shards (the operator's `OperatorSettings.peering_name`)."""
    return [f"{PEERING}-{index}" for index in range(count)]


MONITORING_FILE = "monitoring/50-monitors.yaml"
"""Scrape configs for kube-prometheus-stack (its CRDs must exist): applied by infra's monitoring,
apart from the operator's own manifests."""


def build_monitoring_manifests() -> list[Manifest]:
    """A PodMonitor for every agent pod (their metrics port, any namespace) and a ServiceMonitor for
    the operator's metrics Service."""
    agents = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta("agentplane-agents", NAMESPACE),
        "spec": {
            "namespaceSelector": {"any": True},
            "selector": {"matchLabels": {**MANAGED_BY, "app.kubernetes.io/name": RUNTIME_APP_NAME}},
            "podMetricsEndpoints": [{"port": METRICS_PORT_NAME, "path": METRICS_PATH, "interval": "30s"}],
        },
    }
    operator = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(NAME, NAMESPACE),
        "spec": {
            "namespaceSelector": {"matchNames": [NAMESPACE]},
            "selector": {"matchLabels": {**MANAGED_BY, "app.kubernetes.io/name": NAME}},
            "endpoints": [{"port": "metrics", "path": METRICS_PATH, "interval": "30s"}],
        },
    }
    return [agents, operator]


HEADER = "# Generated by `agentplane-operator manifests` (make generate). Do not edit.\n"


def render(manifests: list[Manifest]) -> str:
    return HEADER + "".join("---\n" + yaml.safe_dump(m, sort_keys=False) for m in manifests)


def write(directory: Path, *, check: bool = False, shards: int = 1) -> list[Path]:
    """Write the manifests under `directory`; with `check`, only list the files that differ."""
    stale: list[Path] = []
    directory.mkdir(parents=True, exist_ok=True)
    wanted = {**build_operator_manifests(shards=shards), MONITORING_FILE: build_monitoring_manifests()}
    for name, manifests in wanted.items():
        path = directory / name
        text = render(manifests)
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for extra in sorted(directory.rglob("*.yaml")):
        if extra.relative_to(directory).as_posix() not in wanted:
            stale.append(extra)
            if not check:
                extra.unlink()
    return stale


def load(directory: Path) -> list[dict[str, Any]]:
    """Every manifest directly in `directory` (not its `monitoring/`), in file order."""
    return [
        doc
        for path in sorted(directory.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
