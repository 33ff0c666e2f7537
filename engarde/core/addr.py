"""Formatting socket addresses the way users write them."""

from __future__ import annotations

from typing import Any


def format_address(addr: tuple[Any, ...]) -> str:
    """('10.0.0.1', 59402) -> '10.0.0.1:59402'; IPv6 hosts get brackets; an IPv4 client seen
    by a dual-stack socket (::ffff:10.0.0.1) shows as the IPv4 address it is."""
    host, port = str(addr[0]), addr[1]
    if host.startswith("::ffff:") and "." in host:
        return f"{host[7:]}:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
