"""Client relay core: which uplinks carry copies, why the others don't, and what each one did.

Theory of operation: the netlink adapter feeds interface facts in (`on_link`, `on_link_gone`,
`on_address`, `on_resync`); the dashboard feeds exclusion commands in (`exclude`, `include`,
`swap_exclusion`, `reset_exclusions`). From those the core derives `wanted()`: one `UplinkPlan`
per interface that should have a socket right now. The link supervisor (a trio shell) diffs that
against the sockets it runs, and reports back with `link_opened` / `link_closed` / `link_failed`.

Every change that may alter `wanted()` calls the `on_change` listener (the supervisor's wake-up)
The shell logs what changed via `take_transitions()`: one line per interface whose state changed
since the last call, so a burst of kernel messages (a veth deleted: "down", then "gone") reads
as one event.

The core does not open sockets, resolve names, read clocks or log per datagram. The data path
bumps the `LinkStats` counters owned here directly (same thread, no locks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engarde.config import ClientConfig
from engarde.core.addr import format_address
from engarde.core.links import (
    UP,
    AddrInfo,
    Interface,
    InterfaceTable,
    LinkInfo,
    source_address,
    usability,
)
from engarde.core.stats import LinkStats, RelayStats, errno_name

EXCLUDED = "excluded"
GONE = "gone"


class UnknownInterface(LookupError):
    """A command named an interface the kernel has not reported."""


@dataclass(frozen=True, slots=True)
class UplinkPlan:
    """What a running uplink socket is made from. A different plan means a new socket."""

    index: int
    name: str
    source_ip: str
    dst: str  # "host:port", resolved by the shell each time a socket is made


@dataclass(slots=True)
class Uplink:
    """Everything the core knows about one interface index, beyond the kernel's facts."""

    name: str = ""
    stats: LinkStats = field(default_factory=LinkStats)
    first_seen: float = 0.0
    state: str = ""  # UP / EXCLUDED / a links.usability reason
    state_since: float = 0.0
    source_ip: str | None = None
    socket_open: bool = False
    local_port: int | None = None
    last_port: tuple[str, int] | None = None  # (source ip, port) of the last socket
    dst_resolved: str = ""
    last_error: str = ""
    last_error_at: float | None = None


