"""Counters the data path bumps. Plain attributes: the pump's handlers touch them directly.

Every drop has a named counter, so the dashboard and /metrics can say why a datagram did not go
where it was meant to. Times are monotonic seconds as passed in by the shells.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass, fields


def errno_name(code: int | None) -> str:
    if code is None:
        return ""
    return errno.errorcode.get(code, f"errno {code}")


@dataclass(slots=True)
class LinkStats:
    """One uplink (client) seen from the relay."""

    tx_datagrams: int = 0
    tx_bytes: int = 0
    tx_dropped_full: int = 0  # the socket buffer was full: dropped, never waited for
    tx_errors: int = 0  # sendto failed (ENETUNREACH, ENODEV, EPERM from a firewall, ...)
    last_tx_errno: int | None = None
    rx_datagrams: int = 0
    rx_bytes: int = 0
    rx_foreign: int = 0  # came from something other than the server address: dropped
    rx_no_peer: int = 0  # a reply before WireGuard ever sent us anything: nowhere to go
    rx_dropped_full: int = 0  # WireGuard's side could not take it right now
    last_rx: float | None = None

    def as_dict(self) -> dict[str, int | float | str | None]:
        out: dict[str, int | float | str | None] = dict(asdict(self))
        out["last_tx_errno"] = errno_name(self.last_tx_errno)
        return out


def merge_link_stats(parts: list[LinkStats]) -> LinkStats:
    """Several paths' counters as one (an interface's): sums, the latest receive time."""
    total = LinkStats()
    for part in parts:
        for name in _COUNTERS:
            setattr(total, name, getattr(total, name) + getattr(part, name))
        if part.last_tx_errno is not None:
            total.last_tx_errno = part.last_tx_errno
        if part.last_rx is not None and (total.last_rx is None or part.last_rx > total.last_rx):
            total.last_rx = part.last_rx
    return total


_COUNTERS = tuple(f.name for f in fields(LinkStats) if f.type in ("int", int))


@dataclass(slots=True)
class RelayStats:
    """Process-wide counters of the WireGuard-facing side."""

    wg_rx_datagrams: int = 0  # from WireGuard
    wg_rx_bytes: int = 0
    wg_tx_datagrams: int = 0  # to WireGuard
    wg_tx_bytes: int = 0
    wg_tx_dropped_full: int = 0
    wg_tx_errors: int = 0  # e.g. ECONNREFUSED: WireGuard is not listening on dstAddr
    no_uplink_drops: int = 0  # client: a datagram from WireGuard while no uplink is usable
    empty_datagrams: int = 0  # zero-length datagrams: counted, never relayed
    recv_errors: int = 0
    duplicates_dropped: int = 0  # exact copies of a datagram already handed on (dedup)

    def as_dict(self) -> dict[str, int]:
        return dict(asdict(self))


@dataclass(slots=True)
class ClientStats(RelayStats):
    """The client's process-wide counters."""

    wg_peer_changes: int = 0  # WireGuard's source (where replies go) changed: any local sender
    destination_moves: int = 0  # a host-name dstAddr resolved to a new address: paths moved
