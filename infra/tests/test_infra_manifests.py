"""What infra reads from the repository and applies in the cluster: the pure helpers, and the
program over a checkout whose `operator/deploy/` and `dashboards/` are empty or hold files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_mocks import REPO, StackRun, reveal, run_stack

from agentplane_infra.config import AlertingConfig, EgressRule, Severity
from agentplane_infra.manifests import (
    CONNECTION_ENV,
    OPERATOR_SECRET,
    ManifestError,
    OperatorSettings,
    customize_operator,
    dns_label,
    grafana_dashboards,
    kubeconfig_with_login,
    load_manifests,
    object_key,
    prometheus_rules,
    tenant_namespaces,
    yaml_files,
)
from agentplane_infra.monitoring import alertmanager_config
from agentplane_infra.providers import provider_secrets

SETTINGS = OperatorSettings(
    image="registry.example/operator:1.2.3",
    runtime_image="registry.example/runtime:1.2.3",
    client_id="cid-123",
    key_vault_name="kv-1",
    tenant_id="tid-1",
    runtime_client_id="runtime-cid",
    provider_secrets={"OPENAI_API_KEY": "llm-openai-api-key"},
    gateway_name="agentplane",
    gateway_namespace="agentplane-gateway",
    gateway_url="https://agents.example.com",
    platform_egress=[EgressRule(cidr="10.0.2.0/24", ports=[5432])],
    monitoring_namespace="monitoring",
    agent_node_selector={"pool": "agents"},
    agent_tolerations=[{"key": "pool", "operator": "Exists"}],
)

SERVICE_ACCOUNT = {
    "apiVersion": "v1",
    "kind": "ServiceAccount",
    "metadata": {"name": "agentplane-operator", "namespace": "agentplane-system"},
}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "agentplane-operator", "namespace": "agentplane-system"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/name": "agentplane-operator"}},
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": "agentplane-operator"}},
            "spec": {
                "serviceAccountName": "agentplane-operator",
                "containers": [
                    {
                        "name": "operator",
                        "image": "ghcr.io/agentplane/operator:latest",
                        "env": [
                            {"name": "AGENTPLANE_OPERATOR_QDRANT_URL", "value": "http://qdrant:6333"},
                            {"name": "AGENTPLANE_OPERATOR_METRICS_PORT", "value": "8080"},
                        ],
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    },
}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_customize_operator_adds_workload_identity_image_and_connection_settings() -> None:
    sa = customize_operator(SERVICE_ACCOUNT, SETTINGS)
    assert sa["metadata"]["annotations"] == {"azure.workload.identity/client-id": "cid-123"}

    deployment = customize_operator(DEPLOYMENT, SETTINGS)
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    container = template["spec"]["containers"][0]
    assert container["image"] == "registry.example/operator:1.2.3"
    env = _env(container)
    assert {k: v for k, v in env.items() if k not in CONNECTION_ENV} == {
        "AGENTPLANE_OPERATOR_METRICS_PORT": "8080",  # the operator's own settings stay
        "AGENTPLANE_OPERATOR_RUNTIME_IMAGE": "registry.example/runtime:1.2.3",
        "AGENTPLANE_OPERATOR_KEY_VAULT_NAME": "kv-1",
        "AGENTPLANE_OPERATOR_KEY_VAULT_TENANT_ID": "tid-1",
        "AGENTPLANE_OPERATOR_RUNTIME_CLIENT_ID": "runtime-cid",
        "AGENTPLANE_OPERATOR_PROVIDER_SECRETS": '{"OPENAI_API_KEY":"llm-openai-api-key"}',
        "AGENTPLANE_OPERATOR_GATEWAY_NAME": "agentplane",
        "AGENTPLANE_OPERATOR_GATEWAY_NAMESPACE": "agentplane-gateway",
        "AGENTPLANE_OPERATOR_GATEWAY_URL": "https://agents.example.com",
        "AGENTPLANE_OPERATOR_PLATFORM_EGRESS": '[{"cidr":"10.0.2.0/24","ports":[5432]}]',
        "AGENTPLANE_OPERATOR_MONITORING_NAMESPACE": "monitoring",
        "AGENTPLANE_OPERATOR_AGENT_NODE_SELECTOR": '{"pool":"agents"}',
        "AGENTPLANE_OPERATOR_AGENT_TOLERATIONS": '[{"key":"pool","operator":"Exists"}]',
    }
    for name, key in CONNECTION_ENV.items():
        assert env[name] == {"secretKeyRef": {"name": OPERATOR_SECRET, "key": key}}
    assert [e["name"] for e in container["env"]].count("AGENTPLANE_OPERATOR_QDRANT_URL") == 1
    # The CSI volume whose mount makes the driver sync the Secret from Key Vault.
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["secrets-store"]["csi"]["volumeAttributes"] == {"secretProviderClass": OPERATOR_SECRET}
    assert "tmp" in volumes
    assert {"name": "secrets-store", "mountPath": "/mnt/secrets-store", "readOnly": True} in container[
        "volumeMounts"
    ]
    # Pure: the input is untouched, and applying twice changes nothing more.
    assert DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":latest")
    assert customize_operator(deployment, SETTINGS) == deployment


def test_unset_operator_settings_are_left_out() -> None:
    bare = OperatorSettings(
        image="i",
        runtime_image="r",
        client_id="c",
        key_vault_name="kv",
        tenant_id="t",
        runtime_client_id="rc",
    )
    assert {e["name"].removeprefix("AGENTPLANE_OPERATOR_") for e in bare.env()} == {
        "RUNTIME_IMAGE",
        "KEY_VAULT_NAME",
        "KEY_VAULT_TENANT_ID",
        "RUNTIME_CLIENT_ID",
        "PROVIDER_SECRETS",
        "PLATFORM_EGRESS",
        "AGENT_NODE_SELECTOR",
        "AGENT_TOLERATIONS",
    }


def test_customize_operator_leaves_other_objects_alone() -> None:
    other = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "agentplane-operator-metrics"}}
    assert customize_operator(other, SETTINGS) == other
    not_ours = {**SERVICE_ACCOUNT, "metadata": {"name": "someone-else", "namespace": "x"}}
    assert customize_operator(not_ours, SETTINGS) == not_ours


def test_provider_settings_map_to_litellm_names_and_key_vault_names() -> None:
    assert provider_secrets(["openai", "azure_ai"], ["azure_ai"]) == {
        "AZURE_AI_API_BASE": "llm-azure-ai-api-base",
        "AZURE_AI_API_KEY": "llm-azure-ai-api-key",  # Key Vault names take no underscore
        "OPENAI_API_KEY": "llm-openai-api-key",
    }
    assert provider_secrets([], []) == {}


def test_kubeconfig_login_method_is_replaced_or_added() -> None:
    config: dict[str, Any] = {
        "users": [
            {
                "name": "u",
                "user": {"exec": {"command": "kubelogin", "args": ["get-token", "--login", "devicecode"]}},
            }
        ]
    }
    out = yaml.safe_load(kubeconfig_with_login(yaml.safe_dump(config), "azurecli"))
    assert out["users"][0]["user"]["exec"]["args"] == ["get-token", "--login", "azurecli"]
    config["users"][0]["user"]["exec"]["args"] = ["get-token"]
    out = yaml.safe_load(kubeconfig_with_login(yaml.safe_dump(config), "workloadidentity"))
    assert out["users"][0]["user"]["exec"]["args"] == ["get-token", "--login", "workloadidentity"]


def test_missing_or_empty_folders_yield_nothing(tmp_path: Path) -> None:
    assert yaml_files(tmp_path / "missing") == []
    assert yaml_files(tmp_path) == []
    assert grafana_dashboards(tmp_path / "missing", "monitoring") == []
    assert prometheus_rules(tmp_path, "monitoring", {}) == []
    assert tenant_namespaces(tmp_path / "missing") == []


def test_load_manifests_reads_multi_document_files_and_names_a_bad_file(tmp_path: Path) -> None:
    good = tmp_path / "a.yaml"
    good.write_text(
        "# comment\n---\n" + yaml.safe_dump(SERVICE_ACCOUNT) + "---\n" + yaml.safe_dump(DEPLOYMENT)
    )
    assert [object_key(o) for o in load_manifests([good])] == [
        "ServiceAccount/agentplane-system/agentplane-operator",
        "Deployment/agentplane-system/agentplane-operator",
    ]
    bad = tmp_path / "b.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ManifestError, match=r"b\.yaml: document 1 is not a Kubernetes object"):
        load_manifests([bad])
    bad.write_text("key: [unclosed\n")
    with pytest.raises(ManifestError, match=r"b\.yaml: not valid YAML"):
        load_manifests([bad])


def test_dashboards_become_labelled_configmaps_and_rules_prometheus_rules(tmp_path: Path) -> None:
    (tmp_path / "grafana").mkdir()
    (tmp_path / "grafana" / "Agent_SLO.json").write_text(json.dumps({"title": "SLO", "panels": []}))
    (tmp_path / "grafana" / "not-a-dashboard.json").write_text(json.dumps({"slo": "x"}))
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "burn.yaml").write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": []}]}))
    (tmp_path / "rules" / "ready.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "PrometheusRule",
                "metadata": {"name": "ready", "namespace": "x"},
                "spec": {"groups": []},
            }
        )
    )
    (tmp_path / "slo.yaml").write_text(yaml.safe_dump({"name": "availability", "objective": 99.9}))
    (tmp_path / "README.md").write_text("# dashboards\n")

    [dashboard] = grafana_dashboards(tmp_path, "monitoring")
    assert dashboard["metadata"] == {
        "name": "dashboard-agent-slo",
        "namespace": "monitoring",
        "labels": {"grafana_dashboard": "1"},
    }
    assert json.loads(dashboard["data"]["Agent_SLO.json"]) == {"title": "SLO", "panels": []}

    rules = prometheus_rules(tmp_path, "monitoring", {"release": "kps"})
    assert [(r["metadata"]["name"], r["metadata"]["namespace"], r["metadata"]["labels"]) for r in rules] == [
        ("burn", "monitoring", {"release": "kps"}),
        ("ready", "monitoring", {"release": "kps"}),
    ]
    assert rules[0]["spec"] == {"groups": [{"name": "g", "rules": []}]}


RULES = {"groups": [{"name": "slo-availability", "rules": [{"record": "x:ratio", "expr": "vector(1)"}]}]}
PROMTOOL_TEST = {
    "rule_files": ["../rules/slo-availability.yaml"],
    "evaluation_interval": "1m",
    "tests": [{"interval": "1m", "input_series": [], "alert_rule_test": []}],
}
SLO = {"name": "availability", "service": "agent", "objective": 99.5, "sli": {"errors": "x", "total": "y"}}


def test_the_generated_layout_of_dashboards_loads_rules_and_dashboards_only(tmp_path: Path) -> None:
    """`dashboards/rules/*.yaml` become PrometheusRules and `dashboards/grafana/*.json` dashboards;
    the SLO definitions of `slos/` and promtool's unit tests of `tests/` become nothing."""
    for folder in ("rules", "slos", "tests", "grafana"):
        (tmp_path / folder).mkdir()
    (tmp_path / "rules" / "slo-availability.yaml").write_text(yaml.safe_dump(RULES))
    (tmp_path / "slos" / "availability.yaml").write_text(yaml.safe_dump(SLO))
    (tmp_path / "tests" / "slo-availability-test.yaml").write_text(yaml.safe_dump(PROMTOOL_TEST))
    (tmp_path / "tests" / "other.yml").write_text(yaml.safe_dump({**PROMTOOL_TEST, "groups": None}))
    (tmp_path / "grafana" / "slo-availability.json").write_text(json.dumps({"title": "t", "panels": []}))

    rules = prometheus_rules(tmp_path, "monitoring", {"release": "kps"})
    assert [(r["kind"], r["metadata"]["name"], r["spec"]) for r in rules] == [
        ("PrometheusRule", "slo-availability", RULES)
    ]
    assert [object_key(d) for d in grafana_dashboards(tmp_path, "monitoring")] == [
        "ConfigMap/monitoring/dashboard-slo-availability"
    ]


