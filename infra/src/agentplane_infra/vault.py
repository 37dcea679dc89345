"""Azure Key Vault: RBAC authorization, network restricted, holding the platform's secrets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import pulumi
import pulumi_random as random
from pulumi_azure_native import keyvault

from agentplane_infra.config import KeyVaultConfig
from agentplane_infra.network import private_endpoint


class VaultArgs(TypedDict):
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    endpoints_subnet_id: pulumi.Input[str]
    dns_zone_id: pulumi.Input[str]
    key_vault: KeyVaultConfig
    secrets: Mapping[str, pulumi.Input[str]]
    """Secret name -> value. Values should be Pulumi secrets; they are stored as such."""
    tags: pulumi.Input[dict[str, str]]


class Vault(pulumi.ComponentResource):
    vault_name: pulumi.Output[str]
    vault_uri: pulumi.Output[str]
    secret_ids: dict[str, pulumi.Output[str]]
    """Secret name -> resource id (the scope of role assignments that read just that secret)."""

    def __init__(self, name: str, args: VaultArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:vault:Vault", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = args["resource_group_name"]
        cfg = args["key_vault"]

        # Vault names are global and at most 24 characters.
        suffix = random.RandomString(f"{name}-suffix", length=8, special=False, upper=False, opts=child)
        vault = keyvault.Vault(
            f"{name}-kv",
            resource_group_name=rg,
            location=args["location"],
            vault_name=pulumi.Output.concat("agentplane-", suffix.result),
            properties={
                "tenant_id": args["tenant_id"],
                "sku": {"family": "A", "name": keyvault.SkuName.STANDARD},
                "enable_rbac_authorization": True,
                "enable_soft_delete": True,
                "soft_delete_retention_in_days": cfg.soft_delete_retention_days,
                # Purge protection cannot be switched off once on, so dev leaves it unset.
                "enable_purge_protection": True if cfg.purge_protection else None,
                "public_network_access": "Enabled" if cfg.allowed_ip_ranges else "Disabled",
                "network_acls": {
                    "default_action": "Deny",
                    "bypass": "AzureServices",
                    "ip_rules": [{"value": ip} for ip in cfg.allowed_ip_ranges],
                },
            },
            tags=args["tags"],
            opts=child,
        )
        private_endpoint(
            f"{name}-kv-endpoint",
            {
                "resource_group_name": rg,
                "location": args["location"],
                "subnet_id": args["endpoints_subnet_id"],
                "target_id": vault.id,
                "group_id": "vault",
                "dns_zone_id": args["dns_zone_id"],
                "tags": args["tags"],
            },
            parent=self,
        )
        self.secret_ids = {}
        for secret_name, value in sorted(args["secrets"].items()):
            secret = keyvault.Secret(
                f"{name}-{secret_name}",
                resource_group_name=rg,
                vault_name=vault.name,
                secret_name=secret_name,
                properties={"value": pulumi.Output.secret(value), "content_type": "text/plain"},
                tags=args["tags"],
                opts=child,
            )
            self.secret_ids[secret_name] = secret.id

        self.vault_name = vault.name
        self.vault_uri = vault.properties.apply(lambda p: p.vault_uri or "")
        self.register_outputs({"vault_name": self.vault_name, "vault_uri": self.vault_uri})
