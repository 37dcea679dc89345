"""Shards by tenant: past what one operator instance can reconcile, N instances each take the
tenants whose name hashes to their shard, every Tenant with all of its namespace's objects.

No object belongs to two shards, so shards never contend; each has its own peering (one active
replica per shard). A shard still receives every watch event (kopf watches cluster-wide) and drops
the others' at its filters: what is split is the reconciling, the requests and the memory of the
indexes, not the watch streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from agentplane_platform.api.v1alpha1 import tenant_of


@lru_cache(maxsize=65536)
def shard_of(tenant: str, count: int) -> int:
    """The shard of a tenant among `count`: stable across processes and Python versions (not `hash`)."""
    digest = hashlib.sha256(tenant.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """This instance's shard: `index` of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N`, as `AGENTPLANE_OPERATOR_SHARD` gives it."""
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"a shard is I/N (this instance's index, of N shards), not {text!r}")
        shard = cls(int(index), int(count))
        if not 0 <= shard.index < shard.count:
            raise ValueError(f"shard {text!r}: the index is from 0 to N-1")
        return shard

    def owns_tenant(self, tenant: str) -> bool:
        return shard_of(tenant, self.count) == self.index

    def owns(self, name: str, namespace: str | None) -> bool:
        """Whether an object is this shard's: a Tenant by its name, a namespaced object by its
        namespace's tenant (one outside any tenant's namespace, by the namespace's name)."""
        if not namespace:
            return self.owns_tenant(name)
        return self.owns_tenant(tenant_of(namespace) or namespace)

    @property
    def platform(self) -> bool:
        """Whether this shard also does the platform's own jobs (audit retention, knowledge sync)."""
        return self.index == 0

    def when(self) -> Callable[..., bool]:
        """A kopf `when=` filter: this shard's objects only."""

        def mine(name: str, namespace: str | None, **_: Any) -> bool:
            return self.owns(name, namespace)

        return mine
