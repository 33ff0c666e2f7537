"""Veths from the host's namespace into lab namespaces, so a browser on the machine can open the
dashboards of the engarde processes running inside (``make demo``).

Theory of operation
-------------------
:class:`HostLinks` claims one /24, ``172.30.N.0/24``, for the whole run. ``N`` is the first one
that is *free*: no IPv4 address or route of the host's namespace overlaps it (a default route
aside), and no other run on this machine holds its lock, ``/run/engarde-host-link/172.30.N.lock``,
locked with ``flock(2)`` for as long as the links exist (the kernel drops the lock however the
holder dies, so a killed demo never blocks the next one; a stale interface it left behind keeps
its /24 "not free" by its addresses).

Each :meth:`HostLinks.add` carves the next /30 out of that /24 (at most 64) and makes one veth:

    ===================  ==================  ===========================  ==================
    link s (0, 1, ...)   interface           address                      routes
    ===================  ==================  ===========================  ==================
    host end             ``egh{N}s{s}``      ``172.30.N.(4s+1)/30``       the /30 only
    namespace end        ``tohost``          ``172.30.N.(4s+2)/30``       the /30 only
    ===================  ==================  ===========================  ==================

Nothing else is routed: neither end gets a default route or any other route, IPv6 is disabled on
both ends (no link-local address, no router or neighbour solicitations), and IPv4 forwarding is
off on the host end, so the host forwards nothing the namespace sends even where forwarding is on
globally. The host reaches the namespace end's address and nothing behind it; the namespace
reaches the host end's address and nothing else. Distinct /30s per link mean two namespaces of one
run cannot reach each other through the host either.

An engarde client in that namespace sees ``tohost`` as an interface like any other: exclude it
(``excludedInterfaces``), or it becomes an uplink with no route to the server.

:meth:`HostLinks.close` deletes every host end (which deletes the namespace end too), then
removes and unlocks the lock file; it is idempotent and also runs at exit. Deleting a lab
namespace deletes its veth as well, so the order of the two cleanups does not matter.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lab.netns import LabError, _run

SUPERNET = ipaddress.ip_network("172.30.0.0/16")
LOCK_DIR = Path("/run/engarde-host-link")
NS_IFNAME = "tohost"
MAX_LINKS = 64  # /30s in a /24
_open: set[HostLinks] = set()


@dataclass(frozen=True)
class HostLink:
    """One veth between the host's namespace and ``ns``."""

    ns: str
    host_if: str
    ns_if: str
    host_ip: str  # the host end's address
    ns_ip: str  # the namespace end's address: what a service in ``ns`` listens on for the host
    subnet: str  # the /30 both ends share

    def url(self, port: int, path: str = "/") -> str:
        """``http://<namespace end>:<port><path>``: a service in ``ns``, as the host reaches it."""
        return f"http://{self.ns_ip}:{port}{path}"


def _ip_json(*args: str) -> list[dict[str, object]]:
    out = _run(["ip", "-j", *args]).stdout.strip()
    data = json.loads(out) if out else []
    return data if isinstance(data, list) else []


def used_networks() -> list[ipaddress.IPv4Network]:
    """The host namespace's IPv4 addresses (with their prefixes) and routes, default aside."""
    used: list[ipaddress.IPv4Network] = []
    for link in _ip_json("-4", "addr", "show"):
        infos = link.get("addr_info", [])
        for info in infos if isinstance(infos, list) else []:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                net = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network
                if isinstance(net, ipaddress.IPv4Network):
                    used.append(net)
    for route in _ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst")
        if not isinstance(dst, str) or dst == "default":
            continue
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(dst, strict=False)
            if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
                used.append(net)
    return used


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another process holds it.

    Retries when the file was removed (by its previous holder) between open and lock, so the
    lock held is always on the file at ``path``.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