def test_a_promtool_test_file_is_never_a_rule(tmp_path: Path) -> None:
    """Were a promtool test file (`rule_files:`, `tests:`) wrapped, Prometheus would get an empty or
    invalid PrometheusRule; however it is named or wherever it is."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "looks-like-rules.yaml").write_text(yaml.safe_dump(PROMTOOL_TEST))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump_all([PROMTOOL_TEST, PROMTOOL_TEST]))
    assert prometheus_rules(tmp_path, "monitoring", {}) == []


def test_two_files_making_the_same_object_are_refused(tmp_path: Path) -> None:
    for folder in ("rules", "more"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "slo.yaml").write_text(yaml.safe_dump(RULES))
        (tmp_path / folder / "slo.json").write_text(json.dumps({"panels": []}))
    with pytest.raises(
        ManifestError, match=r"rules/slo\.yaml: makes PrometheusRule/monitoring/slo, as .*more/slo\.yaml"
    ):
        prometheus_rules(tmp_path, "monitoring", {})
    with pytest.raises(ManifestError, match=r"makes ConfigMap/monitoring/dashboard-slo, as .*more/slo\.json"):
        grafana_dashboards(tmp_path, "monitoring")


# Alertmanager's configuration.

PAGE_URL = "https://events.pager.example/hook/page-token"
TICKET_URL = "https://tickets.example/hook?token=ticket-token"


def test_alertmanager_config_routes_each_severity_to_its_receiver() -> None:
    assert alertmanager_config({"page": PAGE_URL, "ticket": TICKET_URL}, AlertingConfig()) == {
        "global": {"resolve_timeout": "5m"},
        "route": {
            "receiver": "null",
            "group_by": ["alertname", "slo", "tenant", "agent"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "12h",
            "routes": [
                {
                    "receiver": "page",
                    "matchers": ['severity="page"'],
                    "group_wait": "30s",
                    "group_interval": "5m",
                    "repeat_interval": "1h",
                },
                {
                    "receiver": "ticket",
                    "matchers": ['severity="ticket"'],
                    "group_wait": "5m",
                    "group_interval": "30m",
                    "repeat_interval": "12h",
                },
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": ['severity="page"', 'slo=~".+"'],
                "target_matchers": ['severity="ticket"'],
                "equal": ["service", "slo", "tenant", "agent"],
            }
        ],
        "receivers": [
            {"name": "null"},
            {"name": "page", "webhook_configs": [{"url": PAGE_URL, "send_resolved": True}]},
            {"name": "ticket", "webhook_configs": [{"url": TICKET_URL, "send_resolved": True}]},
        ],
    }


def test_a_severity_without_a_receiver_goes_to_null() -> None:
    config = alertmanager_config({"ticket": TICKET_URL}, AlertingConfig())
    assert [r["receiver"] for r in config["route"]["routes"]] == ["null", "ticket"]
    assert [r["name"] for r in config["receivers"]] == ["null", "ticket"]
    assert config["inhibit_rules"] == []  # a page that goes nowhere must not silence its ticket
    nothing = alertmanager_config({}, AlertingConfig())
    assert [r["receiver"] for r in nothing["route"]["routes"]] == ["null", "null"]
    assert nothing["receivers"] == [{"name": "null"}]


def test_alerting_knobs_set_grouping_and_repeats() -> None:
    alerting = AlertingConfig.model_validate(
        {"groupBy": ["alertname", "tenant"], "pageRepeatInterval": "30m", "ticketRepeatInterval": "1d"}
    )
    config = alertmanager_config({"page": PAGE_URL}, alerting)
    assert config["route"]["group_by"] == ["alertname", "tenant"]
    assert [r["repeat_interval"] for r in config["route"]["routes"]] == ["30m", "1d"]


def _amtool() -> str:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian: apt-get install prometheus-alertmanager)")
    return amtool


@pytest.mark.parametrize(
    ("receivers", "expected"),
    [
        ({"page": PAGE_URL, "ticket": TICKET_URL}, {"page": "page", "ticket": "ticket"}),
        ({"ticket": TICKET_URL}, {"page": "null", "ticket": "ticket"}),
        ({}, {"page": "null", "ticket": "null"}),
    ],
)
def test_alertmanager_accepts_the_config_and_routes_by_severity(
    tmp_path: Path, receivers: dict[Severity, str], expected: dict[Severity, str]
) -> None:
    """Alertmanager's own `amtool` checks the config and answers where an alert goes."""
    amtool = _amtool()
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(alertmanager_config(receivers, AlertingConfig())))
    checked = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    def receiver(*labels: str) -> str:
        test = [amtool, "config", "routes", "test", f"--config.file={path}", *labels]
        routed = subprocess.run(test, capture_output=True, text=True, check=True)
        return routed.stdout.strip()

    for severity, name in expected.items():
        assert receiver(f"severity={severity}", "slo=availability", "tenant=acme", "agent=support") == name
    assert receiver("severity=critical", "alertname=KubePodCrashLooping") == "null"
    assert receiver("alertname=Watchdog") == "null"


