"""The real Pulumi program, run under mocks for each committed stack (dev and prod)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_mocks import (
    ISSUER,
    REPO,
    SUBSCRIPTION,
    TENANT,
    USER_KUBECONFIG,
    Registered,
    StackRun,
    is_secret,
    reveal,
    run_stack,
    secret_at,
    without_secrets,
)

from agentplane_infra.config import SECRET_KEYS, SEVERITIES
from agentplane_infra.identity import ACR_PULL, KEY_VAULT_SECRETS_USER, NETWORK_CONTRIBUTOR
from agentplane_infra.manifests import dns_label, object_key

STACKS = ("dev", "prod")
KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
LLM_KEYS = {"openai": "sk-test-openai", "anthropic": "sk-test-anthropic", "azure": "az-test-key"}
LLM_ENDPOINTS = {"azure": "https://agentplane-test.openai.azure.com"}
ALERT_RECEIVERS = {
    "page": "https://events.pager.example/integration/page-token-123/alertmanager",
    "ticket": "https://tickets.example/hooks/alertmanager?token=ticket-token-456",
}
LLM_SECRET_CONFIG = {"agentplane:llmProviderKeys": LLM_KEYS, "agentplane:alertReceivers": ALERT_RECEIVERS}
LLM_CONFIG = {"agentplane:llmProviderEndpoints": LLM_ENDPOINTS}
PROVIDER_SECRETS = {
    "OPENAI_API_KEY": "llm-openai-api-key",
    "ANTHROPIC_API_KEY": "llm-anthropic-api-key",
    "AZURE_API_KEY": "llm-azure-api-key",
    "AZURE_API_BASE": "llm-azure-api-base",
}
"""What the operator is told to sync into tenants' LLM Secret: environment name -> Key Vault secret."""

AKS = "azure-native:containerservice:ManagedCluster"
SERVER = "azure-native:dbforpostgresql:Server"
REDIS = "azure-native:redis:Redis"
VAULT = "azure-native:keyvault:Vault"
SECRET = "azure-native:keyvault:Secret"
ROLE = "azure-native:authorization:RoleAssignment"
IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
CREDENTIAL = "azure-native:managedidentity:FederatedIdentityCredential"
K8S_PROVIDER = "pulumi:providers:kubernetes"
CRD = "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"
RELEASE = "kubernetes:helm.sh/v3:Release"
ACR = "azure-native:containerregistry:Registry"
ENDPOINT = "azure-native:network:PrivateEndpoint"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def stack_file(stack: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())
    return loaded


def config(stack: str, key: str) -> Any:
    return stack_file(stack)["config"][f"agentplane:{key}"]


@pytest.fixture(scope="module")
def runs() -> dict[str, StackRun]:
    """One isolated run of the program per stack, with LLM keys and alert receivers set as Pulumi
    secrets (and Azure OpenAI's endpoint as plain config)."""
    return {stack: run_stack(stack, config=LLM_CONFIG, secret_config=LLM_SECRET_CONFIG) for stack in STACKS}


@pytest.fixture(params=STACKS)
def run(request: pytest.FixtureRequest, runs: dict[str, StackRun]) -> StackRun:
    return runs[request.param]


def test_stacks_declare_the_same_resources(runs: dict[str, StackRun]) -> None:
    """dev and prod differ only in config: the same program shape, the same resources — but for the
    registry's private endpoint, which only prod's Premium tier has."""
    dev, prod = ({(r.type, r.name) for r in runs[s].mocks.resources} for s in STACKS)
    assert prod - dev == {
        (ENDPOINT, "agentplane-acr-endpoint"),
        ("azure-native:network:PrivateDnsZoneGroup", "agentplane-acr-endpoint-dns"),
    }
    assert dev <= prod
    for stack in STACKS:  # names are unique per type
        assert len({(r.type, r.name) for r in runs[stack].mocks.resources}) == len(
            runs[stack].mocks.resources
        )


def test_the_project_entry_point_runs_the_same_program(runs: dict[str, StackRun]) -> None:
    """`Pulumi.yaml` runs `infra/__main__.py`, which finds the checkout it lives in."""
    entry = run_stack("dev", config=LLM_CONFIG, secret_config=LLM_SECRET_CONFIG, entry_point=True)
    assert {(r.type, r.name) for r in entry.mocks.resources} == {
        (r.type, r.name) for r in runs["dev"].mocks.resources
    }
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["name"] == "agentplane"
    assert (REPO / project["main"] / "__main__.py").is_file()


def test_postgres_is_private_version_16_with_ha_and_geo_backups_in_prod(run: StackRun) -> None:
    server = run.mocks.one(SERVER).plain
    assert server["version"] == "16"
    subnet = run.mocks.one("azure-native:network:Subnet", "agentplane-postgres")
    assert server["network"]["delegatedSubnetResourceId"] == subnet.id
    assert subnet.plain["delegations"][0]["serviceName"] == "Microsoft.DBforPostgreSQL/flexibleServers"
    assert server["network"]["publicNetworkAccess"] == "Disabled"
    zone = run.mocks.by_id(server["network"]["privateDnsZoneArmResourceId"])
    assert zone.state["name"].endswith(".postgres.database.azure.com")
    if run.stack == "prod":
        assert server["highAvailability"] == {"mode": "ZoneRedundant"}
        assert server["backup"]["geoRedundantBackup"] == "Enabled"
    else:
        assert server["highAvailability"] == {"mode": "Disabled"}
        assert server["backup"]["geoRedundantBackup"] == "Disabled"
    assert server["sku"] == {
        "name": config(run.stack, "postgres")["skuName"],
        "tier": config(run.stack, "postgres")["skuTier"],
    }

    database = run.mocks.one("azure-native:dbforpostgresql:Database").plain
    assert database["databaseName"] == "agentplane"
    assert database["serverName"] == run.mocks.one(SERVER).state["name"]


def test_postgres_admin_password_is_generated_and_kept_in_key_vault(run: StackRun) -> None:
    server = run.mocks.one(SERVER)
    password = run.mocks.one("random:index/randomPassword:RandomPassword", "agentplane-admin-password")
    assert secret_at(server.inputs, "administratorLoginPassword")
    assert reveal(server.inputs["administratorLoginPassword"]) == password.state["result"]
    stored = run.mocks.one(SECRET, "agentplane-postgres-admin-password")
    assert reveal(stored.inputs)["properties"]["value"] == password.state["result"]
    url = run.mocks.one(SECRET, "agentplane-database-url").plain["properties"]["value"]
    assert url == (
        f"postgresql://agentplane:{password.state['result']}@{server.state['fullyQualifiedDomainName']}"
        ":5432/agentplane?ssl=require"
    )


