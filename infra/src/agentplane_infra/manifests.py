"""Pure helpers: the repository's files in, Kubernetes manifests out. No Pulumi resources here.

What the platform installs in the cluster lives in the repository, owned by its authors: the
generated CRDs in `specs/crds/`, the operator's own manifests in `operator/deploy/`, dashboards and
rules in `dashboards/`. They are read when the program runs, never copied into infra; infra only
adds what only it knows (identities, images, where the connection settings come from).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

from agentplane_infra.config import EgressRule
from agentplane_platform.specs import validate_paths

Manifest = dict[str, Any]

PLATFORM_NAMESPACE = "agentplane-system"
OPERATOR_NAME = "agentplane-operator"
RUNTIME_SERVICE_ACCOUNT = "agentplane-agent"
"""The service account of agent pods in every tenant namespace (set by the operator's builders)."""
OPERATOR_SECRET = "agentplane-operator"
"""The SecretProviderClass and the Secret it syncs from Key Vault, in the platform namespace (the
Secret name the operator's own manifests refer to)."""
SECRETS_STORE_MOUNT = "/mnt/secrets-store"
WORKLOAD_IDENTITY_CLIENT_ID = "azure.workload.identity/client-id"
WORKLOAD_IDENTITY_USE = "azure.workload.identity/use"
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"

CONNECTION_ENV: Mapping[str, str] = {
    "AGENTPLANE_OPERATOR_DATABASE_URL": "database-url",
    "AGENTPLANE_OPERATOR_REDIS_URL": "redis-url",
    "AGENTPLANE_OPERATOR_QDRANT_URL": "qdrant-url",
    "AGENTPLANE_OPERATOR_QDRANT_API_KEY": "qdrant-api-key",
}
"""Operator environment variable -> key of the synced Secret (and name of the Key Vault secret)."""


class ManifestError(Exception):
    """A manifest file cannot be used; the message names the file."""


def yaml_files(directory: Path) -> list[Path]:
    """The `*.yaml` / `*.yml` files directly in a directory, sorted; none when it does not exist."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_manifests(paths: Iterable[Path]) -> list[Manifest]:
    """Every Kubernetes object of the (multi-document) YAML files, in file then document order."""
    objects: list[Manifest] = []
    for path in paths:
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as error:
            raise ManifestError(f"{path}: not valid YAML: {error}") from None
        for index, document in enumerate(documents):
            if document is None:
                continue
            if not isinstance(document, dict) or not {"apiVersion", "kind", "metadata"} <= document.keys():
                raise ManifestError(
                    f"{path}: document {index + 1} is not a Kubernetes object (apiVersion, kind, metadata)"
                )
            objects.append(document)
    return objects


def object_key(obj: Manifest) -> str:
    """`Kind/namespace/name` (or `Kind/name` when cluster-scoped) of an object."""
    meta = obj["metadata"]
    namespace = meta.get("namespace")
    return f"{obj['kind']}/{namespace}/{meta['name']}" if namespace else f"{obj['kind']}/{meta['name']}"


ENV_PREFIX = "AGENTPLANE_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    """What only infra knows about the operator's deployment."""

    image: pulumi.Input[str]
    runtime_image: pulumi.Input[str]
    """The image of every agent pod."""
    client_id: pulumi.Input[str]
    """Client id of the operator's user-assigned managed identity."""
    key_vault_name: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    """The Entra ID tenant of the vault (and of both identities)."""
    runtime_client_id: pulumi.Input[str]
    """Client id of the agent runtime's identity: tenant SecretProviderClasses read Key Vault as it."""
    provider_secrets: Mapping[str, str] = field(default_factory=dict)
    """Provider environment name -> Key Vault secret name, synced into every tenant's LLM Secret."""
    gateway_name: str | None = None
    gateway_namespace: str | None = None
    gateway_url: pulumi.Input[str] | None = None
    platform_egress: Sequence[EgressRule] = ()
    """Destinations outside the cluster every tenant's pods may reach (stores, LLM providers)."""
    monitoring_namespace: str | None = None
    agent_node_selector: Mapping[str, str] = field(default_factory=dict)
    agent_tolerations: Sequence[Mapping[str, str]] = ()
    gitops_source: str | None = None
    """`<namespace>/<name>` of the Flux GitRepository whose revisions sync the tenants' knowledge."""
    gitops_specs_dir: str | None = None
    """Where `tenants/` is inside that repository."""
    audit_retention_days: int | None = None
    """Days audit records are kept (0: forever); the operator's default when unset."""

    def env(self) -> list[Manifest]:
        """The operator's `AGENTPLANE_OPERATOR_*` settings infra sets (complex values as JSON)."""
        values: dict[str, pulumi.Input[str] | None] = {
            "RUNTIME_IMAGE": self.runtime_image,
            "KEY_VAULT_NAME": self.key_vault_name,
            "KEY_VAULT_TENANT_ID": self.tenant_id,
            "RUNTIME_CLIENT_ID": self.runtime_client_id,
            "PROVIDER_SECRETS": _json(dict(self.provider_secrets)),
            "GATEWAY_NAME": self.gateway_name,
            "GATEWAY_NAMESPACE": self.gateway_namespace,
            "GATEWAY_URL": self.gateway_url,
            "PLATFORM_EGRESS": _json(
                [{"cidr": r.cidr, "ports": list(r.ports)} for r in self.platform_egress]
            ),
            "MONITORING_NAMESPACE": self.monitoring_namespace,
            "AGENT_NODE_SELECTOR": _json(dict(self.agent_node_selector)),
            "AGENT_TOLERATIONS": _json([dict(t) for t in self.agent_tolerations]),
            "GITOPS_SOURCE": self.gitops_source,
            "GITOPS_SPECS_DIR": self.gitops_specs_dir,
            "AUDIT_RETENTION_DAYS": None
            if self.audit_retention_days is None
            else str(self.audit_retention_days),
        }
        return [
            {"name": f"{ENV_PREFIX}{key}", "value": value}
            for key, value in values.items()
            if value is not None
        ]


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _is(obj: Manifest, kind: str, name: str) -> bool:
    return bool(obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name)


def _merge_env(env: list[Manifest], extra: list[Manifest]) -> list[Manifest]:
    names = {e["name"] for e in extra}
    return [e for e in env if e.get("name") not in names] + extra


def customize_operator(obj: Manifest, settings: OperatorSettings) -> Manifest:
    """A copy of one of the operator's manifests with infra's settings added.

    The ServiceAccount gets the workload-identity client id; the Deployment gets the workload
    identity pod label, the image, its settings (`OperatorSettings.env`: the runtime image, Key Vault
    and the runtime identity, provider secrets, gateway, egress, monitoring, agent node pool), the
    connection settings from the Secret synced from Key Vault, and the CSI volume whose mount makes
    that sync happen. Everything else is returned unchanged.
    """
    obj = copy.deepcopy(obj)
    if _is(obj, "ServiceAccount", OPERATOR_NAME):
        annotations = obj["metadata"].setdefault("annotations", {}) or {}
        annotations[WORKLOAD_IDENTITY_CLIENT_ID] = settings.client_id
        obj["metadata"]["annotations"] = annotations
    elif _is(obj, "Deployment", OPERATOR_NAME):
        template = obj.setdefault("spec", {}).setdefault("template", {})
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        labels[WORKLOAD_IDENTITY_USE] = "true"
        pod = template.setdefault("spec", {})
        containers: list[Manifest] = pod.get("containers") or []
        if not containers:
            raise ManifestError(f"Deployment {OPERATOR_NAME} has no containers")
        container = next((c for c in containers if c.get("name") == "operator"), containers[0])
        container["image"] = settings.image
        container["env"] = _merge_env(
            container.get("env") or [],
            [
                *settings.env(),
                *(
                    {"name": env, "valueFrom": {"secretKeyRef": {"name": OPERATOR_SECRET, "key": key}}}
                    for env, key in CONNECTION_ENV.items()
                ),
            ],
        )
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != "secrets-store"]
        container["volumeMounts"] = [
            *mounts,
            {"name": "secrets-store", "mountPath": SECRETS_STORE_MOUNT, "readOnly": True},
        ]
        volumes = [v for v in pod.get("volumes") or [] if v.get("name") != "secrets-store"]
        pod["volumes"] = [
            *volumes,
            {
                "name": "secrets-store",
                "csi": {
                    "driver": "secrets-store.csi.k8s.io",
                    "readOnly": True,
                    "volumeAttributes": {"secretProviderClass": OPERATOR_SECRET},
                },
            },
        ]
    return obj