class HostLinks:
    """Veths from the host into lab namespaces, in one free ``172.30.N.0/24`` (see the module).

    Use as a context manager or call :meth:`close`. Raises LabError when no /24 is free or a
    command fails (what was made so far is deleted again).
    """

    def __init__(self) -> None:
        self.links: list[HostLink] = []
        self._next_slot = 0
        self._closed = False
        used = used_networks()
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for subnet in SUPERNET.subnets(new_prefix=24):
            if any(subnet.overlaps(net) for net in used):
                continue
            lock_path = LOCK_DIR / f"{subnet.network_address}.lock"
            fd = _try_lock(lock_path)
            if fd is not None:
                self.subnet = subnet
                self.third_octet = int(subnet.network_address.packed[2])
                self._lock_fd: int | None = fd
                self._lock_path = lock_path
                break
        else:
            raise LabError(f"no free /24 in {SUPERNET} for the host links")
        _open.add(self)

    def __repr__(self) -> str:
        return f"<HostLinks {self.subnet} {[link.host_if for link in self.links]}>"

    def __enter__(self) -> HostLinks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, ns: str) -> HostLink:
        """A new veth from the host into namespace ``ns``, addressed from the next free /30.

        The namespace end is ``tohost`` (one host link per namespace). Raises LabError.
        """
        if self._closed:
            raise LabError(f"{self!r} is closed")
        slot = self._next_slot
        if slot >= MAX_LINKS:
            raise LabError(f"at most {MAX_LINKS} host links per run")
        self._next_slot += 1
        subnet = list(self.subnet.subnets(new_prefix=30))[slot]
        host_ip, ns_ip = (str(subnet.network_address + n) for n in (1, 2))
        link = HostLink(
            ns=ns,
            host_if=f"egh{self.third_octet}s{slot}",
            ns_if=NS_IFNAME,
            host_ip=host_ip,
            ns_ip=ns_ip,
            subnet=str(subnet),
        )
        veth = ["type", "veth", "peer", "name", link.ns_if, "netns", ns]
        _run(["ip", "link", "add", link.host_if, *veth])
        self.links.append(link)  # from now on close() deletes it
        try:
            self._configure(link)
        except BaseException:
            self._delete(link)
            self.links.remove(link)
            raise
        return link

    def _configure(self, link: HostLink) -> None:
        ns_exec = ["ip", "netns", "exec", link.ns]
        if Path("/proc/sys/net/ipv6").is_dir():
            # Before the links go up, so that no link-local address is ever made.
            _run(["sysctl", "-qw", f"net.ipv6.conf.{link.host_if}.disable_ipv6=1"])
            _run([*ns_exec, "sysctl", "-qw", f"net.ipv6.conf.{link.ns_if}.disable_ipv6=1"])
        # The host forwards nothing that arrives from the namespace, whatever ip_forward says.
        _run(["sysctl", "-qw", f"net.ipv4.conf.{link.host_if}.forwarding=0"])
        _run(["ip", "addr", "add", f"{link.host_ip}/30", "dev", link.host_if])
        _run(["ip", "-n", link.ns, "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_if])
        _run(["ip", "link", "set", link.host_if, "up"])
        _run(["ip", "-n", link.ns, "link", "set", link.ns_if, "up"])

    def _delete(self, link: HostLink) -> str | None:
        """Delete the veth (both ends); an error message if it is still there afterwards."""
        proc = _run(["ip", "link", "del", link.host_if], check=False)
        if proc.returncode == 0:
            return None
        # Already gone (its namespace was deleted first) is fine; still there is not.
        if _run(["ip", "link", "show", link.host_if], check=False).returncode != 0:
            return None
        return f"ip link del {link.host_if}: {proc.stderr.strip()}"

    def close(self) -> None:
        """Delete every link, remove and release the lock. Idempotent; raises LabError at the
        end if a link could not be deleted (every step is attempted)."""
        if self._closed:
            return
        errors: list[str] = []
        while self.links:
            error = self._delete(self.links[-1])
            if error:
                errors.append(error)
            self.links.pop()
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self._lock_path.unlink()
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        _open.discard(self)
        self._closed = True
        if errors:
            raise LabError("; ".join(errors))


@atexit.register
def _close_all() -> None:
    for links in list(_open):
        try:
            links.close()
        except LabError as exc:
            print(f"host links: cleanup at exit: {exc}", file=sys.stderr)
