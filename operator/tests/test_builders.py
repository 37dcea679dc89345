"""The pure builders: deterministic manifests with the fields production relies on."""

from __future__ import annotations

import base64
from typing import Any

from agentplane_operator.builders import (
    CONFIG_HASH_ANNOTATION,
    STORES_HASH_ANNOTATION,
    BuildSettings,
    EgressTarget,
    Gateway,
    KeyVault,
    build_agent_children,
    build_agent_deployment,
    build_knowledge_sync,
    build_tenant_children,
    egress_status,
    knowledge_sync_job_name,
)
from agentplane_platform.config import AgentConfig
from agentplane_platform.contract import LLM_SECRET, RUNTIME_SECRET, RUNTIME_SECRET_KEYS, RuntimeStores
from agentplane_platform.specs import SpecSet
from support.example_specs import example_agent_and_config

STORES = RuntimeStores(
    database_url="postgresql+asyncpg://agentplane:pw@db.internal:5432/agentplane",
    redis_url="rediss://:pw@cache.internal:6380/0",
    qdrant_url="http://qdrant.agentplane-system.svc:6333",
)
SETTINGS = BuildSettings(stores=STORES, runtime_image="registry.example/agentplane/runtime:1.2.3")
WIRED = SETTINGS.model_copy(
    update={
        "platform_egress": (EgressTarget(cidr="10.20.2.0/24", ports=(5432, 6380)),),
        "gateway": Gateway(
            name="agentplane", namespace="agentplane-gateway", url="https://agents.example.com"
        ),
        "tolerations": ({"key": "agentplane.io/agents", "operator": "Exists", "effect": "NoSchedule"},),
        "node_selector": {"agentpool": "workers"},
    }
)
VAULT = KeyVault(
    name="kv-agentplane-prod",
    tenant_id="00000000-0000-0000-0000-0000000000aa",
    client_id="11111111-2222-3333-4444-555555555555",
    provider_secrets={"AZURE_API_KEY": "llm-azure-api-key", "AZURE_API_BASE": "llm-azure-api-base"},
)


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_tenant_children(specs: SpecSet) -> None:
    children = build_tenant_children(specs.tenants["acme"].resource, SETTINGS)
    kinds = [c["kind"] for c in children]
    assert kinds == [
        "Namespace",
        "ResourceQuota",
        "LimitRange",
        "NetworkPolicy",
        "NetworkPolicy",
        "ServiceAccount",
        "RoleBinding",
        "Secret",
    ]
    namespace, quota = children[0], children[1]
    assert namespace["metadata"]["name"] == "tenant-acme"
    assert namespace["metadata"]["labels"]["agentplane.io/tier"] == "premium"
    assert quota["spec"]["hard"] == {
        "requests.cpu": "16",
        "requests.memory": "32Gi",
        "limits.memory": "32Gi",
        "pods": "60",
    }
    deny = children[3]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    allow = children[4]
    assert allow["metadata"]["annotations"]["agentplane.io/egress-hosts"] == (
        "orders.acme.example,docs-mcp.acme.example,*.openai.azure.com"
    )
    binding = children[6]
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "acme-support-platform"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "dana.lee@acme.example"},
    ]
    assert build_tenant_children(specs.tenants["acme"].resource, SETTINGS) == children


def test_the_runtime_secret_holds_exactly_the_keys_the_runtime_reads(specs: SpecSet) -> None:
    children = build_tenant_children(specs.tenants["acme"].resource, SETTINGS)
    (secret,) = [c for c in children if c["kind"] == "Secret"]
    assert secret["metadata"] == {
        "name": RUNTIME_SECRET,
        "namespace": "tenant-acme",
        "labels": {"app.kubernetes.io/managed-by": "agentplane-operator", "agentplane.io/tenant": "acme"},
    }
    data = _decoded(secret)
    assert set(data) <= RUNTIME_SECRET_KEYS
    assert data == {
        "AGENTPLANE_STORES": "required",
        "AGENTPLANE_DATABASE_URL": STORES.database_url,
        "AGENTPLANE_REDIS_URL": STORES.redis_url,
        "AGENTPLANE_QDRANT_URL": "http://qdrant.agentplane-system.svc:6333",
    }


