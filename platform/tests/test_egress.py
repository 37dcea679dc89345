"""The one egress rule `validate` and the runtime share: hosts, wildcard subdomains, CIDRs, ports."""

from __future__ import annotations

from agentplane_platform.api.v1alpha1 import EgressRule
from agentplane_platform.egress import allows, allows_url

RULES = [
    EgressRule(host="api.example.com", ports=[443]),
    EgressRule(host="*.corp.example", ports=[443, 8443]),
    EgressRule(cidr="198.18.255.0/28", ports=[8080]),
]


def test_hosts_wildcards_and_cidrs() -> None:
    assert allows_url(RULES, "https://api.example.com/v1")
    assert allows_url(RULES, "https://API.example.com./v1")  # case and the root dot do not matter
    assert not allows_url(RULES, "https://api.example.com.evil.test/")
    assert not allows_url(RULES, "https://example.com/")
    assert allows_url(RULES, "https://a.corp.example/")
    assert allows_url(RULES, "https://a.b.corp.example:8443/")
    assert not allows_url(RULES, "https://corp.example/")  # `*.` means subdomains only
    assert not allows_url(RULES, "https://xcorp.example/")
    assert allows_url(RULES, "http://198.18.255.10:8080/lookup")
    assert not allows_url(RULES, "http://198.18.255.20:8080/lookup")  # outside the /28
    assert not allows_url(RULES, "http://[::1]:8080/")


def test_ports_are_checked_unless_the_caller_checks_destinations_only() -> None:
    assert not allows_url(RULES, "http://api.example.com/")  # port 80 is not declared
    assert not allows_url(RULES, "https://api.example.com:8443/")
    assert allows_url(RULES, "https://api.example.com:8443/", check_port=False)
    assert allows(RULES, "198.18.255.1", None)
    assert not allows([], "api.example.com")