def test_dns_label() -> None:
    assert dns_label("Agent_SLO.v2") == "agent-slo-v2"
    assert len(dns_label("x" * 100)) == 63


def test_tenant_namespaces_come_from_the_specs() -> None:
    names = sorted(p.parent.name for p in (REPO / "specs" / "tenants").glob("*/tenant.yaml"))
    assert tenant_namespaces(REPO / "specs" / "tenants") == [f"tenant-{n}" for n in names]


# The program over a checkout with and without the operator's manifests and dashboards.


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "specs" / "crds", root / "specs" / "crds")
    shutil.copytree(REPO / "specs" / "tenants", root / "specs" / "tenants")
    shutil.copytree(REPO / "policies", root / "policies")  # a stack names its policy environment
    return root


def _in_cluster(run: StackRun, prefix: str) -> dict[str, dict[str, Any]]:
    """`Kind/[ns/]name` -> inputs of the Kubernetes objects a component (by name prefix) declared."""
    return {
        object_key(reveal(r.inputs)): reveal(r.inputs)
        for r in run.mocks.resources
        if r.type.startswith("kubernetes:") and r.name.startswith(f"{prefix}-") and "metadata" in r.inputs
    }


def test_without_operator_manifests_or_dashboards(tmp_path: Path) -> None:
    run = run_stack("dev", root=_checkout(tmp_path))
    assert set(_in_cluster(run, "operator")) == {
        "Namespace/agentplane-system",
        f"SecretProviderClass/agentplane-system/{OPERATOR_SECRET}",
    }
    assert set(_in_cluster(run, "monitoring")) == {"Namespace/monitoring"}


