"""Counters the data path bumps. Plain attributes: the pump's handlers touch them directly.

Every drop has a named counter, so the dashboard and /metrics can say why a datagram did not go
where it was meant to. Times are monotonic seconds as passed in by the shells.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass


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

    def as_dict(self) -> dict[str, int]:
        return dict(asdict(self))
