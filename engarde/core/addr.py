"""Formatting socket addresses the way users write them."""

from __future__ import annotations

from typing import Any


def format_address(addr: tuple[Any, ...]) -> str:
    """('10.0.0.1', 59402) -> '10.0.0.1:59402'; IPv6 hosts get brackets."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
