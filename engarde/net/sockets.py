"""Making the sockets engarde relays through, with OS errors turned into messages people can act on.

All sockets here are plain stdlib sockets in non-blocking mode: the pump's handlers
(engarde.net.pump) call recvfrom_into/sendto directly, and the pump waits in epoll_wait when the
kernel has nothing more for them.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Any

import trio

from engarde.config import parse_host_port
from engarde.errors import StartupError

BUFFER_BYTES = 4 * 1024 * 1024  # socket buffers: absorb bursts on slow links
RECV_BYTES = 65536  # larger than any UDP payload: never truncate
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
PKTINFO_ANC_BYTES = socket.CMSG_SPACE(20) * 2


class SocketSetupError(StartupError):
    """A socket could not be made. The message names what, where and why; `errno_name` too."""

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        self.errno = err
        self.errno_name = errno.errorcode.get(err, "") if err is not None else ""


def describe_os_error(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, "") if exc.errno is not None else ""
    text = exc.strerror or str(exc)
    hint = ""
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = " (missing privilege: run as root or grant CAP_NET_BIND_SERVICE/CAP_NET_RAW)"
    elif exc.errno == errno.EADDRINUSE:
        hint = " (another program already uses this address and port)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = " (no interface on this machine has that address)"
    return f"{text} [{name}]{hint}" if name else f"{text}{hint}"


def set_buffers(sock: socket.socket, size: int = BUFFER_BYTES) -> None:
    """Multi-MB buffers. As root the FORCE variants ignore net.core.[rw]mem_max."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def family_of(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def open_listen_socket(
    text: str, *, what: str, pktinfo: bool = False, reuseport: bool = False
) -> socket.socket:
    """Bind a non-blocking UDP socket to HOST:PORT. Raises SocketSetupError.

    With pktinfo=True (a wildcard address on a server), the socket reports each datagram's
    destination address, so replies can leave from the address the client sent to. With
    reuseport=True, a successor can bind the same address while this socket serves
    (engarde.net.handover decides which of them receives).
    """
    host, port = parse_host_port(text, what=what)
    family = family_of(host)
    bind_host = host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_buffers(sock)
        if family == socket.AF_INET6 and is_wildcard(host):
            # "[::]:port" serves IPv4 too (as ::ffff:a.b.c.d), whatever net.ipv6.bindv6only says
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if pktinfo:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind_host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SocketSetupError(
            f"cannot listen on {text} ({what}): {describe_os_error(exc)}", exc.errno
        ) from exc
    return sock


def open_uplink_socket(ifname: str, source_ip: str, port: int = 0) -> socket.socket:
    """A socket whose datagrams leave through `ifname` from `source_ip`, whatever the routes say.

    SO_BINDTODEVICE picks the egress interface (binding the address alone does not); the first
    SO_BINDTODEVICE on a socket needs no CAP_NET_RAW on kernels >= 5.7. `port` is a wish: if it
    is taken, any port is used. Raises SocketSetupError.
    """
    family = family_of(source_ip)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # No SO_REUSEADDR: with it a stale socket could share the port and steal the replies.
        # IP_FREEBIND (IPv6 sockets honour it too): the kernel announces a new address
        # (RTM_NEWADDR) a moment before the address becomes bindable; we react inside that
        # window, and bind() would fail with EADDRNOTAVAIL. The address is on the interface, so
        # binding to it early is right.
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode() + b"\0")
        set_buffers(sock)
        scope: tuple[int, ...] = ()  # link-local IPv6 needs its interface: (flowinfo, scope)
        if family == socket.AF_INET6 and ipaddress.ip_address(source_ip).is_link_local:
            scope = (0, socket.if_nametoindex(ifname))
        try:
            sock.bind((source_ip, port, *scope))
        except OSError as exc:
            if not port or exc.errno != errno.EADDRINUSE:
                raise
            sock.bind((source_ip, 0, *scope))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SocketSetupError(
            f"{ifname}: cannot open uplink socket from {source_ip}: {describe_os_error(exc)}",
            exc.errno,
        ) from exc
    return sock


def open_upstream_socket(dst: tuple[str, int], *, buffer_bytes: int | None = None) -> socket.socket:
    """A server socket towards the local WireGuard, connected so replies are filtered (one per
    client, the lobby, probes). Raises SocketSetupError (e.g. EMFILE: out of descriptors)."""
    sock = socket.socket(family_of(dst[0]), socket.SOCK_DGRAM)
    try:
        set_buffers(sock, buffer_bytes or BUFFER_BYTES)
        sock.connect(dst)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SocketSetupError(
            f"cannot reach WireGuard at {dst[0]}:{dst[1]}: {describe_os_error(exc)}", exc.errno
        ) from exc
    return sock


async def resolve_udp(text: str, *, what: str, family: str | None = None) -> tuple[Any, ...]:
    """HOST:PORT -> a socket address: (ip, port) for IPv4, (ip, port, flowinfo, scope_id) for
    IPv6, exactly as a socket of that family reports its sources (so a source compares with it
    as it is; a zone like "%eth1" becomes the scope id).

    `family` "ipv4" / "ipv6": only that family will do (a path's socket has one); None: any,
    IPv4 preferred. Raises SocketSetupError when the name does not resolve to that family.
    """
    return (await resolve_udp_all(text, what=what, family=family))[0]


async def resolve_udp_all(
    text: str, *, what: str, family: str | None = None
) -> list[tuple[Any, ...]]:
    """Like resolve_udp, every address the name has (IPv4 first, then the resolver's order;
    never empty). Host names are resolved in a worker thread (trio's getaddrinfo)."""
    host, port = parse_host_port(text, what=what)
    if not host:  # ":PORT" means this machine
        host = "::1" if family == "ipv6" else "127.0.0.1"
    wanted = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}.get(family or "", 0)
    numeric = _is_ip(host)
    try:
        if numeric:
            infos = socket.getaddrinfo(
                host, port, wanted, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST
            )
        else:
            infos = await trio.socket.getaddrinfo(host, port, wanted, socket.SOCK_DGRAM)
    except OSError as exc:
        if numeric:
            raise SocketSetupError(
                f"{text} ({what}) is not an {family or 'IP'} address: {exc}"
            ) from exc
        raise SocketSetupError(f"cannot resolve {text} ({what}): {exc}") from exc
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    if not infos:
        raise SocketSetupError(f"cannot resolve {text} ({what}): no {family or ''} addresses")
    found: list[tuple[Any, ...]] = []
    for info in infos:
        sockaddr: tuple[Any, ...] = tuple(info[4])
        address = (str(sockaddr[0]), int(sockaddr[1]), *sockaddr[2:])
        if address not in found:
            found.append(address)
    return found


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def destination_of(ancdata: list[tuple[int, int, bytes]]) -> bytes | None:
    """The raw local address a datagram was sent to, from IP_PKTINFO / IPV6_PKTINFO."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return data[8:12]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 16:
            return data[:16]
    return None


def reply_ancdata(local: bytes) -> list[tuple[int, int, bytes]]:
    """Ancillary data that makes a reply leave from `local` (4 or 16 raw address bytes)."""
    if len(local) == 4:
        return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, local, bytes(4)))]
    return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("=16sI", local, 0))]
