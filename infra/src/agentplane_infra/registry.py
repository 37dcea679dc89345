"""Azure Container Registry: the platform's images, pulled by the AKS kubelet identity alone."""

from __future__ import annotations

import re
from typing import TypedDict

import pulumi
import pulumi_random as random
from pulumi_azure_native import authorization, containerregistry

from agentplane_infra.config import RegistryConfig
from agentplane_infra.identity import ACR_PULL, role_definition_id
from agentplane_infra.network import private_endpoint

REPOSITORY = "agentplane"
"""Images are `<login server>/agentplane/<name>:<tag>`."""


class RegistryArgs(TypedDict):
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    stack: str
    registry: RegistryConfig
    endpoints_subnet_id: pulumi.Input[str]
    dns_zone_id: pulumi.Input[str]
    """The `privatelink.azurecr.io` zone (used with Premium, the only tier with private endpoints)."""
    pull_principal_id: pulumi.Input[str]
    """Who may pull: the AKS kubelet identity."""
    subscription_id: pulumi.Input[str]
    tags: pulumi.Input[dict[str, str]]


def image_ref(login_server: pulumi.Input[str], name: str, tag: str) -> pulumi.Output[str]:
    """`<login server>/agentplane/<name>:<tag>`."""
    return pulumi.Output.concat(login_server, f"/{REPOSITORY}/{name}:{tag}")


class Registry(pulumi.ComponentResource):
    login_server: pulumi.Output[str]
    registry_id: pulumi.Output[str]

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:registry:Registry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = args["registry"]
        premium = cfg.sku == "Premium"

        # Registry names are global, 5-50 letters and digits.
        suffix = random.RandomString(f"{name}-acr-suffix", length=8, special=False, upper=False, opts=child)
        stack = re.sub(r"[^a-z0-9]", "", args["stack"].lower())
        # Network rules and private endpoints are Premium features. Below Premium the registry is
        # public, but every pull and push still needs an Entra ID identity with a role on it.
        rules: containerregistry.NetworkRuleSetArgsDict | None = None
        if premium:
            rules = {
                "default_action": "Deny",
                "ip_rules": [{"i_p_address_or_range": ip, "action": "Allow"} for ip in cfg.allowed_ip_ranges],
            }
        registry = containerregistry.Registry(
            f"{name}-acr",
            resource_group_name=args["resource_group_name"],
            location=args["location"],
            registry_name=pulumi.Output.concat(f"agentplane{stack}", suffix.result),
            sku={"name": cfg.sku},
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            public_network_access="Disabled" if premium and not cfg.allowed_ip_ranges else "Enabled",
            network_rule_set=rules,
            network_rule_bypass_options="AzureServices" if premium else None,
            tags=args["tags"],
            opts=child,
        )
        if premium:
            private_endpoint(
                f"{name}-acr-endpoint",
                {
                    "resource_group_name": args["resource_group_name"],
                    "location": args["location"],
                    "subnet_id": args["endpoints_subnet_id"],
                    "target_id": registry.id,
                    "group_id": "registry",
                    "dns_zone_id": args["dns_zone_id"],
                    "tags": args["tags"],
                },
                parent=self,
            )
        authorization.RoleAssignment(
            f"{name}-kubelet-acr-pull",
            scope=registry.id,
            role_definition_id=role_definition_id(args["subscription_id"], ACR_PULL),
            principal_id=args["pull_principal_id"],
            principal_type="ServicePrincipal",
            opts=child,
        )

        self.login_server = registry.login_server
        self.registry_id = registry.id
        self.register_outputs({"login_server": self.login_server, "registry_id": self.registry_id})
