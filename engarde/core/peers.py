"""What the server knows about each client: its addresses, its WireGuard sessions, its route,
and how the dashboard sees them (`address_view`, `client_view`).

Plain data, owned by `ServerCore` (core/server.py, where the rules live) and written only in
the data path's thread. Three kinds of *route* carry datagrams from client addresses to
WireGuard; each has an `upstream` attribute where the shell keeps its socket (the core never
touches it, it only says which route a datagram takes and when a route's socket must close):

- `Client`: one WireGuard peer (a field kit) and its own upstream socket, so WireGuard sees one
  endpoint per peer, and whatever WireGuard sends to that socket goes to that client's
  addresses only;
- `Lobby`: the one socket that carries handshake initiations from addresses not proven yet;
  what WireGuard sends back on it is routed by the index it names, to the exact senders of the
  initiation it answers;
- `ClientAddress` with a *probe* socket: an unproven address whose transport data WireGuard
  must judge (it names no session we know, or it is not a copy of a proven address's datagram).
  If WireGuard answers on the probe, it authenticated what came through it: the address is a
  path of the peer the answer is for.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from engarde.core.addr import format_address
from engarde.core.copies import CopyTracker, LinkQuality
from engarde.core.stats import errno_name

Address = tuple[Any, ...]


@dataclass(slots=True, eq=False)
class ClientAddress:
    """One source address (ip, port): one uplink of a client, as the server sees it."""

    address: Address
    local_raw: bytes | None  # the server address it sends to (raw); replies leave from it
    first_seen: float
    last_seen: float
    client: Client | None = None  # None while unproven
    proven_by: str = ""  # "copy", "handshake", "wireguard", "relayNonWireGuard"
    upstream: Any = None  # its probe socket (the shell's), if it has one
    probe_proven_at: float | None = None  # proven while its probe was open: close it soon
    claim: int | None = None  # the session index its last unproven datagram named
    rx_datagrams: int = 0
    rx_bytes: int = 0
    tx_datagrams: int = 0
    tx_bytes: int = 0
    tx_dropped_full: int = 0
    tx_errors: int = 0
    last_tx_errno: int | None = None
    quality: LinkQuality = field(default_factory=LinkQuality)

    @property
    def proven(self) -> bool:
        return self.client is not None


@dataclass(slots=True, eq=False)
class Client:
    """One WireGuard peer behind one engarde client: its proven addresses, the session indices
    of its WireGuard sessions, its copy tracker and its upstream socket."""

    id: int
    first_seen: float
    last_seen: float
    tracker: CopyTracker
    addresses: dict[Address, ClientAddress] = field(default_factory=dict)
    # index -> when learned. local: chosen by our WireGuard (named by the peer's data);
    # peer: chosen by the peer's WireGuard (named by what our WireGuard sends).
    local_indices: dict[int, float] = field(default_factory=dict)
    peer_indices: dict[int, float] = field(default_factory=dict)
    upstream: Any = None
    merged_into: Client | None = None  # this was the same peer as that client: routes go there
    duplicates_dropped: int = 0
    gone_rx_datagrams: int = 0  # counters of addresses forgotten, so client totals never drop
    gone_rx_bytes: int = 0
    gone_tx_datagrams: int = 0
    gone_tx_bytes: int = 0
    label: str = ""

    @property
    def name(self) -> str:
        return f"client #{self.id}"


@dataclass(slots=True, eq=False)
class Lobby:
    """The route of handshake initiations from unproven addresses (see the module docstring)."""

    upstream: Any = None


@dataclass(slots=True)
class Initiation:
    """A handshake initiation seen from clients: its bytes and every address that sent exactly
    these bytes (copies of it over several uplinks), for routing the response."""

    message: bytes
    at: float
    senders: list[Address] = field(default_factory=list)


Route = Client | Lobby | ClientAddress


# ---- as the dashboard sees them (ServerCore.snapshot) ----------------------------------------


def address_view(e: ClientAddress, now: float, cutoff: float) -> dict[str, Any]:
    return {
        "address": format_address(e.address),
        "client": e.client.id if e.client is not None else None,
        "last": int(max(0.0, now - e.last_seen)),
        "lastReceivedAge": max(0.0, now - e.last_seen),
        "firstSeenAge": max(0.0, now - e.first_seen),
        "localAddress": local_ip(e.local_raw),
        "alive": e.last_seen >= cutoff,
        "confirmed": e.client is not None,
        "provenBy": e.proven_by,
        "probe": e.upstream is not None,
        "counters": {
            "rx_datagrams": e.rx_datagrams,
            "rx_bytes": e.rx_bytes,
            "tx_datagrams": e.tx_datagrams,
            "tx_bytes": e.tx_bytes,
            "tx_dropped_full": e.tx_dropped_full,
            "tx_errors": e.tx_errors,
            "last_tx_errno": errno_name(e.last_tx_errno),
        },
        "quality": e.quality.as_dict(now),
    }


def client_view(c: Client, now: float, cutoff: float) -> dict[str, Any]:
    addresses = list(c.addresses.values())
    return {
        "id": c.id,
        "label": c.label,
        "firstSeenAge": max(0.0, now - c.first_seen),
        "lastReceivedAge": max(0.0, now - c.last_seen),
        "sessions": sorted(f"{i:08x}" for i in list(c.local_indices)),
        "peerSessions": sorted(f"{i:08x}" for i in list(c.peer_indices)),
        "upstream": c.upstream is not None,
        "duplicatesDropped": c.duplicates_dropped,
        "gone": {  # counters of its addresses forgotten meanwhile: totals never go down
            "rx_datagrams": c.gone_rx_datagrams,
            "rx_bytes": c.gone_rx_bytes,
            "tx_datagrams": c.gone_tx_datagrams,
            "tx_bytes": c.gone_tx_bytes,
        },
        "tracker": c.tracker.stats.as_dict(),
        "addresses": [format_address(e.address) for e in addresses],
        "alive": sum(1 for e in addresses if e.last_seen >= cutoff),
    }


@functools.lru_cache(maxsize=64)  # a server has few addresses; a flood logs one line per source
def local_ip(raw: bytes | None) -> str:
    """Raw 4/16 address bytes from IP_PKTINFO -> text; '' when unknown."""
    if raw is None:
        return ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""
