"""Azure Database for PostgreSQL Flexible Server: private access only, the `agentplane` database."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_random as random
from pulumi_azure_native import dbforpostgresql

from agentplane_infra.config import PostgresConfig

DATABASE = "agentplane"
ADMIN_LOGIN = "agentplane"
PORT = 5432


class DatabaseArgs(TypedDict):
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    """The subnet delegated to `Microsoft.DBforPostgreSQL/flexibleServers`."""
    dns_zone_id: pulumi.Input[str]
    dns_link: pulumi.Resource
    """The zone's link to the network, which must exist before the server."""
    postgres: PostgresConfig
    tags: pulumi.Input[dict[str, str]]


class Database(pulumi.ComponentResource):
    host: pulumi.Output[str]
    admin_password: pulumi.Output[str]
    url: pulumi.Output[str]
    """`postgresql://…/agentplane?ssl=require` with the admin credentials (a secret)."""

    def __init__(self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:database:Database", name, None, opts)
        pg = args["postgres"]
        password = random.RandomPassword(
            f"{name}-admin-password",
            length=32,
            special=True,
            override_special="-_.~",  # URL-safe: the password goes into the connection URL
            opts=pulumi.ResourceOptions(parent=self),
        )
        secret_password: pulumi.Output[str] = pulumi.Output.secret(password.result)
        server = dbforpostgresql.Server(
            f"{name}-server",
            resource_group_name=args["resource_group_name"],
            location=args["location"],
            version=pg.version,
            sku={"name": pg.sku_name, "tier": pg.sku_tier},
            storage={"storage_size_gb": pg.storage_gb, "auto_grow": "Enabled"},
            backup={
                "backup_retention_days": pg.backup_retention_days,
                "geo_redundant_backup": "Enabled" if pg.geo_redundant_backup else "Disabled",
            },
            high_availability={"mode": "ZoneRedundant" if pg.high_availability else "Disabled"},
            network={
                "delegated_subnet_resource_id": args["subnet_id"],
                "private_dns_zone_arm_resource_id": args["dns_zone_id"],
                "public_network_access": "Disabled",
            },
            auth_config={"password_auth": "Enabled", "active_directory_auth": "Disabled"},
            administrator_login=ADMIN_LOGIN,
            administrator_login_password=secret_password,
            tags=args["tags"],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[args["dns_link"]]),
        )
        dbforpostgresql.Database(
            f"{name}-{DATABASE}",
            resource_group_name=args["resource_group_name"],
            server_name=server.name,
            database_name=DATABASE,
            charset="UTF8",
            collation="en_US.utf8",
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.host = server.fully_qualified_domain_name
        self.admin_password = secret_password
        # asyncpg (what the platform's engine uses) takes `ssl=require`; libpq's `sslmode` it does not.
        self.url = pulumi.Output.secret(
            pulumi.Output.concat(
                "postgresql://",
                ADMIN_LOGIN,
                ":",
                password.result,
                "@",
                self.host,
                f":{PORT}/",
                DATABASE,
                "?ssl=require",
            )
        )
        self.register_outputs({"host": self.host, "url": self.url})
