"""What the kernel says about interfaces, and which of them can carry copies.

Theory of operation: the netlink adapter (engarde.net.netlink) turns kernel messages into the
plain records below; `InterfaceTable` keeps the latest view keyed by interface index (names are
reused when a dongle is replugged, indexes are not). `usability()` answers "can this interface
carry copies, and if not, why not" from link flags and addresses alone. Exclusions are the
client core's business, not this module's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One RTM_NEWLINK: the state of an interface right now."""

    index: int
    name: str
    admin_up: bool
    carrier: bool
    loopback: bool = False


@dataclass(frozen=True, slots=True)
class AddrInfo:
    """One RTM_NEWADDR/RTM_DELADDR entry."""

    index: int
    address: str
    prefixlen: int = 32


@dataclass(slots=True)
class Interface:
    index: int
    name: str
    admin_up: bool
    carrier: bool
    loopback: bool
    addresses: list[str] = field(default_factory=list)


# Reasons an interface does not carry copies (besides exclusion, decided by the client core).
UP = "up"
ADMIN_DOWN = "admin-down"
NO_CARRIER = "no-carrier"
NO_ADDRESS = "no-address"
LOOPBACK = "loopback"


def usable_ipv4(address: str) -> bool:
    """An address an uplink can send from: IPv4, not loopback 127/8, not link-local 169.254/16."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and not ip.is_loopback and not ip.is_link_local


def source_address(iface: Interface) -> str | None:
    """The first usable address of the interface, as the original picks it."""
    for address in iface.addresses:
        if usable_ipv4(address):
            return address
    return None


def usability(iface: Interface) -> str:
    """UP if the interface can carry copies, otherwise the reason why not."""
    if iface.loopback:
        return LOOPBACK
    if not iface.admin_up:
        return ADMIN_DOWN
    if not iface.carrier:
        return NO_CARRIER
    if source_address(iface) is None:
        return NO_ADDRESS
    return UP


class InterfaceTable:
    """The kernel's interfaces as last reported. Every update is idempotent.

    Each mutator returns True when something that matters for link planning changed, so the
    caller can skip waking the supervisor on the many RTM_NEWLINK messages that change nothing
    we look at (statistics, MTU probes, ...).
    """

    def __init__(self) -> None:
        self.by_index: dict[int, Interface] = {}

    def upsert_link(self, info: LinkInfo) -> bool:
        iface = self.by_index.get(info.index)
        if iface is None:
            self.by_index[info.index] = Interface(
                info.index, info.name, info.admin_up, info.carrier, info.loopback
            )
            return True
        changed = (iface.name, iface.admin_up, iface.carrier, iface.loopback) != (
            info.name,
            info.admin_up,
            info.carrier,
            info.loopback,
        )
        iface.name, iface.admin_up = info.name, info.admin_up
        iface.carrier, iface.loopback = info.carrier, info.loopback
        return changed

    def remove_link(self, index: int) -> Interface | None:
        return self.by_index.pop(index, None)

    def add_address(self, addr: AddrInfo) -> bool:
        iface = self.by_index.get(addr.index)
        if iface is None or addr.address in iface.addresses:
            # An address for a link we have not heard of yet: the link dump or event that
            # follows carries it again via the resync, or the link was just deleted.
            return False
        iface.addresses.append(addr.address)
        return True

    def remove_address(self, addr: AddrInfo) -> bool:
        iface = self.by_index.get(addr.index)
        if iface is None or addr.address not in iface.addresses:
            return False
        iface.addresses.remove(addr.address)
        return True

    def replace_all(self, links: list[LinkInfo], addrs: list[AddrInfo]) -> None:
        """Start over from a full dump (start-up, or after the kernel dropped events)."""
        self.by_index = {}
        for info in links:
            self.upsert_link(info)
        for addr in addrs:
            self.add_address(addr)

    def by_name(self, name: str) -> Interface | None:
        for iface in self.by_index.values():
            if iface.name == name:
                return iface
        return None