def test_redis_is_tls_only(run: StackRun) -> None:
    redis = run.mocks.one(REDIS)
    inputs = redis.plain
    assert inputs["enableNonSslPort"] is False
    assert inputs["minimumTlsVersion"] == "1.2"
    assert inputs["publicNetworkAccess"] == "Disabled"
    cfg = config(run.stack, "redis")
    assert inputs["sku"] == {"name": cfg["sku"], "family": cfg["family"], "capacity": cfg["capacity"]}
    endpoint = run.mocks.one("azure-native:network:PrivateEndpoint", "agentplane-redis-endpoint").plain
    assert endpoint["privateLinkServiceConnections"][0]["privateLinkServiceId"] == redis.id
    url = run.mocks.one(SECRET, "agentplane-redis-url").plain["properties"]["value"]
    assert url == f"rediss://:redis-primary-key@{redis.state['hostName']}:6380/0"
    assert (
        "azure-native:redis:listRedisKeys",
        {"name": redis.state["name"], "resourceGroupName": f"agentplane-{run.stack}"},
    ) in run.mocks.calls


def test_key_vault_is_rbac_network_restricted_with_purge_protection_in_prod(run: StackRun) -> None:
    vault = run.mocks.one(VAULT)
    props = vault.plain["properties"]
    assert props["enableRbacAuthorization"] is True
    assert "accessPolicies" not in props
    assert props["enableSoftDelete"] is True
    assert props["tenantId"] == TENANT
    assert props["networkAcls"]["defaultAction"] == "Deny"
    assert props["publicNetworkAccess"] == "Disabled"
    if run.stack == "prod":
        assert props["enablePurgeProtection"] is True
        assert props["softDeleteRetentionInDays"] == 90
    else:
        assert "enablePurgeProtection" not in props  # cannot be turned off once on: dev leaves it unset
    endpoint = run.mocks.one("azure-native:network:PrivateEndpoint", "agentplane-kv-endpoint").plain
    assert endpoint["privateLinkServiceConnections"][0]["privateLinkServiceId"] == vault.id
    assert endpoint["privateLinkServiceConnections"][0]["groupIds"] == ["vault"]


def test_key_vault_holds_every_secret_as_a_pulumi_secret(run: StackRun) -> None:
    secrets = {r.plain["secretName"]: r for r in run.mocks.of_type(SECRET)}
    assert set(secrets) == {
        "database-url",
        "redis-url",
        "qdrant-url",
        "qdrant-api-key",
        "postgres-admin-password",
        "grafana-admin-password",
        *PROVIDER_SECRETS.values(),
    }
    vault_name = run.mocks.one(VAULT).state["name"]
    for name, secret in secrets.items():
        assert secret_at(secret.inputs, "properties", "value"), name
        assert secret.plain["vaultName"] == vault_name
    for provider, key in LLM_KEYS.items():
        assert secrets[f"llm-{provider}-api-key"].plain["properties"]["value"] == key
    assert secrets["llm-azure-api-base"].plain["properties"]["value"] == LLM_ENDPOINTS["azure"]


def test_aks_has_workload_identity_oidc_network_policy_and_key_vault_csi(run: StackRun) -> None:
    aks = run.mocks.one(AKS).plain
    cfg = config(run.stack, "aks")
    assert aks["kubernetesVersion"] == cfg["kubernetesVersion"]
    assert aks["dnsPrefix"] == f"agentplane-{run.stack}"
    assert aks["oidcIssuerProfile"] == {"enabled": True}
    assert aks["securityProfile"]["workloadIdentity"] == {"enabled": True}
    assert aks["networkProfile"]["networkPlugin"] == "azure"
    assert aks["networkProfile"]["networkPolicy"] == "cilium"
    assert aks["addonProfiles"]["azureKeyvaultSecretsProvider"]["enabled"] is True
    assert aks["aadProfile"]["managed"] is True
    assert aks["aadProfile"]["enableAzureRBAC"] is True
    assert aks["disableLocalAccounts"] is True
    assert aks["sku"]["tier"] == cfg["skuTier"]
    workspace = run.mocks.one("azure-native:operationalinsights:Workspace")
    assert aks["addonProfiles"]["omsagent"]["enabled"] is True
    assert aks["addonProfiles"]["omsagent"]["config"]["logAnalyticsWorkspaceResourceID"] == workspace.id

    subnet = run.mocks.one("azure-native:network:Subnet", "agentplane-aks").id
    pools = {p["name"]: p for p in aks["agentPoolProfiles"]}
    assert set(pools) == {"system", "app", "worker"}
    assert pools["system"]["mode"] == "System"
    for name in pools:
        pool, wanted = pools[name], cfg[f"{name}Pool"]
        assert pool["enableAutoScaling"] is True
        assert (pool["minCount"], pool["maxCount"]) == (wanted["minCount"], wanted["maxCount"])
        assert pool["vmSize"] == wanted["vmSize"]
        assert pool["orchestratorVersion"] == cfg["kubernetesVersion"]
        assert pool["vnetSubnetID"] == subnet
        assert pool.get("availabilityZones", []) == wanted.get("zones", [])


def test_kubernetes_version_is_never_hard_coded() -> None:
    """The version comes from stack config: no literal `1.xx` version in the infra sources."""
    for path in (REPO / "infra" / "src").rglob("*.py"):
        assert not re.search(r"[\"']1\.\d{2}(\.\d+)?[\"']", path.read_text()), path


def test_every_role_assignment_is_scoped_to_one_resource_with_least_privilege(run: StackRun) -> None:
    assignments = run.mocks.of_type(ROLE)
    assert assignments
    ids = {r.id: r for r in run.mocks.resources}
    principals = {r.state["principalId"]: r.name for r in run.mocks.of_type(IDENTITY)}
    principals[_kubelet_object_id(run)] = "kubelet"
    for assignment in assignments:
        inputs = assignment.plain
        scope = inputs["scope"]
        assert not re.fullmatch(r"/subscriptions/[^/]+(/resourceGroups/[^/]+)?/?", scope), assignment.name
        assert scope in ids, f"{assignment.name}: scope {scope} is not a resource of this stack"
        assert inputs["principalId"] in principals
        role = inputs["roleDefinitionId"]
        assert role.startswith(
            f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/"
        )
        target = ids[scope]
        if target.type == SECRET:
            assert role.endswith(KEY_VAULT_SECRETS_USER), assignment.name
        elif target.type == ACR:
            assert role.endswith(ACR_PULL), assignment.name
            assert principals[inputs["principalId"]] == "kubelet"
        else:
            assert target.type == "azure-native:network:Subnet"
            assert role.endswith(NETWORK_CONTRIBUTOR)
            assert principals[inputs["principalId"]] == "agentplane-aks-identity"
        assert not role.endswith(KEY_VAULT_SECRETS_OFFICER)