def secret_provider_class(
    *, client_id: pulumi.Input[str], vault_name: pulumi.Input[str], tenant_id: pulumi.Input[str]
) -> Manifest:
    """The SecretProviderClass that mounts the operator's Key Vault secrets and syncs them to a Secret."""
    keys = sorted(CONNECTION_ENV.values())
    objects = "array:\n" + "".join(f"  - |\n    objectName: {key}\n    objectType: secret\n" for key in keys)
    return {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": OPERATOR_SECRET, "namespace": PLATFORM_NAMESPACE},
        "spec": {
            "provider": "azure",
            "secretObjects": [
                {
                    "secretName": OPERATOR_SECRET,
                    "type": "Opaque",
                    "data": [{"objectName": key, "key": key} for key in keys],
                }
            ],
            "parameters": {
                "usePodIdentity": "false",
                "clientID": client_id,
                "keyvaultName": vault_name,
                "tenantId": tenant_id,
                "objects": objects,
            },
        },
    }


def dns_label(text: str) -> str:
    """A DNS-1123 label made from a file name."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:63].rstrip("-") or "unnamed"


def _unique(objects: list[Manifest], sources: list[Path]) -> None:
    """Refuse two files making objects of the same kind and name (one would replace the other)."""
    seen: dict[str, Path] = {}
    for obj, path in zip(objects, sources, strict=True):
        key = object_key(obj)
        if key in seen:
            raise ManifestError(f"{path}: makes {key}, as {seen[key]} does: rename one of them")
        seen[key] = path


def grafana_dashboards(directory: Path, namespace: str) -> list[Manifest]:
    """One ConfigMap, labelled for Grafana's dashboard sidecar, per dashboard JSON under `directory`."""
    if not directory.is_dir():
        return []
    configmaps: list[Manifest] = []
    sources: list[Path] = []
    for path in sorted(directory.rglob("*.json")):
        text = path.read_text(encoding="utf-8")
        try:
            dashboard = json.loads(text)
        except json.JSONDecodeError as error:
            raise ManifestError(f"{path}: not valid JSON: {error}") from None
        if not isinstance(dashboard, dict) or "panels" not in dashboard:
            continue  # not a Grafana dashboard
        configmaps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": dns_label(f"dashboard-{path.stem}"),
                    "namespace": namespace,
                    "labels": {GRAFANA_DASHBOARD_LABEL: "1"},
                },
                "data": {path.name: text},
            }
        )
        sources.append(path)
    _unique(configmaps, sources)
    return configmaps