def test_provider_credentials_are_copied_or_synced_from_key_vault(specs: SpecSet) -> None:
    acme = specs.tenants["acme"].resource
    copied = build_tenant_children(
        acme, SETTINGS.model_copy(update={"llm_secret_data": {"OPENAI_API_KEY": "sk-1"}})
    )
    llm = copied[-1]
    assert (llm["kind"], llm["metadata"]["name"], _decoded(llm)) == (
        "Secret",
        LLM_SECRET,
        {"OPENAI_API_KEY": "sk-1"},
    )

    tools = list(specs.tools_in("tenant-acme").values())
    vaulted = build_tenant_children(acme, SETTINGS.model_copy(update={"key_vault": VAULT}), tools)
    spc = vaulted[-1]
    assert spc["kind"] == "SecretProviderClass"
    assert spc["spec"]["parameters"]["clientID"] == VAULT.client_id
    objects = spc["spec"]["parameters"]["objects"]
    # the provider keys under their environment names, and the Key Vault secret of the product-docs tool
    assert "objectName: llm-azure-api-key\n    objectType: secret\n    objectAlias: AZURE_API_KEY" in objects
    assert "objectName: acme-docs-mcp-token" in objects
    assert spc["spec"]["secretObjects"] == [
        {
            "secretName": LLM_SECRET,
            "type": "Opaque",
            "data": [
                {"objectName": "AZURE_API_BASE", "key": "AZURE_API_BASE"},
                {"objectName": "AZURE_API_KEY", "key": "AZURE_API_KEY"},
            ],
        }
    ]
    account = next(c for c in vaulted if c["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"] == {"azure.workload.identity/client-id": VAULT.client_id}


def test_network_policies_admit_exactly_what_agents_need(specs: SpecSet) -> None:
    acme = specs.tenants["acme"].resource
    deny, allow = [c for c in build_tenant_children(acme, WIRED) if c["kind"] == "NetworkPolicy"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    ingress = allow["spec"]["ingress"]
    assert ingress == [
        {"from": [{"podSelector": {}}]},
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agentplane-gateway"}}}
            ],
            "ports": [{"protocol": "TCP", "port": 8080}],
        },
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"protocol": "TCP", "port": 9090}],
        },
    ]
    egress = allow["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.20.2.0/24"}}], "ports": [
        {"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 6380}]} in egress  # fmt: skip
    # a host rule cannot be enforced by NetworkPolicy: its ports go anywhere, and the status says so
    assert {"ports": [{"protocol": "TCP", "port": 443}]} in egress
    assert {(e.destination, e.enforced_by) for e in egress_status(acme)} == {
        ("orders.acme.example", "runtime"),
        ("docs-mcp.acme.example", "runtime"),
        ("*.openai.azure.com", "runtime"),
    }


def test_autoscaled_agent_gets_hpa_and_pdb_but_no_replicas(specs: SpecSet) -> None:
    agent, config = example_agent_and_config(specs, "tenant-acme", "support-bot")
    children = build_agent_children(agent, config, SETTINGS)
    assert [c["kind"] for c in children] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    deployment = children[1]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = children[3]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    config_map = children[0]
    assert AgentConfig.model_validate_json(config_map["data"]["agent.json"]) == config


def test_single_replica_agent_has_neither_hpa_nor_pdb(specs: SpecSet) -> None:
    agent, config = example_agent_and_config(specs, "tenant-acme", "legacy-support-bot")
    kinds = [c["kind"] for c in build_agent_children(agent, config, SETTINGS)]
    assert kinds == ["ConfigMap", "Deployment", "Service"]


def test_deployment_is_hardened_and_rolls_with_the_config(specs: SpecSet) -> None:
    agent, config = example_agent_and_config(specs, "tenant-acme", "support-bot")
    deployment = build_agent_deployment(agent, config, SETTINGS)
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "registry.example/agentplane/runtime:1.2.3"
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert {"startupProbe", "livenessProbe", "readinessProbe"} <= container.keys()
    assert pod["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == config.hash()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/run/agentplane/secrets/order-lookup" in mounts, (
        "the http tool's Kubernetes Secret is mounted"
    )
    assert "/var/run/agentplane/secrets/product-docs" not in mounts, (
        "Key Vault secrets come through the CSI driver"
    )
    assert container["envFrom"] == [
        {"secretRef": {"name": RUNTIME_SECRET, "optional": False}},
        {"secretRef": {"name": LLM_SECRET, "optional": False}},
    ]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "metrics": 9090}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert STORES_HASH_ANNOTATION in pod["metadata"]["annotations"]
    assert "nodeSelector" not in pod["spec"]

    _, legacy = example_agent_and_config(specs, "tenant-acme", "legacy-support-bot")
    other = build_agent_deployment(agent, legacy, SETTINGS)
    assert other["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] != config.hash()


def test_key_vault_gateway_and_placement_reach_the_pods(specs: SpecSet) -> None:
    agent, config = example_agent_and_config(specs, "tenant-acme", "support-bot")
    children = build_agent_children(agent, config, WIRED.model_copy(update={"key_vault": VAULT}))
    deployment = next(c for c in children if c["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert {"name": "key-vault", "mountPath": "/mnt/secrets-store", "readOnly": True} in pod["spec"][
        "containers"
    ][0]["volumeMounts"]
    assert pod["spec"]["nodeSelector"] == {"agentpool": "workers"}
    assert pod["spec"]["tolerations"][0]["key"] == "agentplane.io/agents"
    (route,) = [c for c in children if c["kind"] == "HTTPRoute"]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/t/acme/a/support-bot"}}]
    assert rule["backendRefs"] == [{"name": "support-bot", "port": 80}]
    assert route["spec"]["parentRefs"][0]["namespace"] == "agentplane-gateway"


def test_changed_stores_roll_the_pods(specs: SpecSet) -> None:
    agent, config = example_agent_and_config(specs, "tenant-acme", "support-bot")
    before = build_agent_deployment(agent, config, SETTINGS)
    moved = SETTINGS.model_copy(update={"stores": RuntimeStores(
        database_url="postgresql://elsewhere/agentplane", redis_url=STORES.redis_url, qdrant_url=STORES.qdrant_url)})  # fmt: skip
    after = build_agent_deployment(agent, config, moved)
    annotations = [d["spec"]["template"]["metadata"]["annotations"] for d in (before, after)]
    assert annotations[0][STORES_HASH_ANNOTATION] != annotations[1][STORES_HASH_ANNOTATION]
    assert annotations[0][CONFIG_HASH_ANNOTATION] == annotations[1][CONFIG_HASH_ANNOTATION]


def test_a_revision_syncs_knowledge_in_a_job_of_the_runtime_image() -> None:
    revision = "main@sha1:0123456789abcdef"
    url = "http://source-controller.flux-system.svc.cluster.local./gitrepository/flux-system/agentplane/abc.tar.gz"
    secret, account, job = build_knowledge_sync(SETTINGS, revision=revision, url=url, specs_dir="specs")
    assert (secret["kind"], secret["metadata"]["namespace"], set(_decoded(secret))) == (
        "Secret", "agentplane-system", set(STORES.secret_data()))  # fmt: skip
    assert account["metadata"]["name"] == job["spec"]["template"]["spec"]["serviceAccountName"]
    assert job["metadata"]["name"] == knowledge_sync_job_name(revision)
    assert job["metadata"]["name"] != knowledge_sync_job_name("main@sha1:fedcba")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == SETTINGS.runtime_image
    assert container["args"] == ["knowledge-sync", "--source", url, "--specs-dir", "specs"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    with_vault = build_knowledge_sync(
        SETTINGS.model_copy(update={"key_vault": VAULT}), revision=revision, url=url, specs_dir="specs"
    )
    assert [c["kind"] for c in with_vault] == ["Secret", "ServiceAccount", "SecretProviderClass", "Job"]