def _kubelet_object_id(run: StackRun) -> str:
    object_id: str = run.mocks.one(AKS).state["identityProfile"]["kubeletidentity"]["objectId"]
    return object_id


def _readable_secrets(run: StackRun, identity: str) -> set[str]:
    principal = run.mocks.one(IDENTITY, identity).state["principalId"]
    ids = {r.id: r for r in run.mocks.resources}
    return {
        ids[a.plain["scope"]].plain["secretName"]
        for a in run.mocks.of_type(ROLE)
        if a.plain["principalId"] == principal
    }


def test_operator_and_runtime_read_only_the_secrets_they_use(run: StackRun) -> None:
    """The operator reads the connection settings; agent pods only the provider settings the operator
    syncs into their LLM Secret (their stores come from the operator's runtime Secret)."""
    connection = {"database-url", "redis-url", "qdrant-url", "qdrant-api-key"}
    assert _readable_secrets(run, "agentplane-operator-identity") == connection
    assert _readable_secrets(run, "agentplane-runtime-identity") == set(PROVIDER_SECRETS.values())


def _tenants() -> list[str]:
    return sorted(
        yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in (REPO / "specs" / "tenants").glob("*/tenant.yaml")
    )


def test_federated_credentials_bind_the_identities_to_their_service_accounts(run: StackRun) -> None:
    credentials = {c.plain["subject"]: c.plain for c in run.mocks.of_type(CREDENTIAL)}
    operator = "system:serviceaccount:agentplane-system:agentplane-operator"
    runtime = {f"system:serviceaccount:tenant-{t}:agentplane-agent" for t in _tenants()}
    assert runtime, "specs/tenants/ holds tenants"
    # the knowledge-sync Jobs embed with the providers' keys, as the runtime does
    runtime.add("system:serviceaccount:agentplane-system:agentplane-knowledge")
    assert set(credentials) == {operator} | runtime
    identities = {r.state["name"]: r for r in run.mocks.of_type(IDENTITY)}
    for subject, credential in credentials.items():
        assert credential["issuer"] == ISSUER
        assert credential["audiences"] == ["api://AzureADTokenExchange"]
        owner = "agentplane-operator-identity" if subject == operator else "agentplane-runtime-identity"
        assert credential["resourceName"] == identities[owner].state["name"]


def test_every_in_cluster_resource_uses_the_aks_provider(run: StackRun) -> None:
    provider = run.mocks.one(K8S_PROVIDER)  # the only Kubernetes provider: no default one
    in_cluster = [r for r in run.mocks.resources if r.type.startswith("kubernetes:")]
    assert len(in_cluster) > 10
    for resource in in_cluster:
        assert resource.provider.startswith(f"urn:pulumi:{run.stack}::agentplane::")
        assert resource.provider.endswith(f"{K8S_PROVIDER}::{provider.name}::{provider.id}"), resource.name

    # The provider's kubeconfig is the AKS user credential, secret, logging in without a browser.
    assert is_secret(provider.inputs["kubeconfig"])
    kubeconfig = yaml.safe_load(reveal(provider.inputs["kubeconfig"]))
    args = kubeconfig["users"][0]["user"]["exec"]["args"]
    assert args[args.index("--login") + 1] == config(run.stack, "aks")["kubeloginMethod"]
    assert kubeconfig["clusters"] == yaml.safe_load(USER_KUBECONFIG)["clusters"]
    aks = run.mocks.one(AKS)
    assert (
        "azure-native:containerservice:listManagedClusterUserCredentials",
        {"resourceGroupName": f"agentplane-{run.stack}", "resourceName": aks.state["name"], "format": "exec"},
    ) in run.mocks.calls


def _files_crds(directory: Path) -> dict[str, dict[str, Any]]:
    crds: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds[doc["metadata"]["name"]] = doc
    return crds


def test_crds_applied_are_exactly_the_files_in_specs_crds(run: StackRun) -> None:
    files = _files_crds(REPO / "specs" / "crds")
    assert files, "specs/crds/ holds the generated CRDs"
    applied = {
        r.name.removeprefix("crds-"): r.plain for r in run.mocks.of_type(CRD) if r.name.startswith("crds-")
    }
    assert set(applied) == set(files)
    for name, crd in applied.items():
        assert crd["spec"] == files[name]["spec"], name
        assert crd["metadata"] == files[name]["metadata"], name
    # Any other CRD comes from the operator's own manifests (kopf's peering), none from elsewhere.
    others = {r.plain["metadata"]["name"] for r in run.mocks.of_type(CRD) if not r.name.startswith("crds-")}
    assert others == set(_files_crds(REPO / "operator" / "deploy"))


def test_helm_charts_are_pinned_from_config(run: StackRun) -> None:
    releases = {r.plain["name"]: r.plain for r in run.mocks.of_type(RELEASE)}
    assert set(releases) == {"qdrant", "kube-prometheus-stack", "flux", "traefik"}
    for release, key in (
        ("qdrant", "qdrant"),
        ("kube-prometheus-stack", "monitoring"),
        ("flux", "gitops"),
        ("traefik", "gateway"),
    ):
        chart = config(run.stack, key)["chart"]
        assert releases[release]["version"] == chart["version"]
        assert releases[release]["repositoryOpts"] == {"repo": chart["repository"]}
    qdrant = releases["qdrant"]
    cfg = config(run.stack, "qdrant")
    assert qdrant["namespace"] == "agentplane-system"
    assert qdrant["values"]["replicaCount"] == cfg["replicas"]
    assert qdrant["values"]["persistence"] == {
        "size": cfg["storageSize"],
        "storageClassName": cfg["storageClass"],
    }
    assert qdrant["values"]["config"]["cluster"]["enabled"] is (cfg["replicas"] > 1)
    api_key = run.mocks.one("random:index/randomPassword:RandomPassword", "qdrant-api-key").state["result"]
    assert qdrant["values"]["apiKey"] == api_key
    grafana = run.mocks.one(RELEASE, "monitoring-release")
    assert secret_at(grafana.inputs, "values", "grafana", "adminPassword")
    assert secret_at(run.mocks.one(RELEASE, "qdrant-release").inputs, "values", "apiKey")