def prometheus_rules(directory: Path, namespace: str, labels: Mapping[str, str]) -> list[Manifest]:
    """PrometheusRule objects for the rule files under `directory`.

    A YAML document that is already a PrometheusRule is applied in `namespace`; a plain Prometheus
    rule file (`groups:`) is wrapped in one. Other YAML (SLO definitions, promtool's unit tests with
    their `rule_files:` and `tests:`) is not a rule.
    """
    if not directory.is_dir():
        return []
    rules: list[Manifest] = []
    sources: list[Path] = []
    for path in sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml")):
        try:
            documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as error:
            raise ManifestError(f"{path}: not valid YAML: {error}") from None
        for index, document in enumerate(d for d in documents if isinstance(d, dict)):
            suffix = f"-{index + 1}" if index else ""
            if document.get("kind") == "PrometheusRule":
                rule = copy.deepcopy(document)
                meta = rule.setdefault("metadata", {})
                meta.setdefault("name", dns_label(f"{path.stem}{suffix}"))
                meta["namespace"] = namespace
                meta["labels"] = {**(meta.get("labels") or {}), **labels}
                rules.append(rule)
            elif isinstance(document.get("groups"), list) and "apiVersion" not in document:
                rules.append(
                    {
                        "apiVersion": "monitoring.coreos.com/v1",
                        "kind": "PrometheusRule",
                        "metadata": {
                            "name": dns_label(f"{path.stem}{suffix}"),
                            "namespace": namespace,
                            "labels": dict(labels),
                        },
                        "spec": {"groups": document["groups"]},
                    }
                )
            else:
                continue
            sources.append(path)
    _unique(rules, sources)
    return rules


def tenant_namespaces(tenants_dir: Path) -> list[str]:
    """Namespaces of the valid Tenants under `specs/tenants/`, sorted (via the platform's loader)."""
    if not tenants_dir.is_dir():
        return []
    report = validate_paths([tenants_dir])
    return sorted(t.resource.namespace for t in report.specs.tenants.values())


def workload_subject(namespace: str, service_account: str) -> str:
    """The `sub` claim of a Kubernetes service account token."""
    return f"system:serviceaccount:{namespace}:{service_account}"


def kubeconfig_with_login(kubeconfig: str, method: str) -> str:
    """The AKS user kubeconfig with `kubelogin get-token --login <method>` for every exec user.

    `listClusterUserCredential(format=exec)` returns a kubeconfig whose exec plugin logs in with
    the device code flow; Pulumi runs unattended, so the login method is set from stack config.
    """
    config = yaml.safe_load(kubeconfig)
    for user in config.get("users") or []:
        exec_ = (user.get("user") or {}).get("exec")
        if not exec_:
            continue
        args: list[str] = list(exec_.get("args") or [])
        if "--login" in args:
            args[args.index("--login") + 1] = method
        else:
            args += ["--login", method]
        exec_["args"] = args
    return str(yaml.safe_dump(config, sort_keys=False))
