"""Client relay core: which paths carry copies, why the others don't, and what each one did.

Theory of operation: the netlink adapter feeds interface facts in (`on_link`, `on_link_gone`,
`on_address`, `on_resync`); the dashboard feeds exclusion commands in (`exclude`, `include`,
`swap_exclusion`, `reset_exclusions`); a reload feeds a new config in (`apply_config`). From
those the core derives `wanted()`: one `UplinkPlan` per *path* that should have a socket right
now. A path is one source address of one usable interface: by default (an engarde.yml written
for the original) each interface's first usable IPv4 address; with `addressFamilies` every
usable address of those families (an LTE dongle with an IPv4 and an IPv6 address carries a copy
over each). The link supervisor (a trio shell) diffs `wanted()` against the sockets it runs,
and reports back with `link_opened` / `link_closed` / `link_failed`.

Every change that may alter `wanted()` calls the `on_change` listener (the supervisor's wake-up).
The shell logs what changed via `take_transitions()`: one line per interface whose state or
addresses changed since the last call, so a burst of kernel messages (a veth deleted: "down",
then "gone") reads as one event.

The server fans every reply over every client address, so each reply reaches us once per path:
`tracker` (core/copies.py) is fed every transport-data copy the paths receive; it answers which
copy is first (the others are dropped before WireGuard unless `dedup: false`) and keeps each
path's `LinkQuality` (won, late, lost, saved, lag). The tracker and the qualities are written by
the data path only (the pump thread): `link_carrying` / `link_stopped` are called there when a
path's socket is attached / detached, and `sweep` from a pump timer.

Exclusions: the config's `excludedInterfaces` is the starting point; a dashboard command sets a
runtime override for one interface (excluded or not), which survives a reload; `reset` drops
the overrides.

The core does not open sockets, resolve names, read clocks or log per datagram. The data path
bumps the `LinkStats` counters owned here directly (same thread, no locks).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engarde.config import ClientConfig
from engarde.core.addr import format_address
from engarde.core.copies import CLIENT_BUDGET, CopyTracker, LinkQuality, SlotBudget, merge_quality
from engarde.core.latency import DelayRecorder
from engarde.core.links import (
    IPV4,
    IPV6,
    UP,
    AddrInfo,
    Interface,
    InterfaceTable,
    LinkInfo,
    family_of,
    path_addresses,
    source_address,
    usability,
)
from engarde.core.stats import ClientStats, LinkStats, errno_name, merge_link_stats

EXCLUDED = "excluded"
GONE = "gone"
NO_DESTINATION = "no-destination"  # addresses, but no server address for their family
PATH_MEMORY_S = 600.0  # a closed path whose address is gone is forgotten after this long

PathKey = tuple[int, str]  # (interface index, source address)


class UnknownInterface(LookupError):
    """A command named an interface the kernel has not reported."""


@dataclass(frozen=True, slots=True)
class UplinkPlan:
    """What a running path socket is made from. A different plan means a new socket."""

    index: int
    name: str
    source_ip: str
    dst: str  # "host:port", resolved (for `family`) by the shell each time a socket is made
    family: str = IPV4

    @property
    def key(self) -> PathKey:
        return (self.index, self.source_ip)


@dataclass(slots=True)
class Path:
    """One source address of an interface: its socket's state and what it carried."""

    source_ip: str
    family: str
    stats: LinkStats = field(default_factory=LinkStats)
    quality: LinkQuality = field(default_factory=LinkQuality)  # what it delivers, receive side
    socket_open: bool = False
    local_port: int | None = None
    last_port: int | None = None  # the port of its last socket: reused when it comes back
    dst: str = ""
    dst_resolved: str = ""
    last_error: str = ""
    last_error_at: float | None = None
    closed_at: float | None = None


