"""The test network plan: every address the test clusters use, in one place.

Everything stays inside 198.18.0.0/15 (RFC 2544's benchmarking range, never routed on the
internet) and inside network namespaces on this machine; nothing else is ever routed.

- The real node (``support.node``) lives in its own network namespace, joined to the root
  namespace by a veth pair: :data:`HOST_ADDRESS` on the host side (the API server and the servers
  tests start for pods to reach listen there), :data:`NODE_ADDRESS` on the node side (the node
  IP). More host-side addresses in :data:`LINK_CIDR` (:func:`host_address`) let tests run
  "external hosts" at distinct IPs.
- Pods of the real node get addresses from :data:`POD_CIDR` (a CNI bridge inside the node's
  namespace, gateway :data:`POD_GATEWAY`); kwok's fake pods from :data:`FAKE_POD_CIDR`.
- Services get ClusterIPs from :data:`SERVICE_CIDR`; the ``kubernetes`` Service is
  :data:`KUBERNETES_SERVICE_IP`.
- The root namespace routes :data:`POD_CIDR` and :data:`SERVICE_CIDR` via :data:`NODE_ADDRESS`
  (kube-proxy in the node's namespace translates ClusterIPs); the node's namespace has no default
  route.

Without a real node, the control plane listens on :data:`LOOPBACK` only.
"""

from __future__ import annotations

import ipaddress

LOOPBACK = "127.0.0.1"

LINK_CIDR = "198.18.255.0/24"
"""The veth link between the root namespace and the real node's namespace."""
LINK_PREFIX = 24
HOST_ADDRESS = "198.18.255.1"
"""Host side of the link: the API server (with a real node) and test servers listen here."""
NODE_ADDRESS = "198.18.255.2"
"""Node side of the link: the real node's IP (kubelet, NodePorts)."""

POD_CIDR = "198.18.0.0/24"
"""Pod addresses of the real node (CNI bridge, host-local IPAM)."""
POD_GATEWAY = "198.18.0.1"
"""The CNI bridge's address, the pods' default gateway."""
FAKE_POD_CIDR = "198.18.128.0/17"
"""Addresses kwok gives its fake pods (nothing answers there)."""

SERVICE_CIDR = "198.19.0.0/16"
"""ClusterIP range (``--service-cluster-ip-range``)."""
KUBERNETES_SERVICE_IP = "198.19.0.1"
"""ClusterIP of the ``default/kubernetes`` Service: the first address of :data:`SERVICE_CIDR`."""

ROUTED_VIA_NODE = (POD_CIDR, SERVICE_CIDR)
"""What the root namespace routes via :data:`NODE_ADDRESS` while a real node runs."""


def host_address(last_octet: int) -> str:
    """An extra host-side address in :data:`LINK_CIDR`, e.g. ``host_address(10)`` is 198.18.255.10.

    ``.1`` (:data:`HOST_ADDRESS`) and ``.2`` (:data:`NODE_ADDRESS`) are taken; ``.255`` is the
    broadcast address.
    """
    if not 3 <= last_octet <= 254:
        raise ValueError(f"host address .{last_octet}: expected 3..254 (.1 is the host, .2 the node)")
    return str(ipaddress.ip_network(LINK_CIDR)[last_octet])


def first_address(cidr: str) -> str:
    """The first usable address of ``cidr`` (``198.18.128.0/17`` -> ``198.18.128.1``)."""
    return str(ipaddress.ip_network(cidr)[1])
