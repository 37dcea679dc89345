"""Where a tenant's agents may connect: one rule, used by `agentplane validate` and by the runtime.

A tenant declares egress as hosts (`api.example.com`, or `*.example.com` for its subdomains) or
CIDRs, each with TCP ports. In a cluster, CIDR rules are enforced by NetworkPolicy; host rules
cannot be (NetworkPolicy does not name hosts), so the runtime checks every tool's destination
against the same rules before it connects, and `validate` checks the tools' URLs before merge.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import urlsplit


class Rule(Protocol):
    """An egress rule: a Tenant's `EgressRule`, or its resolved copy in an agent's config."""

    @property
    def host(self) -> str | None: ...
    @property
    def cidr(self) -> str | None: ...
    @property
    def ports(self) -> list[int]: ...


def _host_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower(), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def _in_cidr(cidr: str, host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False  # not an IP literal: a CIDR rule never admits a name


def allows(rules: Iterable[Rule], host: str, port: int | None = None) -> bool:
    """Whether a rule admits `host` (and `port`, when given)."""
    for rule in rules:
        if port is not None and port not in rule.ports:
            continue
        if rule.host is not None and _host_matches(rule.host, host):
            return True
        if rule.cidr is not None and _in_cidr(rule.cidr, host):
            return True
    return False


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def allows_url(rules: Iterable[Rule], url: str, *, check_port: bool = True) -> bool:
    """Whether a rule admits the URL's host (and its port, explicit or the scheme's default)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        return False
    port = (parts.port or default_port(parts.scheme)) if check_port else None
    return allows(rules, host, port)
