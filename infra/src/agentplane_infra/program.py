"""The Pulumi program: an agentplane environment on Azure, and the platform installed into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi_random as random
from pulumi_azure_native import authorization, resources

from agentplane_infra.cache import TLS_PORT as REDIS_TLS_PORT
from agentplane_infra.cache import Cache
from agentplane_infra.cluster import AGENT_NODE_SELECTOR, AGENT_TOLERATIONS, Cluster
from agentplane_infra.config import EgressRule, load_config
from agentplane_infra.crds import Crds
from agentplane_infra.database import PORT as POSTGRES_PORT
from agentplane_infra.database import Database
from agentplane_infra.gateway import GATEWAY, Gateway
from agentplane_infra.gateway import NAMESPACE as GATEWAY_NAMESPACE
from agentplane_infra.gitops import NAMESPACE as GITOPS_NAMESPACE
from agentplane_infra.gitops import SOURCE as GITOPS_SOURCE
from agentplane_infra.gitops import SPECS_DIR as GITOPS_SPECS_DIR
from agentplane_infra.gitops import GitOps
from agentplane_infra.identity import WorkloadIdentity
from agentplane_infra.manifests import (
    CONNECTION_ENV,
    OPERATOR_NAME,
    PLATFORM_NAMESPACE,
    RUNTIME_SERVICE_ACCOUNT,
    OperatorSettings,
    tenant_namespaces,
    workload_subject,
)
from agentplane_infra.monitoring import NAMESPACE as MONITORING_NAMESPACE
from agentplane_infra.monitoring import Monitoring
from agentplane_infra.network import Network
from agentplane_infra.operator_deploy import Operator
from agentplane_infra.policies import Policies
from agentplane_infra.providers import provider_secrets, secret_name
from agentplane_infra.qdrant import URL as QDRANT_URL
from agentplane_infra.qdrant import Qdrant
from agentplane_infra.registry import Registry, image_ref
from agentplane_infra.vault import Vault
from agentplane_platform.contract import KNOWLEDGE_SERVICE_ACCOUNT
from agentplane_platform.policies import policy_environments

PREFIX = "agentplane"


def program(root: Path) -> dict[str, pulumi.Output[Any]]:
    """Declare every resource of the current stack; `root` is the repository checkout.

    Returns the stack outputs (also exported).
    """
    cfg = load_config(policy_environments(root / "policies"))
    client = authorization.get_client_config_output()
    tags = cfg.tags

    group = resources.ResourceGroup(
        PREFIX, resource_group_name=f"{PREFIX}-{cfg.stack}", location=cfg.location, tags=tags
    )
    rg = group.name
    net = Network(
        PREFIX,
        {
            "resource_group_name": rg,
            "location": cfg.location,
            "address_space": cfg.network.address_space,
            "aks_subnet": cfg.network.aks_subnet,
            "endpoints_subnet": cfg.network.endpoints_subnet,
            "postgres_subnet": cfg.network.postgres_subnet,
            "postgres_dns_zone": f"{PREFIX}-{cfg.stack}.private.postgres.database.azure.com",
            "tags": tags,
        },
    )
    cluster = Cluster(
        PREFIX,
        {
            "resource_group_name": rg,
            "location": cfg.location,
            "subnet_id": net.aks_subnet_id,
            "subscription_id": client.subscription_id,
            "dns_prefix": f"{PREFIX}-{cfg.stack}",
            "aks": cfg.aks,
            "log_retention_days": cfg.monitoring.log_retention_days,
            "tags": tags,
        },
    )
    database = Database(
        PREFIX,
        {
            "resource_group_name": rg,
            "location": cfg.location,
            "subnet_id": net.postgres_subnet_id,
            "dns_zone_id": net.dns_zone_ids["postgres"],
            "dns_link": net.dns_links["postgres"],
            "postgres": cfg.postgres,
            "tags": tags,
        },
    )
    cache = Cache(
        PREFIX,
        {
            "resource_group_name": rg,
            "location": cfg.location,
            "endpoints_subnet_id": net.endpoints_subnet_id,
            "dns_zone_id": net.dns_zone_ids["redis"],
            "redis": cfg.redis,
            "tags": tags,
        },
    )

    # In the cluster: everything goes through the provider built from the AKS kubeconfig.
    def in_cluster(*depends_on: pulumi.Resource) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(provider=cluster.provider, depends_on=list(depends_on))

    registry = Registry(
        PREFIX,
        {
            "resource_group_name": rg,
            "location": cfg.location,
            "stack": cfg.stack,
            "registry": cfg.registry,
            "endpoints_subnet_id": net.endpoints_subnet_id,
            "dns_zone_id": net.dns_zone_ids["registry"],
            "pull_principal_id": cluster.kubelet_object_id,
            "subscription_id": client.subscription_id,
            "tags": tags,
        },
    )

    crds = Crds("crds", {"directory": root / "specs" / "crds"}, in_cluster())
    # The API server enforces the policies at admission; their parameters (TierLimits) need its CRD.
    policies = Policies(
        "policies", {"directory": root / "policies", "environment": cfg.policy_environment}, in_cluster(crds)
    )
    qdrant_api_key = random.RandomPassword("qdrant-api-key", length=40, special=False)
    grafana_admin_password = random.RandomPassword("grafana-admin-password", length=32, special=False)

    # Provider settings, stored in Key Vault and synced by the operator into each tenant's LLM Secret.
    provider_values: dict[str, pulumi.Input[str]] = {
        **{secret_name(p, "api-key"): key for p, key in cfg.llm_provider_keys.items()},
        **{secret_name(p, "api-base"): url for p, url in cfg.llm_provider_endpoints.items()},
    }
    vault = Vault(
        PREFIX,
        {
            "resource_group_name": rg,
            "location": cfg.location,
            "tenant_id": client.tenant_id,
            "endpoints_subnet_id": net.endpoints_subnet_id,
            "dns_zone_id": net.dns_zone_ids["keyvault"],
            "key_vault": cfg.key_vault,
            "secrets": {
                "database-url": database.url,
                "redis-url": cache.url,
                "qdrant-url": QDRANT_URL,
                "qdrant-api-key": qdrant_api_key.result,
                "postgres-admin-password": database.admin_password,
                "grafana-admin-password": grafana_admin_password.result,
                **provider_values,
            },
            "tags": tags,
        },
    )
    operator_identity = WorkloadIdentity(
        f"{PREFIX}-operator",
        {
            "resource_group_name": rg,
            "location": cfg.location,
            "oidc_issuer_url": cluster.oidc_issuer_url,
            "subjects": [workload_subject(PLATFORM_NAMESPACE, OPERATOR_NAME)],
            "secret_scopes": {key: vault.secret_ids[key] for key in CONNECTION_ENV.values()},
            "subscription_id": client.subscription_id,
            "tags": tags,
        },
    )
    # Agent pods read only the provider settings through this identity (their stores come from the
    # runtime Secret the operator keeps). Tenant namespaces come and go with the specs; a federated
    # credential names one service account, so it trusts the tenants known when `pulumi up` runs.
    runtime_identity = WorkloadIdentity(
        f"{PREFIX}-runtime",
        {
            "resource_group_name": rg,
            "location": cfg.location,
            "oidc_issuer_url": cluster.oidc_issuer_url,
            "subjects": [
                # the knowledge-sync Jobs embed documents with the providers' keys too
                workload_subject(PLATFORM_NAMESPACE, KNOWLEDGE_SERVICE_ACCOUNT),
                *(
                    workload_subject(namespace, RUNTIME_SERVICE_ACCOUNT)
                    for namespace in tenant_namespaces(root / "specs" / "tenants")
                ),
            ],
            "secret_scopes": {key: vault.secret_ids[key] for key in provider_values},
            "subscription_id": client.subscription_id,
            "tags": tags,
        },
    )

    images = cfg.images
    operator = Operator(
        "operator",
        {
            "directory": root / "operator" / "deploy",
            "settings": OperatorSettings(
                image=images.operator or image_ref(registry.login_server, "operator", images.tag),
                runtime_image=images.runtime or image_ref(registry.login_server, "runtime", images.tag),
                client_id=operator_identity.client_id,
                key_vault_name=vault.vault_name,
                tenant_id=client.tenant_id,
                runtime_client_id=runtime_identity.client_id,
                provider_secrets=provider_secrets(cfg.llm_provider_keys, cfg.llm_provider_endpoints),
                gateway_name=GATEWAY,
                gateway_namespace=GATEWAY_NAMESPACE,
                gateway_url=cfg.gateway.url,
                platform_egress=[
                    EgressRule(cidr=cfg.network.postgres_subnet, ports=[POSTGRES_PORT]),
                    # Redis (and Key Vault, not opened here) are behind private endpoints in this subnet.
                    EgressRule(cidr=cfg.network.endpoints_subnet, ports=[REDIS_TLS_PORT]),
                    *cfg.network.llm_egress,
                ],
                monitoring_namespace=MONITORING_NAMESPACE,
                agent_node_selector=AGENT_NODE_SELECTOR,
                agent_tolerations=AGENT_TOLERATIONS,
                gitops_source=f"{GITOPS_NAMESPACE}/{GITOPS_SOURCE}",
                gitops_specs_dir=GITOPS_SPECS_DIR,
                audit_retention_days=cfg.audit.retention_days,
            ),
        },
        # Images are pulled as the kubelet identity: the grant comes first.
        in_cluster(crds, registry),
    )
    monitoring = Monitoring(
        "monitoring",
        {
            "chart": cfg.monitoring.chart,
            "dashboards": root / "dashboards",
            "monitors": root / "operator" / "deploy" / "monitoring",
            "monitors_namespace": operator.namespace,
            "grafana_admin_password": grafana_admin_password.result,
            "alerting": cfg.monitoring.alerting,
            "alert_receivers": cfg.alert_receivers,
        },
        in_cluster(),
    )
    Qdrant(
        "qdrant",
        {"qdrant": cfg.qdrant, "api_key": qdrant_api_key.result},
        in_cluster(operator.namespace, monitoring.release),
    )
    gateway = Gateway("gateway", {"gateway": cfg.gateway}, in_cluster(monitoring.release))
    # Tenants and their agents arrive through Flux: after the operator, after the policies that admit
    # them, and after the Gateway API that the operator's HTTPRoutes need.
    GitOps("gitops", {"gitops": cfg.gitops}, in_cluster(crds, policies, operator, gateway))

    outputs: dict[str, pulumi.Output[Any]] = {
        "resourceGroupName": rg,
        "clusterName": cluster.cluster_name,
        "kubeconfig": cluster.kubeconfig,
        "oidcIssuerUrl": cluster.oidc_issuer_url,
        "databaseHost": database.host,
        "redisHost": cache.host,
        "keyVaultName": vault.vault_name,
        "keyVaultUri": vault.vault_uri,
        "operatorClientId": operator_identity.client_id,
        "runtimeClientId": runtime_identity.client_id,
        "qdrantUrl": pulumi.Output.from_input(QDRANT_URL),
        "registryLoginServer": registry.login_server,
        "gatewayUrl": gateway.url,
    }
    for name, value in outputs.items():
        pulumi.export(name, value)
    return outputs
