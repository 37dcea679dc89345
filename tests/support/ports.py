"""Free TCP ports for the servers the tests start."""

from __future__ import annotations

import socket

from support.netplan import LOOPBACK


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port on `address` that nothing listens on right now (the caller binds it soon after;
    another process could take it in between, which on a test machine does not happen in practice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port