POD_MONITOR = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PodMonitor",
    "metadata": {"name": "agents", "namespace": "agentplane-system"},
    "spec": {"selector": {"matchLabels": {"app": "agent"}}, "podMetricsEndpoints": [{"port": "metrics"}]},
}


def test_with_operator_manifests_and_dashboards(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    deploy = root / "operator" / "deploy"
    (deploy / "monitoring").mkdir(parents=True)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "agentplane-system"}}
    (deploy / "00-namespace.yaml").write_text(yaml.safe_dump(namespace))
    (deploy / "30-deployment.yaml").write_text(yaml.safe_dump_all([SERVICE_ACCOUNT, DEPLOYMENT]))
    (deploy / "monitoring" / "50-monitors.yaml").write_text(yaml.safe_dump(POD_MONITOR))
    dashboards = root / "dashboards"
    dashboards.mkdir()
    (dashboards / "agents.json").write_text(json.dumps({"title": "Agents", "panels": [{"type": "graph"}]}))
    (dashboards / "agents-rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "agents", "rules": []}]})
    )

    run = run_stack("dev", root=root)
    identity = run.mocks.one(
        "azure-native:managedidentity:UserAssignedIdentity", "agentplane-operator-identity"
    )
    tag = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())["config"]["agentplane:images"]["tag"]
    login_server = run.mocks.one("azure-native:containerregistry:Registry").state["loginServer"]
    objects = _in_cluster(run, "operator")
    assert set(objects) == {
        "Namespace/agentplane-system",  # from the manifests, not created a second time
        "ServiceAccount/agentplane-system/agentplane-operator",
        "Deployment/agentplane-system/agentplane-operator",
        f"SecretProviderClass/agentplane-system/{OPERATOR_SECRET}",
    }  # not the monitors of `monitoring/`: they need the monitoring CRDs
    sa = objects["ServiceAccount/agentplane-system/agentplane-operator"]
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == identity.state["clientId"]
    template = objects["Deployment/agentplane-system/agentplane-operator"]["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    container = template["spec"]["containers"][0]
    assert container["image"] == f"{login_server}/agentplane/operator:{tag}"
    env = _env(container)
    assert env["AGENTPLANE_OPERATOR_RUNTIME_IMAGE"] == f"{login_server}/agentplane/runtime:{tag}"
    for name, key in CONNECTION_ENV.items():
        assert env[name] == {"secretKeyRef": {"name": OPERATOR_SECRET, "key": key}}

    spc = objects[f"SecretProviderClass/agentplane-system/{OPERATOR_SECRET}"]["spec"]
    vault = run.mocks.one("azure-native:keyvault:Vault")
    assert spc["parameters"]["clientID"] == identity.state["clientId"]
    assert spc["parameters"]["keyvaultName"] == vault.state["name"]
    synced = {d["key"] for d in spc["secretObjects"][0]["data"]}
    assert synced == set(CONNECTION_ENV.values())
    # `objects` is YAML: an "array:" of YAML documents, one per Key Vault object.
    objects = yaml.safe_load(spc["parameters"]["objects"])["array"]
    mounted = {yaml.safe_load(o)["objectName"] for o in objects}
    assert mounted == synced
    # Every synced key is a secret that exists in the vault.
    vault_secrets = {r.plain["secretName"] for r in run.mocks.of_type("azure-native:keyvault:Secret")}
    assert synced <= vault_secrets

    monitoring = _in_cluster(run, "monitoring")
    assert monitoring["ConfigMap/monitoring/dashboard-agents"]["metadata"]["labels"] == {
        "grafana_dashboard": "1"
    }
    assert monitoring["PrometheusRule/monitoring/agents-rules"]["spec"]["groups"][0]["name"] == "agents"
    assert monitoring["PodMonitor/agentplane-system/agents"]["spec"] == POD_MONITOR["spec"]
