"""The AKS cluster, its monitoring workspace, and the Kubernetes provider built from its kubeconfig."""

from __future__ import annotations

import base64
from typing import TypedDict

import pulumi
import pulumi_kubernetes as k8s
from pulumi_azure_native import authorization, containerservice, managedidentity, operationalinsights

from agentplane_infra.config import AksConfig, NodePool
from agentplane_infra.identity import NETWORK_CONTRIBUTOR, role_definition_id
from agentplane_infra.manifests import kubeconfig_with_login

POOL_LABEL = "agentplane.io/pool"
"""Label of every node with the name of its pool."""
AGENT_POOL = "worker"
"""The pool agent pods run on: tainted, so that nothing without the toleration lands there."""
AGENT_NODE_SELECTOR = {POOL_LABEL: AGENT_POOL}
AGENT_TOLERATIONS = ({"key": POOL_LABEL, "operator": "Equal", "value": AGENT_POOL, "effect": "NoSchedule"},)
"""What the operator gives agent pods: the selector and toleration of `AGENT_POOL`. DaemonSets
that tolerate every NoSchedule taint (AKS add-ons, node-exporter) still run there."""


class ClusterArgs(TypedDict):
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    """Subnet of the nodes."""
    subscription_id: pulumi.Input[str]
    dns_prefix: str
    """Prefix of the API server's host name."""
    aks: AksConfig
    log_retention_days: int
    tags: pulumi.Input[dict[str, str]]


def _pool(
    name: str, pool: NodePool, mode: str, args: ClusterArgs
) -> containerservice.ManagedClusterAgentPoolProfileArgsDict:
    profile: containerservice.ManagedClusterAgentPoolProfileArgsDict = {
        "name": name,
        "mode": mode,
        "vm_size": pool.vm_size,
        "os_type": "Linux",
        "os_sku": "AzureLinux",
        "type": "VirtualMachineScaleSets",
        "enable_auto_scaling": True,
        "min_count": pool.min_count,
        "max_count": pool.max_count,
        "count": pool.min_count,
        "orchestrator_version": args["aks"].kubernetes_version,
        "vnet_subnet_id": args["subnet_id"],
        "node_labels": {POOL_LABEL: name},
        "upgrade_settings": {"max_surge": "33%"},
    }
    if pool.zones:
        profile["availability_zones"] = pool.zones
    if mode == "System":
        # Keep agent pods off the system pool.
        profile["node_taints"] = ["CriticalAddonsOnly=true:NoSchedule"]
    elif name == AGENT_POOL:
        # Keep the platform (operator, Qdrant, monitoring, gateway) off the agents' pool.
        profile["node_taints"] = [f"{POOL_LABEL}={AGENT_POOL}:NoSchedule"]
    return profile


class Cluster(pulumi.ComponentResource):
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    oidc_issuer_url: pulumi.Output[str]
    kubelet_object_id: pulumi.Output[str]
    """Object (principal) id of the kubelet identity AKS creates: the identity that pulls images."""
    provider: k8s.Provider
    """The Kubernetes provider every in-cluster resource uses."""

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:cluster:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = args["resource_group_name"]
        aks = args["aks"]

        # The control plane's own identity, so it can join the nodes subnet we own.
        identity = managedidentity.UserAssignedIdentity(
            f"{name}-aks-identity",
            resource_group_name=rg,
            location=args["location"],
            tags=args["tags"],
            opts=child,
        )
        subnet_role = authorization.RoleAssignment(
            f"{name}-subnet-network-contributor",
            scope=args["subnet_id"],
            role_definition_id=role_definition_id(args["subscription_id"], NETWORK_CONTRIBUTOR),
            principal_id=identity.principal_id,
            principal_type="ServicePrincipal",
            opts=child,
        )
        workspace = operationalinsights.Workspace(
            f"{name}-logs",
            resource_group_name=rg,
            location=args["location"],
            sku={"name": "PerGB2018"},
            retention_in_days=args["log_retention_days"],
            tags=args["tags"],
            opts=child,
        )

        cs = containerservice
        identity_profile: cs.ManagedClusterIdentityArgsDict = {
            "type": cs.ResourceIdentityType.USER_ASSIGNED,
            "user_assigned_identities": [identity.id],
        }
        network_profile: cs.ContainerServiceNetworkProfileArgsDict = {
            "network_plugin": "azure",
            "network_plugin_mode": "overlay",
            "network_dataplane": "cilium",
            "network_policy": "cilium",
            "pod_cidr": aks.pod_cidr,
            "service_cidr": aks.service_cidr,
            "dns_service_ip": aks.dns_service_ip,
            "load_balancer_sku": "standard",
        }
        aad_profile: cs.ManagedClusterAADProfileArgsDict = {
            "managed": True,
            "enable_azure_rbac": True,
            "admin_group_object_ids": aks.admin_group_object_ids,
        }
        addons: dict[str, cs.ManagedClusterAddonProfileArgsDict] = {
            "azureKeyvaultSecretsProvider": {
                "enabled": True,
                "config": {"enableSecretRotation": "true", "rotationPollInterval": "2m"},
            },
            "omsagent": {
                "enabled": True,
                "config": {"logAnalyticsWorkspaceResourceID": workspace.id},
            },
        }
        cluster = cs.ManagedCluster(
            f"{name}-aks",
            resource_group_name=rg,
            location=args["location"],
            dns_prefix=args["dns_prefix"],
            kubernetes_version=aks.kubernetes_version,
            sku={"name": "Base", "tier": aks.sku_tier},
            identity=identity_profile,
            agent_pool_profiles=[
                _pool("system", aks.system_pool, "System", args),
                _pool("app", aks.app_pool, "User", args),
                _pool(AGENT_POOL, aks.worker_pool, "User", args),
            ],
            network_profile=network_profile,
            oidc_issuer_profile={"enabled": True},
            security_profile={"workload_identity": {"enabled": True}},
            aad_profile=aad_profile,
            enable_rbac=True,
            disable_local_accounts=True,
            api_server_access_profile={"authorized_ip_ranges": aks.authorized_ip_ranges},
            auto_upgrade_profile={"upgrade_channel": "patch", "node_os_upgrade_channel": "NodeImage"},
            addon_profiles=addons,
            tags=args["tags"],
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[subnet_role],
                # The cluster autoscaler owns node counts within [minCount, maxCount].
                ignore_changes=["agentPoolProfiles[*].count"],
            ),
        )

        credentials = containerservice.list_managed_cluster_user_credentials_output(
            resource_group_name=rg, resource_name=cluster.name, format="exec"
        )
        self.kubeconfig = pulumi.Output.secret(
            credentials.kubeconfigs[0].value.apply(
                lambda encoded: kubeconfig_with_login(
                    base64.b64decode(encoded).decode(), aks.kubelogin_method
                )
            )
        )
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            enable_server_side_apply=True,
            opts=child,
        )
        self.cluster_name = cluster.name
        self.oidc_issuer_url = cluster.oidc_issuer_profile.apply(
            lambda profile: profile.issuer_url if profile else ""
        )
        self.kubelet_object_id = cluster.identity_profile.apply(
            lambda profiles: (profiles or {})["kubeletidentity"].object_id or ""
        )
        self.register_outputs(
            {
                "cluster_name": self.cluster_name,
                "kubeconfig": self.kubeconfig,
                "oidc_issuer_url": self.oidc_issuer_url,
                "kubelet_object_id": self.kubelet_object_id,
            }
        )
