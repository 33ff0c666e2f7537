"""Server relay core: which client addresses are alive and get WireGuard's replies.

Theory of operation: every datagram arriving on the listen socket comes from a "client address"
(ip, port): one per client uplink. The core remembers each with the local address it was sent to
(so replies leave from that address on a multi-homed server), when it was first and last seen, and
its counters. A reply from WireGuard goes to every address seen within clientTimeout.

The table is an OrderedDict kept in least-recently-seen order (`touch` moves an entry to the end),
so expiry pops from the front and the cap on its size (maxClients) evicts the stalest address in
O(1) when a flood of new source addresses arrives.

The core decides; the shell (engarde.net.server) owns the sockets and calls `admit` for unknown
sources, `touch` for known ones, `expire` once a second and `drop` when a send to an address fails.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from engarde.config import ServerConfig
from engarde.core.addr import format_address
from engarde.core.stats import RelayStats, errno_name

Address = tuple[Any, ...]


@dataclass(slots=True)
class ClientAddress:
    address: Address
    local_raw: bytes | None  # the server address this client sends to (raw); replies use it
    first_seen: float
    last_seen: float
    rx_datagrams: int = 0
    rx_bytes: int = 0
    tx_datagrams: int = 0
    tx_bytes: int = 0
    tx_dropped_full: int = 0
    tx_errors: int = 0
    last_tx_errno: int | None = None


@dataclass(slots=True)
class ServerStats(RelayStats):
    clients_admitted: int = 0
    clients_expired: int = 0
    clients_evicted: int = 0  # pushed out by maxClients
    clients_dropped: int = 0  # a send to them failed


class ServerCore:
    def __init__(self, config: ServerConfig, *, now: float = 0.0) -> None:
        self.config = config
        self.timeout_s = config.client_timeout_s
        self.max_clients = config.maxClients
        self.clients: OrderedDict[Address, ClientAddress] = OrderedDict()
        self.stats = ServerStats()
        self.started_at = now
        self.upstream_local: str = ""  # our upstream socket's address, for display

    def admit(
        self, address: Address, local_raw: bytes | None, now: float
    ) -> tuple[ClientAddress, str]:
        """A datagram from an address not in the table. Returns the entry and a log line.

        When the table is full, the least recently seen address is evicted first (counted).
        """
        line: str | None = None
        if len(self.clients) >= self.max_clients:
            _, old = self.clients.popitem(last=False)
            self.stats.clients_evicted += 1
            line = (
                f"client table full ({self.max_clients}): evicted {format_address(old.address)}, "
                f"admitted {format_address(address)}"
            )
        entry = ClientAddress(address, local_raw, now, now)
        self.clients[address] = entry
        self.stats.clients_admitted += 1
        if line is None:
            line = f"client {format_address(address)} seen (sent to {_ip(local_raw)})"
        return entry, line

    def touch(self, entry: ClientAddress, local_raw: bytes | None, now: float) -> None:
        """A known address sent again: it is the freshest now."""
        entry.last_seen = now
        entry.local_raw = local_raw
        self.clients.move_to_end(entry.address)

    def alive_cutoff(self, now: float) -> float:
        """Addresses last seen before this time no longer get replies."""
        return now - self.timeout_s

    def expire(self, now: float) -> list[str]:
        """Forget addresses silent for clientTimeout. Returns one log line per address."""
        cutoff = self.alive_cutoff(now)
        lines = []
        while self.clients:
            entry = next(iter(self.clients.values()))
            if entry.last_seen >= cutoff:
                break
            del self.clients[entry.address]
            self.stats.clients_expired += 1
            lines.append(
                f"client {format_address(entry.address)} expired (silent for {self.timeout_s:g} s)"
            )
        return lines

    def drop(self, address: Address, err: int | None) -> str | None:
        """A send to this address failed: forget it (it comes back with its next datagram)."""
        entry = self.clients.pop(address, None)
        if entry is None:
            return None
        self.stats.clients_dropped += 1
        return f"client {format_address(address)} dropped: send failed ({errno_name(err)})"

    def snapshot(self, now: float) -> dict[str, Any]:
        cutoff = self.alive_cutoff(now)
        sockets = [
            {
                "address": format_address(e.address),
                "last": int(max(0.0, now - e.last_seen)),
                "lastReceivedAge": max(0.0, now - e.last_seen),
                "firstSeenAge": max(0.0, now - e.first_seen),
                "localAddress": _ip(e.local_raw),
                "alive": e.last_seen >= cutoff,
                "counters": {
                    "rx_datagrams": e.rx_datagrams,
                    "rx_bytes": e.rx_bytes,
                    "tx_datagrams": e.tx_datagrams,
                    "tx_bytes": e.tx_bytes,
                    "tx_dropped_full": e.tx_dropped_full,
                    "tx_errors": e.tx_errors,
                    "last_tx_errno": errno_name(e.last_tx_errno),
                },
            }
            for e in reversed(self.clients.values())
        ]
        return {
            "type": "server",
            "description": self.config.description,
            "listenAddress": self.config.listenAddr,
            "dstAddress": self.config.dstAddr,
            "clientTimeout": self.timeout_s,
            "maxClients": self.max_clients,
            "uptime": max(0.0, now - self.started_at),
            "counters": self.stats.as_dict(),
            "sockets": sockets,
        }


def _ip(raw: bytes | None) -> str:
    """Raw 4/16 address bytes from IP_PKTINFO -> text; '' when unknown."""
    if raw is None:
        return ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""