@dataclass(slots=True)
class Uplink:
    """Everything the core knows about one interface index, beyond the kernel's facts."""

    name: str = ""
    first_seen: float = 0.0
    state: str = ""  # UP / EXCLUDED / NO_DESTINATION / a links.usability reason
    state_since: float = 0.0
    sources: tuple[str, ...] = ()  # the addresses of its wanted paths
    paths: dict[str, Path] = field(default_factory=dict)  # by source address

    @property
    def last_error(self) -> str:
        errors = [p for p in self.paths.values() if p.last_error and not p.socket_open]
        return max(errors, key=lambda p: p.last_error_at or 0.0).last_error if errors else ""


class ClientCore:
    def __init__(self, config: ClientConfig, *, now: float = 0.0) -> None:
        self.config = config
        self.table = InterfaceTable()
        self.uplinks: dict[int, Uplink] = {}
        self.overrides: dict[str, bool] = {}  # runtime exclusions: name -> excluded?
        self.stats = ClientStats()
        self.delay = DelayRecorder()  # the relay's added delay, fed by the pump
        self.dedup = config.dedup
        self.drop_foreign = config.dropForeignSources
        self.tracker = CopyTracker(budget=SlotBudget(CLIENT_BUDGET))
        self.wg_peer: tuple[Any, ...] | None = None  # where replies go: WireGuard's last source
        self.started_at = now
        self.on_change: Callable[[], None] = _nothing
        # Host-name destinations -> the address their paths send to: (dst text, family) -> the
        # socket address. Set by the first path that resolved it or by the resolver task.
        self.resolved: dict[tuple[str, str], tuple[Any, ...]] = {}
        self._now = now
        self._reported: dict[int, tuple[str, str, tuple[str, ...]]] = {}  # name, state, sources

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

    def on_wireguard_source(self, source: tuple[Any, ...]) -> str:
        """WireGuard sent from a new address (any local process can: counted, and the shell
        rate-limits the log line this returns)."""
        old, self.wg_peer = self.wg_peer, source
        self.stats.wg_peer_changes += 1
        if old is None:
            return f"WireGuard peer at {format_address(source)}: replies go there"
        new = format_address(source)
        return f"WireGuard moved from {format_address(old)} to {new}: replies follow"

    # ---- host-name destinations (the resolver task) ---------------------------------------

    def host_destinations(self) -> list[tuple[str, str]]:
        """(dst, family) of the wanted paths whose destination is a host name."""
        found = {(p.dst, p.family) for p in self.wanted().values() if is_host_name(p.dst)}
        return sorted(found)

    def destination(self, plan: UplinkPlan) -> tuple[Any, ...] | None:
        """The address a path of `plan` sends to, if its host name was resolved already."""
        return self.resolved.get((plan.dst, plan.family))

    def adopt_destination(self, plan: UplinkPlan, address: tuple[Any, ...]) -> tuple[Any, ...]:
        """A path resolved its host name itself: the address every path of that name uses
        (the first one known, so that round-robin answers do not split them)."""
        if not is_host_name(plan.dst):
            return address
        return self.resolved.setdefault((plan.dst, plan.family), address)

    def on_resolved(
        self, dst: str, family: str, addresses: list[tuple[Any, ...]], now: float
    ) -> str | None:
        """The resolver's answer for `dst`. The paths keep their address while the name still
        includes it; otherwise they move to the first one (the supervisor opens each path's
        new socket before the old one goes). Returns a log line when they move."""
        key = (dst, family)
        current = self.resolved.get(key)
        if not addresses or current in addresses:
            return None
        new = self.resolved[key] = addresses[0]
        if current is None:
            return None
        self.stats.destination_moves += 1
        moving = sum(1 for p in self.wanted().values() if (p.dst, p.family) == key)
        self.on_change()
        return (
            f"{dst} moved: {format_address(current)} -> {format_address(new)}; "
            f"{moving} path{'' if moving == 1 else 's'} follow"
        )

    def last_heard(self) -> float | None:
        """When anything last came from the server, over any path (None: never)."""
        times = [
            p.stats.last_rx
            for up in self.uplinks.values()
            for p in up.paths.values()
            if p.stats.last_rx is not None
        ]
        return max(times, default=None)

    # ---- commands (dashboard, reload) -----------------------------------------------------

    def exclude(self, name: str, now: float) -> str:
        """'ok', or 'already-excluded'. Raises UnknownInterface for a name never seen."""
        if self.is_excluded(self._known(name)):
            return "already-excluded"
        self._override(name, True, now)
        return "ok"

    def include(self, name: str, now: float) -> str:
        """'ok', or 'already-included'. Raises UnknownInterface for a name never seen."""
        if not self.is_excluded(self._known(name)):
            return "already-included"
        self._override(name, False, now)
        return "ok"

    def swap_exclusion(self, name: str, now: float) -> str:
        self._override(name, not self.is_excluded(self._known(name)), now)
        return "ok"

    def reset_exclusions(self, now: float) -> str:
        self.overrides.clear()
        self._refresh(now)
        return "ok"

    def is_excluded(self, name: str) -> bool:
        override = self.overrides.get(name)
        return self.config.is_excluded(name) if override is None else override

    def apply_config(self, config: ClientConfig, now: float) -> None:
        """A reloaded config (the keys that can change while running; the shell decides which
        those are). Runtime exclusion overrides stay. Runs in the pump thread: the handlers
        read `dedup` and `drop_foreign` per batch."""
        self.config = config
        self.dedup = config.dedup
        self.drop_foreign = config.dropForeignSources
        self._refresh(now)
        in_use = {(p.dst, p.family) for p in self.wanted().values()}
        self.resolved = {k: v for k, v in self.resolved.items() if k in in_use}

    # ---- what should run -----------------------------------------------------------------

    def wanted(self) -> dict[PathKey, UplinkPlan]:
        plans: dict[PathKey, UplinkPlan] = {}
        for iface in self.table.by_index.values():
            if self._state_of(iface) != UP:
                continue
            for plan in self._plans(iface):
                plans[plan.key] = plan
        return plans

    def why_not(self, index: int) -> str:
        """Why this interface has (or should have) no socket: a state name, 'gone' if unknown."""
        iface = self.table.by_index.get(index)
        return GONE if iface is None else self._state_of(iface)

    def path_for(self, plan: UplinkPlan) -> Path:
        """The record of `plan`'s path (made on first use)."""
        up = self._uplink(plan.index, self._now)
        path = up.paths.get(plan.source_ip)
        if path is None:
            path = up.paths[plan.source_ip] = Path(plan.source_ip, plan.family)
        return path

    # ---- the data path's thread (the pump) -------------------------------------------------

    def link_carrying(self, quality: LinkQuality, now: float) -> None:
        """A path's socket is attached: the server's copies may arrive over it from now on."""
        self.tracker.open(quality, now)

    def link_stopped(self, quality: LinkQuality, now: float) -> None:
        """A path's socket is detached: it is no longer charged with losses. (Takes the
        quality itself: the interface may be gone from the table by now.)"""
        self.tracker.close(quality, now)

    def sweep(self, now: float) -> None:
        """Settle the copies older than the window (a pump timer, a few times a second)."""
        self.tracker.sweep(now)

    # ---- reports from the link supervisor ------------------------------------------------

    def port_hint(self, plan: UplinkPlan) -> int:
        """The port this path used last time (0: any).

        Reusing it when a path comes back keeps the server's view of this client address
        unchanged: no new address to prove.
        """
        up = self.uplinks.get(plan.index)
        path = up.paths.get(plan.source_ip) if up is not None else None
        return 0 if path is None or path.last_port is None else path.last_port

    def link_opened(self, plan: UplinkPlan, local_port: int, dst: str, now: float) -> None:
        path = self.path_for(plan)
        path.socket_open, path.local_port, path.dst_resolved = True, local_port, dst
        path.last_port, path.dst, path.closed_at = local_port, plan.dst, None
        path.last_error = ""

    def link_closed(self, plan: UplinkPlan, local_port: int, now: float = 0.0) -> None:
        """The socket on `local_port` is closed (ignored if a newer socket took over)."""
        up = self.uplinks.get(plan.index)
        path = up.paths.get(plan.source_ip) if up is not None else None
        if path is not None and path.local_port == local_port:
            path.socket_open, path.local_port, path.closed_at = False, None, now

    def link_failed(self, plan: UplinkPlan, reason: str, now: float) -> bool:
        """Record a socket failure. True if it is news (not the same reason as last time), so
        the shell warns once per problem rather than once per retry."""
        path = self.path_for(plan)
        news = reason != path.last_error
        path.socket_open, path.local_port = False, None
        path.last_error, path.last_error_at = reason, now
        if path.closed_at is None:
            path.closed_at = now
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
            now = (up.name, up.state, up.sources)
            if before == now:
                continue
            self._reported[index] = now
            if before is None:
                line = _describe(up.name, True, "", up.state, (), up.sources)
            else:
                line = _describe(up.name, False, before[1], up.state, before[2], up.sources)
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
            interfaces.append(self._interface_view(index, iface, now))
        return {
            "type": "client",
            "description": self.config.description,
            "listenAddress": self.config.listenAddr,
            "dstAddress": self.config.dstAddr,
            "addressFamilies": list(self.config.families or (IPV4,)),
            "wireguardPeer": None if self.wg_peer is None else format_address(self.wg_peer),
            "uptime": max(0.0, now - self.started_at),
            "dedup": self.dedup,
            "counters": self.stats.as_dict(),
            "latency": self.delay.as_json(now),
            "tracker": self.tracker.stats.as_dict(),
            "interfaces": interfaces,
        }

    def _interface_view(self, index: int, iface: Interface, now: float) -> dict[str, Any]:
        up = self._uplink(index, now)
        state = self._state_of(iface)
        paths = list(up.paths.values())
        open_paths = [p for p in paths if p.socket_open]
        if state == EXCLUDED:
            status = "excluded"
        elif open_paths:
            status = "active"
        else:
            status = "idle"
        reason = state
        if state == UP and not open_paths:
            reason = f"error: {up.last_error}" if up.last_error else "starting"
        stats = merge_link_stats([p.stats for p in paths])
        last_rx = stats.last_rx
        first = open_paths[0] if open_paths else None
        return {
            "name": iface.name,
            "index": index,
            "label": self.config.label_for(iface.name),
            "status": status,
            "reason": reason,
            "linkState": usability(iface, self.config.families),  # exclusion aside
            "senderAddress": source_address(iface) or "",
            "addresses": list(iface.addresses),
            "dstAddress": "" if state == EXCLUDED else self._first_dst(iface.name),
            "dstResolved": first.dst_resolved if first is not None else "",
            "localPort": first.local_port if first is not None else None,
            "adminUp": iface.admin_up,
            "carrier": iface.carrier,
            "excluded": state == EXCLUDED,
            "excludedByConfig": self.config.is_excluded(iface.name),
            "toggled": iface.name in self.overrides,
            "lastReceivedAge": None if last_rx is None else max(0.0, now - last_rx),
            "firstSeenAge": max(0.0, now - up.first_seen),
            "stateAge": max(0.0, now - up.state_since),
            "lastError": up.last_error,
            "counters": stats.as_dict(),
            "quality": merge_quality([p.quality for p in paths], now),
            "paths": [_path_view(p, up.sources, now) for p in paths],
        }

    # ---- internals -------------------------------------------------------------------------

    def _known(self, name: str) -> str:
        if self.table.by_name(name) is None:
            raise UnknownInterface(name)
        return name

    def _override(self, name: str, excluded: bool, now: float) -> None:
        if excluded == self.config.is_excluded(name):
            self.overrides.pop(name, None)  # back to what the config says
        else:
            self.overrides[name] = excluded
        self._refresh(now)

    def _link_local_v6(self, name: str) -> bool:
        """IPv6 paths of this interface use its link-local address when the server it sends
        to is link-local (a dstOverrides entry like "[fe80::1%eth1]:59402")."""
        dst = self.config.dst_for(name, IPV6)
        return dst is not None and dst.lower().startswith("[fe80")

    def _families(self) -> tuple[str, ...]:
        return self.config.families or (IPV4,)

    def _plans(self, iface: Interface) -> list[UplinkPlan]:
        ll = self._link_local_v6(iface.name)
        plans = []
        for address in path_addresses(iface, self.config.families, link_local_v6=ll):
            family = family_of(address) or IPV4
            dst = self.config.dst_for(iface.name, family)
            if dst is not None:
                plans.append(UplinkPlan(iface.index, iface.name, address, dst, family))
        return plans

    def _first_dst(self, name: str) -> str:
        for family in self._families():
            dst = self.config.dst_for(name, family)
            if dst is not None:
                return dst
        return ""

    def _state_of(self, iface: Interface) -> str:
        """Excluded wins over any link state: an excluded link's flaps are not news."""
        if not iface.loopback and self.is_excluded(iface.name):
            return EXCLUDED
        ll = self._link_local_v6(iface.name)
        state = usability(iface, self.config.families, link_local_v6=ll)
        if state == UP and not self._plans(iface):
            return NO_DESTINATION
        return state

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
            state = self._state_of(iface)
            if state != up.state:
                up.state_since = now
            up.state = state
            up.sources = tuple(p.source_ip for p in self._plans(iface)) if state == UP else ()
            up.name = iface.name
            for source, path in list(up.paths.items()):
                forgotten = path.closed_at is not None and now - path.closed_at > PATH_MEMORY_S
                if forgotten and not path.socket_open and source not in iface.addresses:
                    del up.paths[source]
        self.on_change()


