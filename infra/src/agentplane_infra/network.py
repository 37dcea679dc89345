"""The virtual network: subnets for AKS nodes, private endpoints and PostgreSQL, and private DNS zones."""

from __future__ import annotations

from typing import TypedDict

import pulumi
from pulumi_azure_native import network, privatedns

PRIVATE_DNS_ZONES = {
    "keyvault": "privatelink.vaultcore.azure.net",
    "redis": "privatelink.redis.cache.windows.net",
    # Empty when the registry has no private endpoint (below Premium): names resolve through the
    # zone only once an endpoint exists, so an empty zone changes nothing.
    "registry": "privatelink.azurecr.io",
}
"""Private DNS zones of the private endpoints, by service."""


class NetworkArgs(TypedDict):
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    address_space: pulumi.Input[str]
    aks_subnet: pulumi.Input[str]
    endpoints_subnet: pulumi.Input[str]
    postgres_subnet: pulumi.Input[str]
    postgres_dns_zone: pulumi.Input[str]
    """Private DNS zone of the PostgreSQL server (`<name>.private.postgres.database.azure.com`)."""
    tags: pulumi.Input[dict[str, str]]


class Network(pulumi.ComponentResource):
    vnet_id: pulumi.Output[str]
    aks_subnet_id: pulumi.Output[str]
    endpoints_subnet_id: pulumi.Output[str]
    postgres_subnet_id: pulumi.Output[str]
    dns_zone_ids: dict[str, pulumi.Output[str]]
    """Private DNS zone ids by service: `keyvault`, `redis`, `registry`, `postgres`."""
    dns_links: dict[str, pulumi.Resource]
    """The zones' links to the network: a server registering in a zone waits for them."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:network:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg = args["resource_group_name"]

        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            resource_group_name=rg,
            location=args["location"],
            address_space={"address_prefixes": [args["address_space"]]},
            tags=args["tags"],
            opts=child,
        )
        # Subnets of one network are written one at a time (Azure refuses concurrent subnet updates).
        aks = network.Subnet(
            f"{name}-aks",
            resource_group_name=rg,
            virtual_network_name=vnet.name,
            address_prefix=args["aks_subnet"],
            opts=child,
        )
        endpoints = network.Subnet(
            f"{name}-endpoints",
            resource_group_name=rg,
            virtual_network_name=vnet.name,
            address_prefix=args["endpoints_subnet"],
            private_endpoint_network_policies="Enabled",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[aks]),
        )
        postgres = network.Subnet(
            f"{name}-postgres",
            resource_group_name=rg,
            virtual_network_name=vnet.name,
            address_prefix=args["postgres_subnet"],
            delegations=[{"name": "postgres", "service_name": "Microsoft.DBforPostgreSQL/flexibleServers"}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[endpoints]),
        )

        zones = {**PRIVATE_DNS_ZONES, "postgres": args["postgres_dns_zone"]}
        self.dns_zone_ids = {}
        self.dns_links = {}
        for service, zone_name in zones.items():
            zone = privatedns.PrivateZone(
                f"{name}-dns-{service}",
                resource_group_name=rg,
                private_zone_name=zone_name,
                location="global",
                tags=args["tags"],
                opts=child,
            )
            self.dns_links[service] = privatedns.VirtualNetworkLink(
                f"{name}-dns-{service}-link",
                resource_group_name=rg,
                private_zone_name=zone.name,
                location="global",
                registration_enabled=False,
                virtual_network={"id": vnet.id},
                tags=args["tags"],
                opts=child,
            )
            self.dns_zone_ids[service] = zone.id

        self.vnet_id = vnet.id
        self.aks_subnet_id = aks.id
        self.endpoints_subnet_id = endpoints.id
        self.postgres_subnet_id = postgres.id
        self.register_outputs(
            {
                "vnet_id": self.vnet_id,
                "aks_subnet_id": self.aks_subnet_id,
                "endpoints_subnet_id": self.endpoints_subnet_id,
                "postgres_subnet_id": self.postgres_subnet_id,
            }
        )


class PrivateEndpointArgs(TypedDict):
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    target_id: pulumi.Input[str]
    """The resource reached through the endpoint."""
    group_id: str
    """Its private link sub-resource (`vault`, `redisCache`, `registry`)."""
    dns_zone_id: pulumi.Input[str]
    tags: pulumi.Input[dict[str, str]]


def private_endpoint(
    name: str, args: PrivateEndpointArgs, parent: pulumi.Resource
) -> network.PrivateEndpoint:
    """A private endpoint to `target_id` in the endpoints subnet, registered in its private DNS zone."""
    child = pulumi.ResourceOptions(parent=parent)
    endpoint = network.PrivateEndpoint(
        name,
        resource_group_name=args["resource_group_name"],
        location=args["location"],
        subnet={"id": args["subnet_id"]},
        private_link_service_connections=[
            {"name": name, "private_link_service_id": args["target_id"], "group_ids": [args["group_id"]]}
        ],
        tags=args["tags"],
        opts=child,
    )
    network.PrivateDnsZoneGroup(
        f"{name}-dns",
        resource_group_name=args["resource_group_name"],
        private_endpoint_name=endpoint.name,
        private_dns_zone_configs=[{"name": args["group_id"], "private_dns_zone_id": args["dns_zone_id"]}],
        opts=child,
    )
    return endpoint