class ClientCore:
    def __init__(self, config: ClientConfig, *, now: float = 0.0) -> None:
        self.config = config
        self.table = InterfaceTable()
        self.uplinks: dict[int, Uplink] = {}
        self.toggled: set[str] = set()  # runtime toggles: effective = configured XOR toggled
        self.stats = RelayStats()
        self.wg_peer: tuple[Any, ...] | None = None  # where replies go: WireGuard's last source
        self.started_at = now
        self.on_change: Callable[[], None] = _nothing
        self._now = now
        self._reported: dict[int, tuple[str, str, str | None]] = {}  # name, state, source

    # ---- inputs from netlink -------------------------------------------------------------

    def on_resync(self, links: list[LinkInfo], addrs: list[AddrInfo], now: float) -> None:
        """A full dump: replaces everything known about interfaces."""
        self.table.replace_all(links, addrs)
        self._refresh(now)

    def on_link(self, info: LinkInfo, now: float) -> None:
        if self.table.upsert_link(info):
            self._refresh(now)

    def on_link_gone(self, index: int, now: float) -> None:
        if self.table.remove_link(index) is not None:
            self._refresh(now)

    def on_address(self, addr: AddrInfo, present: bool, now: float) -> None:
        changed = self.table.add_address(addr) if present else self.table.remove_address(addr)
        if changed:
            self._refresh(now)

    # ---- inputs from WireGuard's side ---------------------------------------------------

    def on_wireguard_source(self, source: tuple[Any, ...]) -> str | None:
        """WireGuard sent from a new address; returns a log line for the shell (or None)."""
        old, self.wg_peer = self.wg_peer, source
        if old is None:
            return f"WireGuard peer at {format_address(source)}: replies go there"
        new = format_address(source)
        return f"WireGuard moved from {format_address(old)} to {new}: replies follow"

    # ---- commands (dashboard) -----------------------------------------------------------

    def exclude(self, name: str, now: float) -> str:
        """'ok', or 'already-excluded'. Raises UnknownInterface for a name never seen."""
        if self.is_excluded(self._known(name)):
            return "already-excluded"
        self.toggled ^= {name}
        self._refresh(now)
        return "ok"

    def include(self, name: str, now: float) -> str:
        """'ok', or 'already-included'. Raises UnknownInterface for a name never seen."""
        if not self.is_excluded(self._known(name)):
            return "already-included"
        self.toggled ^= {name}
        self._refresh(now)
        return "ok"

    def swap_exclusion(self, name: str, now: float) -> str:
        self.toggled ^= {self._known(name)}
        self._refresh(now)
        return "ok"

    def reset_exclusions(self, now: float) -> str:
        self.toggled.clear()
        self._refresh(now)
        return "ok"

    def is_excluded(self, name: str) -> bool:
        return self.config.is_excluded(name) != (name in self.toggled)

    # ---- what should run -----------------------------------------------------------------

    def wanted(self) -> dict[int, UplinkPlan]:
        plans: dict[int, UplinkPlan] = {}
        for index, iface in self.table.by_index.items():
            if self._state_of(iface) == UP:
                source = source_address(iface)
                if source is not None:
                    plans[index] = UplinkPlan(
                        index, iface.name, source, self.config.dst_for(iface.name)
                    )
        return plans

    def why_not(self, index: int) -> str:
        """Why this interface has (or should have) no socket: a state name, 'gone' if unknown."""
        iface = self.table.by_index.get(index)
        return GONE if iface is None else self._state_of(iface)

    def stats_for(self, index: int) -> LinkStats:
        return self._uplink(index, self._now).stats

    # ---- reports from the link supervisor ------------------------------------------------

    def port_hint(self, plan: UplinkPlan) -> int:
        """The port this uplink used last time from the same address (0: any).

        Reusing it when a link comes back keeps the server's view of this client address
        unchanged: no "new client", no re-confirmation.
        """
        up = self.uplinks.get(plan.index)
        if up is None or up.last_port is None or up.last_port[0] != plan.source_ip:
            return 0
        return up.last_port[1]

    def link_opened(self, plan: UplinkPlan, local_port: int, dst: str, now: float) -> None:
        up = self._uplink(plan.index, now)
        up.socket_open, up.local_port, up.dst_resolved = True, local_port, dst
        up.last_port = (plan.source_ip, local_port)
        up.last_error = ""

    def link_closed(self, index: int, local_port: int) -> None:
        """The socket on `local_port` is closed (ignored if a newer socket took over)."""
        up = self.uplinks.get(index)
        if up is not None and up.local_port == local_port:
            up.socket_open, up.local_port = False, None

    def link_failed(self, index: int, reason: str, now: float) -> bool:
        """Record a socket failure. True if it is news (not the same reason as last time), so
        the shell warns once per problem rather than once per retry."""
        up = self._uplink(index, now)
        news = reason != up.last_error
        up.socket_open, up.local_port = False, None
        up.last_error, up.last_error_at = reason, now
        return news

    def take_transitions(self) -> list[str]:
        """Log lines describing what changed since the last call (one per interface)."""
        lines = []
        for index, (name, _, _) in list(self._reported.items()):
            if index not in self.uplinks:
                del self._reported[index]
                lines.append(f"{name}: gone (interface removed)")
        for index, up in self.uplinks.items():
            before = self._reported.get(index)
            now = (up.name, up.state, up.source_ip)
            if before == now:
                continue
            self._reported[index] = now
            if before is None:
                line = _describe(up.name, True, "", up.state, None, up.source_ip)
            else:
                line = _describe(up.name, False, before[1], up.state, before[2], up.source_ip)
                if line is None and before[0] != up.name:
                    line = f"{before[0]}: renamed to {up.name} ({up.state})"
            if line is not None:
                lines.append(line)
        return lines

    # ---- status ---------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything the dashboard shows, as JSON-ready data. Reads only."""
        interfaces = []
        for index, iface in sorted(self.table.by_index.items(), key=lambda kv: kv[1].name):
            if iface.loopback:
                continue
            up = self._uplink(index, now)
            state = self._state_of(iface)
            if state == EXCLUDED:
                status = "excluded"
            elif up.socket_open:
                status = "active"
            else:
                status = "idle"
            reason = state
            if state == UP and not up.socket_open:
                reason = f"error: {up.last_error}" if up.last_error else "starting"
            last_rx = up.stats.last_rx
            interfaces.append(
                {
                    "name": iface.name,
                    "index": index,
                    "label": self.config.label_for(iface.name),
                    "status": status,
                    "reason": reason,
                    "linkState": usability(iface),  # the kernel's view, exclusion aside
                    "senderAddress": source_address(iface) or "",
                    "addresses": list(iface.addresses),
                    "dstAddress": "" if state == EXCLUDED else self.config.dst_for(iface.name),
                    "dstResolved": up.dst_resolved if up.socket_open else "",
                    "localPort": up.local_port,
                    "adminUp": iface.admin_up,
                    "carrier": iface.carrier,
                    "excluded": state == EXCLUDED,
                    "excludedByConfig": self.config.is_excluded(iface.name),
                    "toggled": iface.name in self.toggled,
                    "lastReceivedAge": None if last_rx is None else max(0.0, now - last_rx),
                    "firstSeenAge": max(0.0, now - up.first_seen),
                    "stateAge": max(0.0, now - up.state_since),
                    "lastError": up.last_error,
                    "counters": up.stats.as_dict(),
                }
            )
        return {
            "type": "client",
            "description": self.config.description,
            "listenAddress": self.config.listenAddr,
            "dstAddress": self.config.dstAddr,
            "wireguardPeer": None if self.wg_peer is None else format_address(self.wg_peer),
            "uptime": max(0.0, now - self.started_at),
            "counters": self.stats.as_dict(),
            "interfaces": interfaces,
        }

    # ---- internals -------------------------------------------------------------------------

    def _known(self, name: str) -> str:
        if self.table.by_name(name) is None:
            raise UnknownInterface(name)
        return name

    def _state_of(self, iface: Interface) -> str:
        """Excluded wins over any link state: an excluded link's flaps are not news."""
        if not iface.loopback and self.is_excluded(iface.name):
            return EXCLUDED
        return usability(iface)

    def _uplink(self, index: int, now: float) -> Uplink:
        up = self.uplinks.get(index)
        if up is None:
            up = self.uplinks[index] = Uplink(first_seen=now, state_since=now)
        return up

    def _refresh(self, now: float) -> None:
        """Recompute each interface's state and wake the supervisor."""
        self._now = now
        for index in [i for i in self.uplinks if i not in self.table.by_index]:
            del self.uplinks[index]
        for index, iface in self.table.by_index.items():
            if iface.loopback:
                continue
            up = self._uplink(index, now)
            state, source = self._state_of(iface), source_address(iface)
            if state != up.state:
                up.state_since = now
            up.state, up.source_ip = state, source
            up.name = iface.name
        self.on_change()


def _describe(
    name: str, fresh: bool, old: str, new: str, old_ip: str | None, new_ip: str | None
) -> str | None:
    if new == UP and (old != UP or fresh):
        return f"{name}: up, {new_ip} -> carrying copies"
    if new == UP and old_ip != new_ip:
        return f"{name}: address changed {old_ip} -> {new_ip}, new socket"
    if fresh:
        return f"{name}: appeared ({new})"
    if old == UP and new != UP:
        return f"{name}: {new} -> stopped carrying copies"
    if old != new:
        return f"{name}: {new}"
    return None


def _nothing() -> None:
    return None


__all__ = ["ClientCore", "UnknownInterface", "UplinkPlan", "errno_name"]
