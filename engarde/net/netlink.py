"""The kernel's interface events, read from a raw netlink socket owned by trio.

The only module that imports pyroute2: its message parsers turn bytes into ifinfmsg/ifaddrmsg,
which are translated here into the core's plain LinkInfo/AddrInfo records. No pyroute2 objects
or exceptions leave this module.

Order matters: subscribe to the multicast groups first, then dump links and addresses on a second
socket, then consume events. Updates are idempotent, so events that overlap the dump are harmless.
If the kernel drops events (ENOBUFS, the socket buffer overflowed) we dump again and converge.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from engarde.core.links import AddrInfo, LinkInfo
from engarde.errors import StartupError

logger = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_LOWER_UP = 0x10000
NETLINK_RCVBUF = 4 * 1024 * 1024
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR


class NetlinkError(StartupError):
    """Netlink could not be opened or read (the message says why)."""


@dataclass
class Dump:
    links: list[LinkInfo] = field(default_factory=list)
    addrs: list[AddrInfo] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LinkGone:
    index: int


@dataclass(frozen=True, slots=True)
class AddrChange:
    addr: AddrInfo
    present: bool


Event = LinkInfo | LinkGone | AddrChange


class InterfaceListener:
    """What the watcher feeds: the client core implements these."""

    def on_resync(self, links: list[LinkInfo], addrs: list[AddrInfo], now: float) -> None: ...
    def on_link(self, info: LinkInfo, now: float) -> None: ...
    def on_link_gone(self, index: int, now: float) -> None: ...
    def on_address(self, addr: AddrInfo, present: bool, now: float) -> None: ...


def _link_info(msg: Any) -> LinkInfo:
    flags = int(msg["flags"])
    return LinkInfo(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME") or f"if{msg['index']}"),
        admin_up=bool(flags & IFF_UP),
        carrier=bool(flags & IFF_LOWER_UP),
        loopback=bool(flags & IFF_LOOPBACK),
    )


def _addr_info(msg: Any) -> AddrInfo | None:
    address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if not address:
        return None
    # IFA_FLAGS (32 bits) when the kernel sends it, else the 8-bit ifa_flags of the header.
    flags = msg.get_attr("IFA_FLAGS")
    if flags is None:
        flags = msg.get("flags", 0)
    return AddrInfo(int(msg["index"]), str(address), int(msg["prefixlen"]), int(flags or 0))


def decode(marshal: MarshalRtnl, data: bytes) -> Iterator[Event | None]:
    """Bytes from netlink -> events. None marks the end of a dump (NLMSG_DONE)."""
    for msg in marshal.parse(data):
        kind = msg["header"]["type"]
        if kind == NLMSG_DONE:
            yield None
        elif kind == NLMSG_ERROR:
            code = -int(msg.get("error", 0) or 0)
            if code:
                raise NetlinkError(f"netlink dump failed: {errno.errorcode.get(code, code)}")
        elif kind == RTM_NEWLINK:
            yield _link_info(msg)
        elif kind == RTM_DELLINK:
            yield LinkGone(int(msg["index"]))
        elif kind in (RTM_NEWADDR, RTM_DELADDR):
            info = _addr_info(msg)
            if info is not None:
                yield AddrChange(info, kind == RTM_NEWADDR)


def _dump_request(kind: int, seq: int) -> bytes:
    body = (
        struct.pack("=BxHiII", 0, 0, 0, 0, 0)
        if kind == RTM_GETLINK
        else struct.pack("=BBBBI", 0, 0, 0, 0, 0)
    )
    header = struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def _collect(dump: Dump, event: Event) -> None:
    if isinstance(event, LinkInfo):
        dump.links.append(event)
    elif isinstance(event, AddrChange) and event.present:
        dump.addrs.append(event.addr)


def dump_interfaces() -> Dump:
    """Blocking one-shot dump (for `list-interfaces`). Raises NetlinkError."""
    marshal = MarshalRtnl()
    dump = Dump()
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.bind((0, 0))
            for seq, kind in enumerate((RTM_GETLINK, RTM_GETADDR), start=1):
                sock.send(_dump_request(kind, seq))
                done = False
                while not done:
                    for event in decode(marshal, sock.recv(65536)):
                        if event is None:
                            done = True
                        else:
                            _collect(dump, event)
    except OSError as exc:
        raise NetlinkError(f"cannot read interfaces from netlink: {exc}") from exc
    return dump


async def _dump_async() -> Dump:
    marshal = MarshalRtnl()
    dump = Dump()
    with trio.socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        await sock.bind((0, 0))
        for seq, kind in enumerate((RTM_GETLINK, RTM_GETADDR), start=1):
            await sock.send(_dump_request(kind, seq))
            done = False
            while not done:
                for event in decode(marshal, await sock.recv(1 << 20)):
                    if event is None:
                        done = True
                    else:
                        _collect(dump, event)
    return dump


REDUMP_RETRY_FIRST_S = 0.1  # then doubling, up to REDUMP_RETRY_MAX_S
REDUMP_RETRY_MAX_S = 5.0


async def redump() -> Dump:
    """Dump links and addresses again after an overflow. An OSError here (EMFILE: no file
    descriptor for the dump socket, ENOBUFS again) is retried with backoff: the running
    uplinks keep carrying copies meanwhile, so it must not end the client."""
    delay = REDUMP_RETRY_FIRST_S
    while True:
        try:
            return await _dump_async()
        except OSError as exc:
            logger.warning("netlink: re-reading interfaces failed (%s); retrying in %gs",
                           errno.errorcode.get(exc.errno or 0, exc), delay)  # fmt: skip
            await trio.sleep(delay)
            delay = min(REDUMP_RETRY_MAX_S, delay * 2)


def _open_events_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, NETLINK_RCVBUF)  # SO_RCVBUFFORCE (root)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NETLINK_RCVBUF)
    except OSError:
        sock.close()
        raise
    return sock


async def run_netlink_watcher(
    listener: InterfaceListener,
    *,
    rcvbuf: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep `listener` in step with the kernel's links and addresses, forever.

    Reports started once the first full dump has been applied. Raises NetlinkError if
    netlink cannot be opened at all; a dropped-events overflow (ENOBUFS) only triggers a re-dump.
    """
    marshal = MarshalRtnl()
    try:
        sock = _open_events_socket()
        if rcvbuf is not None:  # tests shrink it to force an overflow
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.bind((0, GROUPS))
        dump = await _dump_async()
    except OSError as exc:
        raise NetlinkError(f"cannot watch interfaces via netlink: {exc}") from exc
    with sock:
        listener.on_resync(dump.links, dump.addrs, time.monotonic())
        task_status.started()
        while True:
            try:
                data = await sock.recv(1 << 20)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise NetlinkError(f"netlink receive failed: {exc}") from exc
                logger.warning("netlink: kernel dropped interface events (ENOBUFS), re-reading all")
                dump = await redump()
                listener.on_resync(dump.links, dump.addrs, time.monotonic())
                continue
            now = time.monotonic()
            for event in decode(marshal, data):
                if isinstance(event, LinkInfo):
                    listener.on_link(event, now)
                elif isinstance(event, LinkGone):
                    listener.on_link_gone(event.index, now)
                elif isinstance(event, AddrChange):
                    listener.on_address(event.addr, event.present, now)
