"""Which requests the dashboard answers at all: its own names only (DNS rebinding), no state
changes from other sites' pages, and a request budget per client address.

Host allow-list. A page on evil.example whose name the attacker re-points at 127.0.0.1 (DNS
rebinding) reaches the dashboard with ``Host: evil.example``, and the browser then treats the
answers as the attacker's own (same origin): it could read the status and send commands. So
every request's Host must name the dashboard itself: ``localhost`` (and ``*.localhost``), a
loopback address, the listen address, the machine's host name, an address of this machine (the
one the connection came in on, or any in /proc/net), or a name listed in
``webManager.allowedHosts`` ("*": no check, e.g. behind a reverse proxy that checks it).
Anything else gets 421. A request without Host (HTTP/1.0) is not from a browser and passes.

Cross-site commands. A state-changing request (exclusions, reset, reload) is refused with 403
when the browser marks it as coming from another site: ``Sec-Fetch-Site: cross-site``, or an
``Origin`` that is not one of the allowed hosts above (``null`` included). Scripts and the
original's LuCI app (wget, GET /api/v1/reset-exclusions) send neither header and keep working;
a LuCI page on the router (another port of an allowed host) is allowed.

Pacing per client address (engarde.web.pacing): each address has its own budget, and requests
that fail the checks above or the authentication draw from a separate budget of that address, so
neither a flood from elsewhere nor unauthenticated guessing from the same address can make an
authenticated request wait or get 429. At most `MAX_PACED_ADDRESSES` budgets are kept (the
least recently used one is forgotten: it only means a fresh burst for that address).
"""

from __future__ import annotations

import ipaddress
import math
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit

from engarde.web.pacing import Pacer

MAX_PACED_ADDRESSES = 1024
_ANY = "*"


def host_name(value: str | None) -> str | None:
    """The host part of a Host header or an Origin (lower case, IPv6 without brackets), or None
    when there is none or it does not parse."""
    if not value:
        return None
    text = value if "//" in value else f"//{value}"
    try:
        name = urlsplit(text).hostname
    except ValueError:
        return None
    return name or None


def machine_addresses() -> frozenset[str]:
    """The IP addresses of this machine (its network namespace), from /proc (Linux): the local
    routes of /proc/net/fib_trie (IPv4) and /proc/net/if_inet6."""
    out: set[str] = set()
    try:
        with open("/proc/net/fib_trie") as f:
            last = ""
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif text == "/32 host LOCAL" and last:
                    out.add(last)
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if fields:
                    out.add(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    except (OSError, ValueError):
        pass
    return frozenset(out)


class LocalAddresses:
    """machine_addresses(), read again on a miss at most every `refresh_s` (addresses come and
    go; a flood of requests naming foreign addresses must not read /proc each time)."""

    def __init__(
        self,
        read: Callable[[], frozenset[str]] = machine_addresses,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float = 5.0,
    ) -> None:
        self.read = read
        self.clock = clock
        self.refresh_s = refresh_s
        self._known: frozenset[str] = frozenset()
        self._read_at = -math.inf

    def __call__(self, name: str) -> bool:
        try:
            ip = ipaddress.ip_address(name.partition("%")[0])
        except ValueError:
            return False
        if ip.is_loopback:
            return True
        if ip.is_unspecified or ip.is_multicast:
            return False
        text = str(ip)
        if text in self._known:
            return True
        now = self.clock()
        if now - self._read_at >= self.refresh_s:
            self._known, self._read_at = self.read(), now
        return text in self._known


class HostCheck:
    """The dashboard's own names: listen host, localhost, this machine; plus ``allowedHosts``."""

    def __init__(self, listen_host: str = "", *, local: Callable[[str], bool] | None = None):
        host = listen_host.strip("[]").lower()
        self.listen_host = "" if host in ("", "0.0.0.0", "::") else host
        self.local = local if local is not None else LocalAddresses()
        self.hostname = socket.gethostname().lower()

    def allowed(self, name: str | None, extra: list[str], via: str | None = None) -> bool:
        """``name``: a host from host_name(); ``extra``: webManager.allowedHosts; ``via``: the
        local address the connection came in on."""
        if name is None:
            return False
        if _ANY in extra or name in extra:
            return True
        if name == "localhost" or name.endswith(".localhost"):
            return True
        if name in (self.listen_host, self.hostname) or (via is not None and name == via):
            return True
        return _is_loopback(name) or self.local(name)

    def host_ok(self, host: str | None, extra: list[str], via: str | None = None) -> bool:
        """A request's Host header (None: absent, allowed)."""
        if host is None:
            return True
        return self.allowed(host_name(host), extra, via)

    def cross_site(
        self,
        origin: str | None,
        sec_fetch_site: str | None,
        extra: list[str],
        via: str | None = None,
    ) -> bool:
        """True when a browser says this request comes from a page of another site."""
        if sec_fetch_site is not None and sec_fetch_site.strip().lower() == "cross-site":
            return True
        if origin is None:
            return False
        if origin.strip().lower() == "null":
            return True
        return not self.allowed(host_name(origin), extra, via)


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name.partition("%")[0]).is_loopback
    except ValueError:
        return False


class PacerPool:
    """One Pacer per key (client address and whether the request passed the checks)."""

    def __init__(
        self, make: Callable[[], Pacer] = Pacer, max_keys: int = MAX_PACED_ADDRESSES
    ) -> None:
        self.make = make
        self.max_keys = max_keys
        self._pacers: OrderedDict[tuple[str, bool], Pacer] = OrderedDict()

    def reserve(self, key: tuple[str, bool], now: float) -> float | None:
        pacer = self._pacers.get(key)
        if pacer is None:
            if len(self._pacers) >= self.max_keys:
                self._pacers.popitem(last=False)
            pacer = self._pacers[key] = self.make()
        else:
            self._pacers.move_to_end(key)
        return pacer.reserve(now)

    def __len__(self) -> int:
        return len(self._pacers)
