"""What the kernel says about interfaces, and which of their addresses can carry copies.

Theory of operation: the netlink adapter (engarde.net.netlink) turns kernel messages into the
plain records below; `InterfaceTable` keeps the latest view keyed by interface index (names are
reused when a dongle is replugged, indexes are not), with each address's flags.
`path_addresses()` answers "which addresses of this interface are paths": by default (an
engarde.yml written for the original) the first usable IPv4 address only; with
`addressFamilies` every usable address of those families. `usability()` answers "can this
interface carry copies, and if not, why not". Exclusions are the client core's business.

Usable IPv4: not loopback 127/8, not link-local 169.254/16. Usable IPv6: global or unique
local (ULA), not link-local (unless the path's server is link-local itself), and ready: not
tentative (duplicate address detection still running: the kernel announces the address before
it can be used, and announces it again once it can), not failed DAD, not deprecated (its
preferred lifetime is over: privacy addresses rotating, a prefix being withdrawn; its
successor takes over as a new path).
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


# IFA_F_* flags of an address (linux/if_addr.h)
IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40

IPV4 = "ipv4"
IPV6 = "ipv6"
FAMILIES = (IPV4, IPV6)


@dataclass(frozen=True, slots=True)
class AddrInfo:
    """One RTM_NEWADDR/RTM_DELADDR entry."""

    index: int
    address: str
    prefixlen: int = 32
    flags: int = 0


@dataclass(slots=True)
class Interface:
    index: int
    name: str
    admin_up: bool
    carrier: bool
    loopback: bool
    addresses: list[str] = field(default_factory=list)
    flags: dict[str, int] = field(default_factory=dict)  # address -> IFA_F_* flags


# Reasons an interface does not carry copies (besides exclusion, decided by the client core).
UP = "up"
ADMIN_DOWN = "admin-down"
NO_CARRIER = "no-carrier"
NO_ADDRESS = "no-address"
LOOPBACK = "loopback"
TENTATIVE = "tentative"  # its only candidate addresses are still being checked (IPv6 DAD)


def family_of(address: str) -> str | None:
    """IPV4 / IPV6 for an IP address (a zone suffix is allowed), None for anything else."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    return IPV4 if ip.version == 4 else IPV6


def usable_ipv4(address: str) -> bool:
    """An address an uplink can send from: IPv4, not loopback 127/8, not link-local 169.254/16."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and not ip.is_loopback and not ip.is_link_local


def usable_ipv6(address: str, flags: int = 0, *, link_local: bool = False) -> bool:
    """An IPv6 address an uplink can send from now: global or ULA (link-local instead when
    `link_local`: for a server that is link-local itself), and ready (see the module doc)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version != 6 or ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        return False
    if ip.is_link_local != link_local or ip.ipv4_mapped is not None:
        return False
    return not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED | IFA_F_DEPRECATED)


def source_address(iface: Interface) -> str | None:
    """The first usable IPv4 address of the interface, as the original picks it."""
    for address in iface.addresses:
        if usable_ipv4(address):
            return address
    return None


def path_addresses(
    iface: Interface, families: tuple[str, ...] | None, *, link_local_v6: bool = False
) -> list[str]:
    """The interface's addresses that are paths, in the kernel's order.

    `families` None: the original's choice, the first usable IPv4 address. Otherwise every
    usable address of the listed families (IPv6 link-local instead of global ones when
    `link_local_v6`).
    """
    if families is None:
        first = source_address(iface)
        return [] if first is None else [first]
    out = []
    for address in iface.addresses:
        family = family_of(address)
        if family not in families:
            continue
        if family == IPV4:
            if usable_ipv4(address):
                out.append(address)
        elif usable_ipv6(address, iface.flags.get(address, 0), link_local=link_local_v6):
            out.append(address)
    return out


def usability(
    iface: Interface, families: tuple[str, ...] | None = None, *, link_local_v6: bool = False
) -> str:
    """UP if the interface can carry copies, otherwise the reason why not."""
    if iface.loopback:
        return LOOPBACK
    if not iface.admin_up:
        return ADMIN_DOWN
    if not iface.carrier:
        return NO_CARRIER
    if not path_addresses(iface, families, link_local_v6=link_local_v6):
        waiting = any(
            flags & IFA_F_TENTATIVE and family_of(address) in (families or ())
            for address, flags in iface.flags.items()
        )
        return TENTATIVE if waiting else NO_ADDRESS
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
        """A new address, or new flags for a known one (IPv6: tentative -> ready)."""
        iface = self.by_index.get(addr.index)
        if iface is None:
            # An address for a link we have not heard of yet: the link dump or event that
            # follows carries it again via the resync, or the link was just deleted.
            return False
        if addr.address in iface.addresses:
            if iface.flags.get(addr.address, 0) == addr.flags:
                return False
            iface.flags[addr.address] = addr.flags
            return True
        iface.addresses.append(addr.address)
        iface.flags[addr.address] = addr.flags
        return True

    def remove_address(self, addr: AddrInfo) -> bool:
        iface = self.by_index.get(addr.index)
        if iface is None or addr.address not in iface.addresses:
            return False
        iface.addresses.remove(addr.address)
        iface.flags.pop(addr.address, None)
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