def test_flux_syncs_this_repositorys_specs(run: StackRun) -> None:
    cfg = config(run.stack, "gitops")
    source = run.mocks.one("kubernetes:source.toolkit.fluxcd.io/v1:GitRepository").plain
    assert source["spec"]["url"] == cfg["repoUrl"]
    assert source["spec"]["ref"] == {"branch": cfg["branch"]}
    assert "!/specs/" in source["spec"]["ignore"].splitlines()
    sync = run.mocks.one("kubernetes:kustomize.toolkit.fluxcd.io/v1:Kustomization").plain
    assert sync["spec"]["path"] == cfg["path"]
    assert cfg["path"].startswith("./specs/")
    assert (REPO / cfg["path"]).is_dir()
    assert sync["spec"]["sourceRef"] == {"kind": "GitRepository", "name": source["metadata"]["name"]}
    assert sync["spec"]["prune"] is True


def test_stack_outputs(run: StackRun) -> None:
    assert set(run.outputs) >= {
        "clusterName",
        "kubeconfig",
        "databaseHost",
        "redisHost",
        "keyVaultUri",
        "operatorClientId",
        "runtimeClientId",
    }
    assert run.secret_outputs == {"kubeconfig"}
    assert run.outputs["clusterName"] == run.mocks.one(AKS).state["name"]
    assert run.outputs["databaseHost"] == run.mocks.one(SERVER).state["fullyQualifiedDomainName"]
    assert run.outputs["redisHost"] == run.mocks.one(REDIS).state["hostName"]
    assert run.outputs["keyVaultUri"] == run.mocks.one(VAULT).state["properties"]["vaultUri"]
    assert (
        run.outputs["operatorClientId"]
        == run.mocks.one(IDENTITY, "agentplane-operator-identity").state["clientId"]
    )
    assert (
        run.outputs["runtimeClientId"]
        == run.mocks.one(IDENTITY, "agentplane-runtime-identity").state["clientId"]
    )
    assert "--login" in run.outputs["kubeconfig"]
    assert run.outputs["registryLoginServer"] == run.mocks.one(ACR).state["loginServer"]
    assert run.outputs["gatewayUrl"] == config(run.stack, "gateway")["url"]


