"""Azure Cache for Redis: TLS only, reached through a private endpoint."""

from __future__ import annotations

from typing import TypedDict

import pulumi
from pulumi_azure_native import redis

from agentplane_infra.config import RedisConfig
from agentplane_infra.network import private_endpoint

TLS_PORT = 6380


class CacheArgs(TypedDict):
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    endpoints_subnet_id: pulumi.Input[str]
    dns_zone_id: pulumi.Input[str]
    redis: RedisConfig
    tags: pulumi.Input[dict[str, str]]


class Cache(pulumi.ComponentResource):
    host: pulumi.Output[str]
    url: pulumi.Output[str]
    """`rediss://:<access key>@<host>:6380/0` (a secret)."""

    def __init__(self, name: str, args: CacheArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("agentplane:cache:Cache", name, None, opts)
        cfg = args["redis"]
        cache = redis.Redis(
            f"{name}-redis",
            resource_group_name=args["resource_group_name"],
            location=args["location"],
            sku={"name": cfg.sku, "family": cfg.family, "capacity": cfg.capacity},
            enable_non_ssl_port=False,
            minimum_tls_version="1.2",
            public_network_access="Disabled",
            redis_version="6",
            tags=args["tags"],
            opts=pulumi.ResourceOptions(parent=self),
        )
        private_endpoint(
            f"{name}-redis-endpoint",
            {
                "resource_group_name": args["resource_group_name"],
                "location": args["location"],
                "subnet_id": args["endpoints_subnet_id"],
                "target_id": cache.id,
                "group_id": "redisCache",
                "dns_zone_id": args["dns_zone_id"],
                "tags": args["tags"],
            },
            parent=self,
        )
        keys = redis.list_redis_keys_output(name=cache.name, resource_group_name=args["resource_group_name"])
        self.host = cache.host_name
        self.url = pulumi.Output.secret(
            pulumi.Output.concat("rediss://:", keys.primary_key, "@", cache.host_name, f":{TLS_PORT}/0")
        )
        self.register_outputs({"host": self.host, "url": self.url})