def _path_view(path: Path, wanted: tuple[str, ...], now: float) -> dict[str, Any]:
    last_rx = path.stats.last_rx
    if path.socket_open:
        status = "active"
    elif path.source_ip in wanted:
        status = "error" if path.last_error else "starting"
    else:
        status = "idle"
    return {
        "address": path.source_ip,
        "family": path.family,
        "status": status,
        "localPort": path.local_port,
        "dstAddress": path.dst,
        "dstResolved": path.dst_resolved if path.socket_open else "",
        "lastError": path.last_error,
        "lastReceivedAge": None if last_rx is None else max(0.0, now - last_rx),
        "counters": path.stats.as_dict(),
        "quality": path.quality.as_dict(now),
    }


def _describe(
    name: str,
    fresh: bool,
    old: str,
    new: str,
    old_ips: tuple[str, ...],
    new_ips: tuple[str, ...],
) -> str | None:
    shown = ", ".join(new_ips)
    if new == UP and (old != UP or fresh):
        return f"{name}: up, {shown} -> carrying copies"
    if new == UP and old_ips != new_ips:
        if len(old_ips) == 1 and len(new_ips) == 1:
            return f"{name}: address changed {old_ips[0]} -> {new_ips[0]}, new socket"
        added = [ip for ip in new_ips if ip not in old_ips]
        gone = [ip for ip in old_ips if ip not in new_ips]
        parts = []
        if added:
            parts.append(f"new path{'s' if len(added) > 1 else ''} {', '.join(added)}")
        if gone:
            parts.append(f"path{'s' if len(gone) > 1 else ''} {', '.join(gone)} gone")
        return f"{name}: {'; '.join(parts)}"
    if fresh:
        return f"{name}: appeared ({new})"
    if old == UP and new != UP:
        return f"{name}: {new} -> stopped carrying copies"
    if old != new:
        return f"{name}: {new}"
    return None


def _nothing() -> None:
    return None


__all__ = ["ClientCore", "Path", "UnknownInterface", "UplinkPlan", "errno_name"]


def is_host_name(dst: str) -> bool:
    """True when the host of a HOST:PORT destination is a name to resolve (not an address,
    not "" for this machine)."""
    host = dst.rpartition(":")[0]
    if not host or host.startswith("["):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False