@pytest.mark.parametrize("stack", STACKS)
def test_no_secret_in_plain_stack_config(stack: str) -> None:
    """Secrets only as Pulumi secrets: nothing credential-like is written in plain text."""
    suspicious = re.compile(r"password|secret|token|api[-_]?key|credential|connection|^key$", re.IGNORECASE)

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and set(value) == {"secure"}:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                if suspicious.search(str(k)) and not (isinstance(v, dict) and set(v) <= {"secure"}):
                    pytest.fail(f"Pulumi.{stack}.yaml: {path}.{k} must be a Pulumi secret (secure:)")
                walk(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
        elif isinstance(value, str):
            assert not re.search(r"sk-[A-Za-z0-9]{10,}|://[^/\s]*:[^@/\s]+@", value), (
                f"{path}: looks like a credential"
            )

    def all_secure(value: Any) -> bool:
        """Secret as a whole (`secure:`), or a map whose every value is (`--secret --path`)."""
        if isinstance(value, dict) and set(value) == {"secure"}:
            return True
        return isinstance(value, dict) and bool(value) and all(all_secure(v) for v in value.values())

    document = stack_file(stack)
    for key in SECRET_KEYS:
        value = document["config"].get(f"agentplane:{key}")
        assert value is None or all_secure(value), f"Pulumi.{stack}.yaml: agentplane:{key} has a plain value"
    walk(document["config"], "config")


PLAIN_SECRETS = {
    "llmProviderKeys": ({"openai": "sk-plain"}, "<provider>' <API key>"),
    "alertReceivers": ({"page": "https://hooks.example/plain-token"}, "<page|ticket>' <https webhook URL>"),
}


def test_every_secret_key_is_tried_in_plain() -> None:
    assert set(PLAIN_SECRETS) == set(SECRET_KEYS)


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("key", sorted(PLAIN_SECRETS))
def test_a_plain_text_secret_in_config_is_refused(stack: str, key: str) -> None:
    """Refused with the command that sets it right (and without quoting the value)."""
    value, command = PLAIN_SECRETS[key]
    with pytest.raises(Exception, match="must be a Pulumi secret") as refused:
        run_stack(stack, config={f"agentplane:{key}": value})
    message = str(refused.value)
    assert f"pulumi config set --secret --path 'agentplane:{key}.{command}" in message
    assert not any(v in message for v in value.values())


def test_invalid_config_names_the_key_and_field() -> None:
    aks = dict(config("dev", "aks"))
    aks["appPool"] = {**aks["appPool"], "minCount": 5, "maxCount": 2}
    with pytest.raises(Exception, match=r"agentplane:aks: appPool: .*minCount 5 is above maxCount 2"):
        run_stack("dev", config={"agentplane:aks": aks})


@pytest.mark.parametrize(
    ("key", "change", "message"),
    [
        (
            "registry",
            {"sku": "Basic", "allowedIpRanges": ["203.0.113.0/24"]},
            r"allowedIpRanges needs sku Premium",
        ),
        ("images", {"tag": "latest!"}, r"tag 'latest!' is not an image tag"),
        ("network", {"llmEgress": [{"cidr": "10.0.0.300/8", "ports": [443]}]}, r"llmEgress\.0: .*cidr"),
        ("network", {"llmEgress": [{"cidr": "10.0.0.0/8", "ports": [0]}]}, r"ports \[0\] are not TCP ports"),
        ("gateway", {"url": "https://agents.example.com/v1"}, r"without a path"),
        ("gateway", {"gatewayApiVersion": "1.5"}, r"gatewayApiVersion '1.5' is not a release"),
        ("llmProviderEndpoints", {"azure": "http://plain.example.com"}, r"\['azure'\] must be https:// URLs"),
        ("llmProviderEndpoints", {"Azure-OpenAI": "https://x.example.com"}, r"not litellm provider names"),
        ("monitoring", {"alerting": {"pageRepeatInterval": "1 hour"}}, r"pageRepeatInterval '1 hour' is not"),
        ("monitoring", {"alerting": {"ticketRepeatInterval": "0h"}}, r"not a positive duration"),
        ("monitoring", {"alerting": {"groupBy": ["tenant", "slo-name"]}}, r"\['slo-name'\] are not label"),
        ("monitoring", {"alerting": {"groupWait": "10s"}}, r"alerting\.groupWait: Extra inputs"),
        ("audit", {"retentionDays": -1}, r"retentionDays: Input should be greater than or equal to 0"),
        ("audit", {"retentionDays": "a year"}, r"retentionDays: Input should be a valid integer"),
        ("audit", {"retentionDay": 30}, r"retentionDay: Extra inputs"),
    ],
)
def test_invalid_values_are_refused_with_the_key(key: str, change: dict[str, Any], message: str) -> None:
    current = stack_file("dev")["config"].get(f"agentplane:{key}", {})
    with pytest.raises(Exception, match=rf"agentplane:{key}.*{message}"):
        run_stack("dev", config={f"agentplane:{key}": {**current, **change}})


def test_operator_manifests_applied_are_those_in_operator_deploy(run: StackRun) -> None:
    """Whatever `operator/deploy/` holds now (possibly nothing) is applied, plus the SecretProviderClass.
    (Its `monitoring/` is the monitoring component's.)"""
    files = [
        doc
        for path in sorted((REPO / "operator" / "deploy").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    expected = {object_key(doc) for doc in files} | {
        "Namespace/agentplane-system",
        "SecretProviderClass/agentplane-system/agentplane-operator",
    }
    applied = {
        object_key(r.plain)
        for r in run.mocks.resources
        if r.type.startswith("kubernetes:") and r.name.startswith("operator-")
    }
    assert applied == expected


# The container registry.


def test_registry_is_the_stacks_own_without_admin_user_and_private_in_premium(run: StackRun) -> None:
    acr = run.mocks.one(ACR)
    inputs = acr.plain
    cfg = config(run.stack, "registry")
    assert inputs["sku"] == {"name": cfg["sku"]}
    assert inputs["adminUserEnabled"] is False
    assert inputs["anonymousPullEnabled"] is False
    assert re.fullmatch(rf"agentplane{run.stack}[a-z0-9]{{8}}", acr.state["name"])
    endpoints = [
        e.plain
        for e in run.mocks.of_type(ENDPOINT)
        if e.plain["privateLinkServiceConnections"][0]["privateLinkServiceId"] == acr.id
    ]
    if cfg["sku"] == "Premium":
        # Reached from the cluster through its private endpoint; publicly from nowhere (no ranges set).
        assert inputs["publicNetworkAccess"] == "Disabled"
        assert inputs["networkRuleSet"] == {"defaultAction": "Deny", "ipRules": []}
        [endpoint] = endpoints
        assert endpoint["privateLinkServiceConnections"][0]["groupIds"] == ["registry"]
        subnet = run.mocks.one("azure-native:network:Subnet", "agentplane-endpoints")
        assert endpoint["subnet"] == {"id": subnet.id}
        group = run.mocks.one("azure-native:network:PrivateDnsZoneGroup", "agentplane-acr-endpoint-dns").plain
        zone = run.mocks.by_id(group["privateDnsZoneConfigs"][0]["privateDnsZoneId"])
        assert zone.state["name"] == "privatelink.azurecr.io"
    else:
        # Network rules and private endpoints are Premium-only: public, but Entra ID auth only.
        assert inputs["publicNetworkAccess"] == "Enabled"
        assert "networkRuleSet" not in inputs
        assert endpoints == []


def test_only_the_kubelet_identity_pulls_and_only_from_the_registry(run: StackRun) -> None:
    acr = run.mocks.one(ACR)
    pulls = [a.plain for a in run.mocks.of_type(ROLE) if a.plain["roleDefinitionId"].endswith(ACR_PULL)]
    assert pulls == [
        {
            "scope": acr.id,
            "roleDefinitionId": f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/"
            f"roleDefinitions/{ACR_PULL}",
            "principalId": _kubelet_object_id(run),
            "principalType": "ServicePrincipal",
        }
    ]
    # The kubelet identity has no other role; the registry grants no other.
    assert [a.name for a in run.mocks.of_type(ROLE) if a.plain["principalId"] == _kubelet_object_id(run)] == [
        "agentplane-kubelet-acr-pull"
    ]
    assert [a.name for a in run.mocks.of_type(ROLE) if a.plain["scope"] == acr.id] == [
        "agentplane-kubelet-acr-pull"
    ]


def _operator_container(run: StackRun) -> dict[str, Any]:
    [deployment] = [
        r.plain for r in run.mocks.of_type(DEPLOYMENT) if r.plain["metadata"]["name"] == "agentplane-operator"
    ]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_images_are_the_registrys(run: StackRun) -> None:
    """The operator's image and the runtime image it deploys: `<registry>/agentplane/<name>:<tag>`."""
    login_server = run.mocks.one(ACR).state["loginServer"]
    tag = config(run.stack, "images")["tag"]
    container = _operator_container(run)
    assert container["image"] == f"{login_server}/agentplane/operator:{tag}"
    assert _env(container)["AGENTPLANE_OPERATOR_RUNTIME_IMAGE"] == f"{login_server}/agentplane/runtime:{tag}"
    assert container["args"] == ["run"]  # the operator's own manifest is kept: only infra's settings change


RUNTIME_OVERRIDE = "mirror.example/agentplane/runtime@sha256:" + "a" * 64
HTTPS_GATEWAY = {
    "hostname": "agents.example.com",
    "tlsSecretName": "agents-tls",
    "url": "https://agents.example.com",
}


@pytest.fixture(scope="module")
def optional_run() -> StackRun:
    """dev with the optional settings the committed stacks leave unset: one run for their tests."""
    return run_stack(
        "dev",
        config={
            "agentplane:images": {**config("dev", "images"), "runtime": RUNTIME_OVERRIDE},
            "agentplane:gateway": {**config("dev", "gateway"), **HTTPS_GATEWAY},
        },
    )


def test_image_references_can_be_overridden(optional_run: StackRun) -> None:
    container = _operator_container(optional_run)
    assert container["image"].endswith(f".azurecr.io/agentplane/operator:{config('dev', 'images')['tag']}")
    assert _env(container)["AGENTPLANE_OPERATOR_RUNTIME_IMAGE"] == RUNTIME_OVERRIDE


# What the operator is told.


def test_operator_settings_wire_key_vault_gateway_egress_monitoring_and_the_agent_pool(run: StackRun) -> None:
    env = _env(_operator_container(run))
    net = config(run.stack, "network")
    ours = {name: value for name, value in env.items() if name.startswith("AGENTPLANE_OPERATOR_")}
    # From the operator's own manifest: kept; the connection settings: from the synced Secret.
    from_manifest = {"AGENTPLANE_OPERATOR_PLATFORM_NAMESPACE", "AGENTPLANE_OPERATOR_METRICS_PORT"}
    connection = {name for name, value in ours.items() if isinstance(value, dict)}
    assert connection == {
        "AGENTPLANE_OPERATOR_DATABASE_URL",
        "AGENTPLANE_OPERATOR_REDIS_URL",
        "AGENTPLANE_OPERATOR_QDRANT_URL",
        "AGENTPLANE_OPERATOR_QDRANT_API_KEY",
    }
    settings = {
        k.removeprefix("AGENTPLANE_OPERATOR_"): v
        for k, v in ours.items()
        if k not in from_manifest | connection
    }
    login_server = run.mocks.one(ACR).state["loginServer"]
    assert settings == {
        "RUNTIME_IMAGE": f"{login_server}/agentplane/runtime:{config(run.stack, 'images')['tag']}",
        "KEY_VAULT_NAME": run.mocks.one(VAULT).state["name"],
        "KEY_VAULT_TENANT_ID": TENANT,
        "RUNTIME_CLIENT_ID": run.mocks.one(IDENTITY, "agentplane-runtime-identity").state["clientId"],
        "PROVIDER_SECRETS": json.dumps(PROVIDER_SECRETS, sort_keys=True, separators=(",", ":")),
        "GATEWAY_NAME": "agentplane",
        "GATEWAY_NAMESPACE": "agentplane-gateway",
        "GATEWAY_URL": config(run.stack, "gateway")["url"],
        "PLATFORM_EGRESS": settings["PLATFORM_EGRESS"],  # below
        "MONITORING_NAMESPACE": "monitoring",
        "AGENT_NODE_SELECTOR": '{"agentplane.io/pool":"worker"}',
        "AGENT_TOLERATIONS": '[{"effect":"NoSchedule","key":"agentplane.io/pool","operator":"Equal","value":"worker"}]',
        "GITOPS_SOURCE": "flux-system/agentplane",
        "GITOPS_SPECS_DIR": "specs",
        "AUDIT_RETENTION_DAYS": "365",  # agentplane:audit unset: a year
    }
    # PostgreSQL's subnet on 5432, the private endpoints' (Redis) on Redis' TLS port, then LLM providers.
    assert json.loads(settings["PLATFORM_EGRESS"]) == [
        {"cidr": net["postgresSubnet"], "ports": [5432]},
        {"cidr": net["endpointsSubnet"], "ports": [6380]},
        {"cidr": "0.0.0.0/0", "ports": [443]},
    ]
    # Every provider secret the operator names exists in the vault (and the runtime identity reads it).
    vault_secrets = {r.plain["secretName"] for r in run.mocks.of_type(SECRET)}
    assert set(json.loads(settings["PROVIDER_SECRETS"]).values()) <= vault_secrets


def test_the_operators_settings_parse_as_the_operator_reads_them(
    run: StackRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer's side: the environment infra writes, read by the operator's own settings class."""
    from agentplane_operator.settings import OperatorSettings

    for name, value in _env(_operator_container(run)).items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "from-the-secret")
    parsed = OperatorSettings()
    assert parsed.audit_retention_days == 365
    built = parsed.build()
    assert built.key_vault is not None
    assert built.key_vault.provider_secrets == PROVIDER_SECRETS
    assert (
        built.key_vault.client_id == run.mocks.one(IDENTITY, "agentplane-runtime-identity").state["clientId"]
    )
    assert built.gateway is not None
    assert (built.gateway.name, built.gateway.namespace) == ("agentplane", "agentplane-gateway")
    assert [t.cidr for t in built.platform_egress][:2] == [
        config(run.stack, "network")["postgresSubnet"],
        config(run.stack, "network")["endpointsSubnet"],
    ]
    assert built.node_selector == {"agentplane.io/pool": "worker"}
    assert built.monitoring_namespace == "monitoring"


@pytest.mark.parametrize("days", [90, 0])
def test_the_audit_retention_comes_from_the_stack(days: int) -> None:
    env = _env(_operator_container(run_stack("dev", config={"agentplane:audit": {"retentionDays": days}})))
    assert env["AGENTPLANE_OPERATOR_AUDIT_RETENTION_DAYS"] == str(days)


def test_the_worker_pool_is_for_agent_pods_alone(run: StackRun) -> None:
    pools = {p["name"]: p for p in run.mocks.one(AKS).plain["agentPoolProfiles"]}
    assert pools["worker"]["nodeLabels"] == {"agentplane.io/pool": "worker"}
    assert pools["worker"]["nodeTaints"] == ["agentplane.io/pool=worker:NoSchedule"]
    assert "nodeTaints" not in pools["app"]  # the platform runs there
    env = _env(_operator_container(run))
    [toleration] = json.loads(env["AGENTPLANE_OPERATOR_AGENT_TOLERATIONS"])
    key, rest = pools["worker"]["nodeTaints"][0].split("=")
    value, effect = rest.split(":")
    assert toleration == {"key": key, "operator": "Equal", "value": value, "effect": effect}
    assert (
        json.loads(env["AGENTPLANE_OPERATOR_AGENT_NODE_SELECTOR"]).items()
        <= pools["worker"]["nodeLabels"].items()
    )


def test_an_azure_key_needs_its_endpoint() -> None:
    with pytest.raises(
        Exception, match=r"llmProviderKeys\.azure needs agentplane:llmProviderEndpoints\.azure"
    ):
        run_stack("dev", secret_config={"agentplane:llmProviderKeys": {"azure": "az-key"}})


# The gateway.


def test_traefik_serves_the_gateway_api_only(run: StackRun) -> None:
    release = run.mocks.one(RELEASE, "gateway-release").plain
    assert release["namespace"] == "agentplane-gateway"
    assert release["chart"] == "traefik"
    values = release["values"]
    assert values["providers"] == {
        "kubernetesGateway": {"enabled": True},
        "kubernetesIngress": {"enabled": False},
        "kubernetesCRD": {"enabled": False},
    }
    # The GatewayClass and Gateway are ours (below), not the chart's defaults.
    assert values["gateway"] == {"enabled": False}
    assert values["gatewayClass"] == {"enabled": False}
    assert values["ingressClass"] == {"enabled": False}
    cfg = config(run.stack, "gateway")
    assert values["deployment"]["replicas"] == cfg["replicas"]
    assert ("podDisruptionBudget" in values) is (cfg["replicas"] > 1)
    assert values["service"]["annotations"] == {
        "service.beta.kubernetes.io/azure-dns-label-name": cfg["dnsLabel"]
    }


def test_gateway_api_crds_are_the_pinned_standard_channel_release(run: StackRun) -> None:
    crds = run.mocks.one("kubernetes:yaml/v2:ConfigFile", "gateway-gateway-api")
    version = config(run.stack, "gateway")["gatewayApiVersion"]
    assert crds.plain["file"] == (
        f"https://github.com/kubernetes-sigs/gateway-api/releases/download/{version}/standard-install.yaml"
    )
    # Traefik and the Gateway API objects wait for them.
    for resource in (
        run.mocks.one(RELEASE, "gateway-release"),
        run.mocks.one("kubernetes:gateway.networking.k8s.io/v1:Gateway"),
        run.mocks.one("kubernetes:gateway.networking.k8s.io/v1:GatewayClass"),
    ):
        assert run.mocks.waits_for(resource, crds), resource.name


def test_the_gateway_admits_routes_from_tenant_namespaces_only(run: StackRun) -> None:
    gateway_class = run.mocks.one("kubernetes:gateway.networking.k8s.io/v1:GatewayClass").plain
    assert gateway_class["spec"] == {"controllerName": "traefik.io/gateway-controller"}
    gateway = run.mocks.one("kubernetes:gateway.networking.k8s.io/v1:Gateway").plain
    assert gateway["metadata"] == {"name": "agentplane", "namespace": "agentplane-gateway"}
    assert gateway["spec"]["gatewayClassName"] == gateway_class["metadata"]["name"]
    [listener] = gateway["spec"]["listeners"]  # no tlsSecretName in the committed stacks
    assert (listener["port"], listener["protocol"]) == (8000, "HTTP")  # Traefik's `web` entry point
    assert listener["allowedRoutes"] == {
        "kinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
        "namespaces": {
            "from": "Selector",
            "selector": {"matchExpressions": [{"key": "agentplane.io/tenant", "operator": "Exists"}]},
        },
    }


def test_the_gateway_selects_the_namespaces_the_operator_makes_for_tenants(run: StackRun) -> None:
    from agentplane_operator.builders import build_namespace
    from agentplane_platform.specs import validate_paths

    gateway = run.mocks.one("kubernetes:gateway.networking.k8s.io/v1:Gateway").plain
    [expression] = gateway["spec"]["listeners"][0]["allowedRoutes"]["namespaces"]["selector"][
        "matchExpressions"
    ]
    tenants = validate_paths([REPO / "specs" / "tenants"]).specs.tenants.values()
    assert tenants
    for tenant in tenants:
        assert expression["key"] in build_namespace(tenant.resource)["metadata"]["labels"]


def test_https_listener_with_a_certificate(optional_run: StackRun) -> None:
    listeners = optional_run.mocks.one("kubernetes:gateway.networking.k8s.io/v1:Gateway").plain["spec"][
        "listeners"
    ]
    assert [(x["name"], x["port"], x["hostname"]) for x in listeners] == [
        ("http", 8000, "agents.example.com"),
        ("https", 8443, "agents.example.com"),
    ]
    assert listeners[1]["tls"] == {
        "mode": "Terminate",
        "certificateRefs": [{"kind": "Secret", "name": "agents-tls"}],
    }
    assert listeners[1]["allowedRoutes"] == listeners[0]["allowedRoutes"]


def test_gateway_url_must_match_its_hostname() -> None:
    gateway = {**config("dev", "gateway"), "hostname": "agents.example.com"}
    with pytest.raises(Exception, match=r"agentplane:gateway: .*is not on hostname 'agents.example.com'"):
        run_stack("dev", config={"agentplane:gateway": gateway})


# Monitoring.


def test_the_operators_monitors_are_applied_after_the_chart_and_the_platform_namespace(run: StackRun) -> None:
    files = [
        doc
        for path in sorted((REPO / "operator" / "deploy" / "monitoring").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert {d["kind"] for d in files} == {"PodMonitor", "ServiceMonitor"}
    monitors = {
        object_key(r.plain): r
        for r in run.mocks.resources
        if r.type.startswith("kubernetes:monitoring.coreos.com/") and r.name.startswith("monitoring-")
    }
    assert set(monitors) >= {object_key(d) for d in files}
    release = run.mocks.one(RELEASE, "monitoring-release")
    namespace = run.mocks.one("kubernetes:core/v1:Namespace", "operator-namespace-agentplane-system")
    for doc in files:
        monitor = monitors[object_key(doc)]
        assert monitor.plain["spec"] == doc["spec"]
        assert run.mocks.waits_for(monitor, release), monitor.name
        assert run.mocks.waits_for(monitor, namespace), monitor.name


def test_prometheus_selects_every_monitor(run: StackRun) -> None:
    spec = run.mocks.one(RELEASE, "monitoring-release").plain["values"]["prometheus"]["prometheusSpec"]
    for kind in ("podMonitor", "serviceMonitor", "rule"):
        assert spec[f"{kind}SelectorNilUsesHelmValues"] is False
        # Selectors left at their defaults: every monitor, in every namespace.
        assert f"{kind}Selector" not in spec
        assert f"{kind}NamespaceSelector" not in spec


# Alertmanager: where alerts go.


def _alertmanager(run: StackRun) -> dict[str, Any]:
    config_: dict[str, Any] = run.mocks.one(RELEASE, "monitoring-release").plain["values"]["alertmanager"][
        "config"
    ]
    return config_


def _routes(config_: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Severity -> its route (each route matches exactly one severity)."""
    routes: dict[str, dict[str, Any]] = {}
    for route in config_["route"]["routes"]:
        [matcher] = route["matchers"]
        severity = re.fullmatch(r'severity="(\w+)"', matcher)
        assert severity, matcher
        routes[severity[1]] = route
    return routes


def _webhooks(config_: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {r["name"]: r.get("webhook_configs", []) for r in config_["receivers"]}


def test_alertmanager_sends_pages_and_tickets_to_their_receivers(run: StackRun) -> None:
    config_ = _alertmanager(run)
    route = config_["route"]
    assert route["receiver"] == "null"  # anything not a page or a ticket goes nowhere
    assert route["group_by"] == ["alertname", "slo", "tenant", "agent"]
    routes = _routes(config_)
    assert set(routes) == set(SEVERITIES) == {"page", "ticket"}
    assert routes["page"]["receiver"] == "page"
    assert routes["ticket"]["receiver"] == "ticket"
    assert routes["page"]["repeat_interval"] == "1h"
    assert routes["ticket"]["repeat_interval"] == "12h"
    assert routes["page"]["group_wait"] == "30s"
    webhooks = _webhooks(config_)
    assert webhooks == {
        "null": [],
        "page": [{"url": ALERT_RECEIVERS["page"], "send_resolved": True}],
        "ticket": [{"url": ALERT_RECEIVERS["ticket"], "send_resolved": True}],
    }
    # A page inhibits the same SLO's ticket.
    [inhibit] = config_["inhibit_rules"]
    assert inhibit["source_matchers"][0] == 'severity="page"'
    assert inhibit["target_matchers"] == ['severity="ticket"']


def test_alert_receivers_stay_secret_in_the_helm_values(run: StackRun) -> None:
    release = run.mocks.one(RELEASE, "monitoring-release")
    receivers = reveal(release.inputs)["values"]["alertmanager"]["config"]["receivers"]
    for index, receiver in enumerate(receivers):
        for hook in range(len(receiver.get("webhook_configs", []))):
            path = ("values", "alertmanager", "config", "receivers", index, "webhook_configs", hook, "url")
            assert secret_at(release.inputs, *path), receiver["name"]
    # Nowhere in plain: not in any resource's inputs, not in a stack output.
    for resource in run.mocks.resources:
        visible = json.dumps(without_secrets(resource.inputs))
        for url in ALERT_RECEIVERS.values():
            assert url not in visible, resource.name
    assert not any(url in json.dumps(run.outputs) for url in ALERT_RECEIVERS.values())


def test_without_receivers_every_alert_goes_nowhere(optional_run: StackRun) -> None:
    """dev as committed, no receivers set: a valid config whose routes all end at `null`."""
    config_ = _alertmanager(optional_run)
    assert {severity: r["receiver"] for severity, r in _routes(config_).items()} == {
        "page": "null",
        "ticket": "null",
    }
    assert _webhooks(config_) == {"null": []}
    assert config_["inhibit_rules"] == []  # a page that goes nowhere must not silence its ticket


def test_prod_refuses_to_run_without_a_page_receiver() -> None:
    assert config("prod", "monitoring")["alerting"]["requirePageReceiver"] is True
    assert "alerting" not in config("dev", "monitoring")
    with pytest.raises(Exception, match=r"agentplane:alertReceivers\.page is not set") as refused:
        run_stack("prod", secret_config={"agentplane:alertReceivers": {"ticket": ALERT_RECEIVERS["ticket"]}})
    assert (
        "requirePageReceiver is true in Pulumi.prod.yaml: pages would go nowhere. Set it: "
        "pulumi config set --secret --path 'agentplane:alertReceivers.page' <https webhook URL>"
    ) in str(refused.value)


def test_a_ticket_receiver_alone_leaves_pages_unrouted() -> None:
    run = run_stack("dev", secret_config={"agentplane:alertReceivers": {"ticket": ALERT_RECEIVERS["ticket"]}})
    config_ = _alertmanager(run)
    assert {severity: r["receiver"] for severity, r in _routes(config_).items()} == {
        "page": "null",
        "ticket": "ticket",
    }
    assert set(_webhooks(config_)) == {"null", "ticket"}


@pytest.mark.parametrize(
    ("receivers", "message"),
    [
        ({"pager": "https://hooks.example/x"}, r"receivers \['pager'\] are not one of \['page', 'ticket'\]"),
        ({"page": "http://hooks.example/x"}, r"\['page'\] must be https:// URLs"),
        ({"ticket": "hooks.example/x"}, r"\['ticket'\] must be https:// URLs"),
        ({"ticket": "https://[hooks.example/x"}, r"\['ticket'\] must be https:// URLs"),
        ("https://hooks.example/x", r"must map page\|ticket names to https webhook URLs"),
        ({"page": {"url": "https://hooks.example/x"}}, r"must map page\|ticket names"),
    ],
)
def test_invalid_alert_receivers_are_refused_without_their_urls(receivers: Any, message: str) -> None:
    """`pulumi config set --secret agentplane:alertReceivers <url>` (no `--path`) included."""
    with pytest.raises(Exception, match=rf"agentplane:alertReceivers.*{message}") as refused:
        run_stack("dev", secret_config={"agentplane:alertReceivers": receivers})
    assert "hooks.example/x" not in str(refused.value)


# What `dashboards/` holds, loaded as generated.


def _dashboard_files(folder: str, pattern: str) -> list[Path]:
    return sorted((REPO / "dashboards" / folder).glob(pattern))


def _applied(run: StackRun, kind: str) -> dict[str, Registered]:
    """Name -> the objects of `kind` the monitoring component applied."""
    return {
        r.plain["metadata"]["name"]: r
        for r in run.mocks.resources
        if r.name.startswith(f"monitoring-{kind.lower()}-")
    }


def test_rules_applied_are_exactly_the_rule_files_in_dashboards_rules(run: StackRun) -> None:
    """Every `dashboards/rules/*.yaml` as a PrometheusRule Prometheus selects, after the chart; no
    SLO definition (`dashboards/slos/`) nor promtool test (`dashboards/tests/`) becomes one."""
    files = {path.stem: yaml.safe_load(path.read_text()) for path in _dashboard_files("rules", "*.y*ml")}
    applied = _applied(run, "PrometheusRule")
    assert set(applied) == set(files)
    release = run.mocks.one(RELEASE, "monitoring-release")
    for name, resource in applied.items():
        rule = resource.plain
        assert rule["spec"] == {"groups": files[name]["groups"]}, name
        assert rule["metadata"]["namespace"] == "monitoring"
        assert rule["metadata"]["labels"]["release"] == release.plain["name"]
        assert run.mocks.waits_for(resource, release), name


def test_dashboards_applied_are_exactly_the_grafana_json_files(run: StackRun) -> None:
    files = {f"dashboard-{dns_label(path.stem)}": path for path in _dashboard_files("grafana", "*.json")}
    applied = {
        name: cm.plain for name, cm in _applied(run, "ConfigMap").items() if name.startswith("dashboard-")
    }
    assert set(applied) == set(files)
    for name, configmap in applied.items():
        assert configmap["metadata"]["labels"] == {"grafana_dashboard": "1"}
        assert configmap["data"] == {files[name].name: files[name].read_text()}


def test_every_alert_in_the_rules_has_a_severity_alertmanager_routes(run: StackRun) -> None:
    """An alert labelled anything but `page` or `ticket` would go to `null` without a word."""
    routed = set(_routes(_alertmanager(run)))
    for name, rule in _applied(run, "PrometheusRule").items():
        for group in rule.plain["spec"]["groups"]:
            for item in group["rules"]:
                if "alert" in item:
                    where = f"{name}: {group['name']}: {item['alert']}"
                    assert item.get("labels", {}).get("severity") in routed, where
