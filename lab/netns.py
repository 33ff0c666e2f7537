"""Network namespaces joined by veth "uplinks", with the knobs to break them.

Theory of operation
-------------------
A :class:`Lab` creates a *server* namespace and one or more *client* namespaces, each joined to
the server by its own veth pairs. Uplink ``i`` of client 0 is ``up{i}`` (``10.B.i.2/24``) in the
client namespace and ``sv{i}`` (``10.B.i.1/24``) in the server namespace; ``B`` is picked per lab
so that concurrent labs use distinct addresses. The server namespace also holds one *service
address* ``10.B.200.1/32`` on ``lo``, reachable from every client namespace through every uplink:
each client has one route per uplink, ``10.B.200.1 via <server end> dev up{i} metric 10+i``, so a
socket bound to ``up{i}`` with ``SO_BINDTODEVICE`` finds a route through its own uplink.
Reverse-path filtering is off in every namespace, so replies may come back through any uplink.

Several clients (:meth:`Lab.add_client`, ``Lab(n, clients=K)``, at most 8): client ``k`` is a
:class:`ClientSide` with namespace ``<client 0's>k{k}``. Its uplinks are ``up{i}`` in its own
namespace too, but their server ends are ``c{k}s{i}`` and their subnets ``10.B.(25k+i).0/24``:

    ===========  ==================  ===========  =====================================
    client       namespace           server end   uplink i addresses (client / server)
    ===========  ==================  ===========  =====================================
    0            eg<pid>c<n>         sv{i}        10.B.i.2 / 10.B.i.1 (i < 25, or < 200
                                                  while client 0 is alone)
    k = 1..7     eg<pid>c<n>k{k}     c{k}s{i}     10.B.(25k+i).2 / 10.B.(25k+i).1, i < 25
    ===========  ==================  ===========  =====================================

So every server-side name and subnet is unique in the server namespace (nftables counters there
can tell clients apart by interface name), and third octets stay below 200 (the service address)
and 250 (WireGuard: server 10.B.250.1, client k 10.B.250.(2+k)).

Uplinks are broken the ways real ones break: admin down (:meth:`ClientSide.link_down`, the kernel
flushes the routes), carrier loss with the link still admin-up (:meth:`ClientSide.set_carrier`,
sends vanish silently), the interface disappearing (:meth:`ClientSide.delete_uplink`), a silent
blackhole or random loss (:meth:`ClientSide.blackhole`, :meth:`ClientSide.drop_random`, nftables
rules in that client's namespace). Each has its inverse and touches no other client. Impairments
made with nftables match the interface *name*, so they survive deleting and re-adding the uplink;
their tables are ``inet`` ones, which see IPv4 and IPv6 alike.
``Lab`` keeps the one-client API (``lab.client_ns``, ``lab.uplinks``, ``lab.link_down(i)``, ...):
it is client 0's.

IPv6 (additive: uplinks are IPv4-only unless asked). ``Lab(n, ipv6=True)`` makes every uplink
dual-stack, ``Lab(n, families=("ipv6",))`` IPv6-only, and ``add_uplink(i, families=...)`` picks
per uplink, so one client can mix IPv4-only, IPv6-only and dual-stack uplinks. The lab owns the
ULA range ``fd00:B::/32``; each IPv4 /24 ``10.B.S.0/24`` has the IPv6 /64 ``fd00:B:S::/64``,
written with the same decimal digits (``10.137.51.2`` <-> ``fd00:137:51::2``), so the plan reads
like the IPv4 one and is just as unique per lab:

    =====================  ==========================  ===================================
    what                   IPv4                        IPv6
    =====================  ==========================  ===================================
    uplink i of client k   10.B.S.2/24 (client end)    fd00:B:S::2/64 (client end)
    (S = 25k+i)            10.B.S.1/24 (server end)    fd00:B:S::1/64 (server end)
    service address (lo)   10.B.200.1/32               fd00:B:200::1/128 (added with the
                                                       lab's first IPv6 uplink)
    route per uplink       10.B.200.1 via 10.B.S.1     fd00:B:200::1 via fd00:B:S::1
                           dev up{i} metric 10+i       dev up{i} metric 10+i
    WireGuard tunnel       10.B.250.1 / .(2+k), /24    fd00:B:250::1 / ::(2+k), /64 (only
                                                       with ``tunnel_ipv6=True``)
    =====================  ==========================  ===================================

Duplicate address detection is off in every lab namespace (``accept_dad=0`` for ``all`` and
``default``, and the lab adds its own IPv6 addresses with ``nodad``), so they are usable at once.
:meth:`ClientSide.add_address` with ``dad=True`` turns it back on for one interface, leaving the
new address *tentative* for 1-2 s; :meth:`ClientSide.remove_address`,
:meth:`ClientSide.deprecate_address` and :meth:`ClientSide.addresses` (the kernel's flags:
tentative, deprecated, dadfailed, ...) cover address rotation on a link.

On admin down the kernel keeps an interface's IPv4 addresses but deletes *all* its IPv6 ones,
link-local included (``keep_addr_on_down`` is 0 by default and the lab leaves it so, as on real
hosts): :meth:`ClientSide.link_up` re-adds the uplink's own IPv6 address and route, and
:meth:`ClientSide.set_carrier` re-adds the server end's (its carrier loss is the server end going
admin-down). Addresses added with :meth:`ClientSide.add_address` are not restored.

:class:`WireGuardPair` runs wireguard-go in the server namespace and client 0's, each the other's
only peer; :class:`WireGuardHub` runs one server interface with a peer per client namespace.
wireguard-go listens on both families, so an Endpoint may be ``[fd00:B:200::1]:port`` (see
:func:`host_port`). :func:`ping` and :meth:`Lab.start_ping` measure what gets through, to IPv4 or
IPv6 addresses.

Everything the lab starts is stopped by PID, and everything it creates is deleted on
:meth:`Lab.close` (context-manager exit, ``atexit``, and SIGTERM turned into KeyboardInterrupt when
nobody else handles SIGTERM). The lab never touches a namespace or process it did not create.
Traffic only goes to loopback or to addresses inside the lab's own namespaces.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import itertools
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository root; ``python -m lab.udp_tools`` and ``python -m engarde`` run from here."""

WG_RUN_DIR = Path("/var/run/wireguard")
WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
SERVICE_OCTET = 200  # 10.B.200.1: the service address on the server's lo
TUNNEL_OCTET = 250  # 10.B.250.0/24: WireGuard tunnel addresses
MAX_UPLINKS = SERVICE_OCTET  # uplink i uses 10.B.i.0/24, which must not reach the two above
MAX_CLIENTS = 8  # client namespaces per lab; client k's tunnel address is 10.B.250.(2+k)
UPLINKS_PER_CLIENT = MAX_UPLINKS // MAX_CLIENTS  # client k's uplink i uses 10.B.(25k+i).0/24
STOP_TIMEOUT_S = 3.0

_NO_RP_FILTER = "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0"
# IPv6 addresses usable at once, link-local ones included; add_address(dad=True) opts back in.
_NO_DAD = "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0"
_LIFETIME_FOREVER = 0xFFFFFFFF  # what `ip -j addr` reports for "forever"

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")
"""Every address family an uplink may carry, in the order the lab lists them."""

_counter = itertools.count()
_open_labs: set[Lab] = set()
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


class LabError(RuntimeError):
    """A lab command failed; the message holds the command line and its stderr."""


class LabUnavailable(LabError):
    """This machine cannot run the lab (not root, no namespaces, missing tools)."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout_s: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing text output.

    Raises LabError when ``check`` and the exit code is not zero, or on timeout.
    """
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{shlex.join(argv)}: no answer after {timeout_s} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"{shlex.join(argv)}: {exc.strerror}: {exc.filename}") from exc
    if check and proc.returncode != 0:
        raise LabError(
            f"{shlex.join(argv)} failed with exit code {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if this process dies without cleaning up
    # (SIGKILL), the children still get SIGTERM. Survives exec, and `ip netns exec` execs.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """Stop one process by PID: SIGTERM, then SIGKILL after ``timeout_s``. Returns its exit code."""
    stop_processes([proc], timeout_s)
    return proc.returncode


def stop_processes(
    procs: Sequence[subprocess.Popen[Any]], timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """SIGTERM every process still running, wait up to ``timeout_s`` in all, SIGKILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


class AdoptedProcess:
    """A process this one did not start (e.g. the successor an engarde process spawned on
    SIGUSR2), watched through a pidfd so that :class:`Lab` can stop it by PID like its own.

    Not our child: its exit code is unknown; ``returncode`` is 0 once it is gone.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._fd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:
            self.returncode = 0
            os.close(self._fd)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.poll() is None and not select.select([self._fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0)
        return self.poll() or 0

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._fd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _install_sigterm_handler() -> None:
    # A plain `kill` of pytest or of the demo must still tear the namespaces down. Only when
    # nobody else chose a SIGTERM behaviour; KeyboardInterrupt makes pytest stop the session
    # and run fixture teardown.
    if _in_main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


@atexit.register
def _close_all_labs() -> None:
    for lab in list(_open_labs):
        try:
            lab.close()
        except LabError as exc:
            print(f"lab: cleanup at exit: {exc}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Can this machine run the lab?

_availability: dict[bool, tuple[bool, str]] = {}


def lab_available(wireguard: bool = True) -> tuple[bool, str]:
    """Whether a Lab (and, with ``wireguard``, a WireGuardPair) can run here, and why not.

    Checks root, the ``ip``/``nft``/``ping`` (and ``wireguard-go``/``wg``) commands,
    ``/dev/net/tun``, and really creates and deletes a probe namespace. Cached per process.
    """
    if wireguard not in _availability:
        _availability[wireguard] = _probe(wireguard)
    return _availability[wireguard]


def _probe(wireguard: bool) -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root (network namespaces, veth, nftables); run the tests as root"
    tools = ["ip", "nft", "ping"] + (["wireguard-go", "wg"] if wireguard else [])
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return False, (
            f"missing commands: {', '.join(missing)} (packages iproute2, nftables, "
            "iputils-ping, wireguard-go, wireguard-tools)"
        )
    if wireguard and not Path("/dev/net/tun").exists():
        return False, "no /dev/net/tun: wireguard-go cannot create its interface"
    probe = f"eg{os.getpid()}p{next(_counter)}"
    try:
        _run(["ip", "netns", "add", probe], timeout_s=10)
    except LabError as exc:
        return False, f"cannot create a network namespace: {exc}"
    try:
        _run(["ip", "netns", "del", probe], timeout_s=10)
    except LabError as exc:
        return False, f"cannot delete the probe network namespace: {exc}"
    return True, ""


def _has_ipv6() -> bool:
    """Whether this kernel has IPv6 (not booted with ``ipv6.disable=1``)."""
    return Path("/proc/sys/net/ipv6").is_dir()


def require_lab(wireguard: bool = True) -> None:
    """Raise LabUnavailable with the reason when :func:`lab_available` says no."""
    ok, reason = lab_available(wireguard)
    if not ok:
        raise LabUnavailable(reason)


# ---------------------------------------------------------------------------------------------
# Addresses and families


def _is_ipv6(addr: str) -> bool:
    """Whether ``addr`` (an address, optionally ``/prefix``) is an IPv6 literal."""
    try:
        return ipaddress.ip_interface(addr).version == 6
    except ValueError:
        return False  # a host name: let the tool decide


def host_port(addr: str, port: int) -> str:
    """``"10.1.2.3:51820"`` or ``"[fd00:1::2]:51820"``: an endpoint as ``wg`` and engarde take."""
    return f"[{addr}]:{port}" if _is_ipv6(addr) else f"{addr}:{port}"


def _families(families: str | Sequence[str]) -> tuple[Family, ...]:
    """Validate a choice of families (``"ipv6"``, ``("ipv4", "ipv6")``, ...), in FAMILIES order.

    Raises ValueError for an empty choice or an unknown family.
    """
    wanted = {families} if isinstance(families, str) else set(families)
    unknown = wanted - set(FAMILIES)
    if unknown or not wanted:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {families!r}")
    return tuple(family for family in FAMILIES if family in wanted)


def _ipv6_in(prefix: str, subnet: int, host: int) -> str:
    """Host ``host`` of ``fd00:B:S::/64``, the /64 that mirrors ``10.B.S.0/24``, canonical form.

    ``prefix`` is the lab's ``fd00:B``; ``S`` is written with the IPv4 octet's decimal digits.
    """
    return str(ipaddress.IPv6Address(f"{prefix}:{subnet}::{host:x}"))


@dataclass(frozen=True)
class AddressInfo:
    """One address of an interface as the kernel reports it (``ip -j addr show``)."""

    address: str  # canonical form, e.g. "fd00:137:1::2" or "10.137.1.2"
    prefix_len: int
    family: Family
    scope: str  # "global", "link", "host"
    flags: frozenset[str]  # the kernel's: "tentative", "deprecated", "dadfailed", "nodad", ...
    preferred_lft_s: int | None  # None: forever
    valid_lft_s: int | None

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix_len}"

    @property
    def tentative(self) -> bool:
        """Duplicate address detection still running: the address cannot be bound or used."""
        return "tentative" in self.flags

    @property
    def deprecated(self) -> bool:
        """Preferred lifetime over: still valid, but not chosen as a source for new traffic."""
        return "deprecated" in self.flags

    @property
    def dadfailed(self) -> bool:
        """Duplicate address detection found another owner: the address is unusable."""
        return "dadfailed" in self.flags


def _lifetime(value: Any) -> int | None:
    return None if value is None or value == _LIFETIME_FOREVER else int(value)


def _parse_addresses(ip_json: str) -> list[AddressInfo]:
    """The addresses in ``ip -j addr show dev X`` output, in the kernel's order."""
    result = []
    for link in json.loads(ip_json):
        for info in link.get("addr_info", []):
            if info.get("family") not in ("inet", "inet6"):
                continue
            result.append(
                AddressInfo(
                    address=str(ipaddress.ip_address(info["local"])),
                    prefix_len=int(info["prefixlen"]),
                    family="ipv6" if info["family"] == "inet6" else "ipv4",
                    scope=str(info.get("scope", "")),
                    flags=frozenset(key for key, value in info.items() if value is True),
                    preferred_lft_s=_lifetime(info.get("preferred_life_time")),
                    valid_lft_s=_lifetime(info.get("valid_life_time")),
                )
            )
    return result


# ---------------------------------------------------------------------------------------------
# ping


@dataclass(frozen=True)
class PingResult:
    """What one ``ping`` run saw. Sequence numbers start at 1 (iputils)."""

    sent: int
    received: int  # distinct sequence numbers answered
    lost: list[int]  # sequence numbers never answered
    duplicates: int = 0
    errors: str = ""  # ping's stderr, e.g. "ping: sendmsg: Network is unreachable"
    replied_at: dict[int, float] = field(default_factory=dict)  # seq -> time.time() of reply

    def __str__(self) -> str:
        lost = f", lost seq {seq_ranges(self.lost)}" if self.lost else ""
        return f"sent {self.sent}, received {self.received}, lost {len(self.lost)}{lost}"


_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")
_REPLY = re.compile(r"^(?:\[(\d+\.\d+)\] )?\d+ bytes from .*icmp_seq=(\d+)", re.MULTILINE)


def parse_ping_output(stdout: str, stderr: str = "", interrupted: bool = False) -> PingResult:
    """Parse iputils ``ping -n [-D]`` output. A run that sent nothing gives ``sent == 0``.

    ``interrupted``: ping was stopped early, so its last request, if unanswered, may still have
    been on its way; it is then not counted as sent (nor as lost).
    """
    summary = _SUMMARY.search(stdout)
    sent = int(summary.group(1)) if summary else 0
    replied_at: dict[int, float] = {}
    duplicates = 0
    for match in _REPLY.finditer(stdout):
        seq = int(match.group(2))
        if seq in replied_at:
            duplicates += 1
        else:
            replied_at[seq] = float(match.group(1) or "nan")
    if interrupted and sent and sent not in replied_at:
        sent -= 1
    # icmp_seq is 16 bits: runs longer than 65535 pings are not supported.
    lost = [seq for seq in range(1, sent + 1) if seq not in replied_at]
    return PingResult(sent, len(replied_at), lost, duplicates, stderr.strip(), replied_at)


def _ping_cmd(
    addr: str,
    count: int,
    interval_s: float,
    timeout_s: float,
    interface: str | None,
    size: int | None = None,
) -> list[str]:
    cmd = ["ping", "-n", "-D", "-c", str(count), "-i", f"{interval_s:g}", "-W", f"{timeout_s:g}"]
    if size is not None:
        cmd += ["-s", str(size), "-M", "do"]  # this payload size, never fragmented
    if _is_ipv6(addr):
        cmd.append("-6")  # iputils would guess it from the literal too; say it
    if interface is not None:
        cmd += ["-I", interface]  # SO_BINDTODEVICE, as engarde does
    return [*cmd, addr]


def ping(
    ns: str,
    addr: str,
    count: int = 3,
    interval_s: float = 0.05,
    timeout_s: float = 1.0,
    *,
    interface: str | None = None,
    size: int | None = None,
) -> PingResult:
    """Ping ``addr`` (IPv4 or IPv6) from namespace ``ns`` and wait for the result.

    ``size``: the ICMP payload in bytes, sent unfragmented (default: ping's 56).

    ``timeout_s`` is how long ping waits for a late reply after the last request. ``interface``
    pins the requests to one interface (``ping -I``). Never raises for lost packets or
    unreachable networks (see ``PingResult.errors``); raises LabError only if ping hangs.
    """
    cmd = _ping_cmd(addr, count, interval_s, timeout_s, interface, size)
    argv = ["ip", "netns", "exec", ns, *cmd]
    proc = _run(argv, check=False, timeout_s=count * interval_s + timeout_s + 10)
    return parse_ping_output(proc.stdout, proc.stderr)


class PingProcess:
    """A ping running in the background (see :meth:`Lab.start_ping`); output goes to a file."""

    def __init__(self, proc: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.proc = proc
        self._out = out
        self._err = err

    def wait(self, timeout_s: float | None = None) -> PingResult:
        """Wait for ping to finish its count; raises subprocess.TimeoutExpired after timeout_s."""
        self.proc.wait(timeout=timeout_s)
        return self.result()

    def stop(self) -> PingResult:
        """Interrupt ping now (SIGINT, it prints its summary) and return what it saw.

        The last request, if still unanswered, is left out (it had no time to come back).
        """
        interrupted = self.proc.poll() is None
        if interrupted:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.result(interrupted)

    def remove_output(self) -> None:
        """Delete the output files (after :meth:`result`): a long run pings in many rounds."""
        for path in (self._out, self._err):
            path.unlink(missing_ok=True)

    def output(self) -> str:
        """What ping printed so far (one timestamped line per reply: for failure messages)."""
        return self._out.read_text(errors="replace")

    def result(self, interrupted: bool = False) -> PingResult:
        """Parse what ping wrote so far (complete once it has exited)."""
        out, err = self._out.read_text(errors="replace"), self._err.read_text(errors="replace")
        return parse_ping_output(out, err, interrupted)


def seq_ranges(seqs: Sequence[int]) -> str:
    """[1, 2, 3, 7] -> "1-3,7" for readable loss reports."""
    runs: list[list[int]] = []
    for seq in seqs:
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


# ---------------------------------------------------------------------------------------------
# The lab


@dataclass(frozen=True)
class Uplink:
    """One veth uplink: ``name`` in the client namespace, ``peer_name`` in the server one.

    ``client_ip``/``server_ip`` are its IPv4 addresses (None on an IPv6-only uplink),
    ``client_ip6``/``server_ip6`` its IPv6 ones (None unless it carries IPv6).
    """

    index: int
    name: str
    peer_name: str
    client_ip: str | None
    server_ip: str | None
    metric: int
    prefix_len: int = 24
    client_ip6: str | None = None
    server_ip6: str | None = None
    prefix_len6: int = 64

    @property
    def families(self) -> tuple[Family, ...]:
        """The address families this uplink carries, e.g. ``("ipv4", "ipv6")``."""
        return tuple(
            family
            for family, ip in zip(FAMILIES, (self.client_ip, self.client_ip6), strict=True)
            if ip is not None
        )

    def client_addr(self, family: Family) -> str | None:
        """The client end's address of ``family`` (None if the uplink does not carry it)."""
        return self.client_ip if family == "ipv4" else self.client_ip6

    def server_addr(self, family: Family) -> str | None:
        """The server end's address of ``family`` (None if the uplink does not carry it)."""
        return self.server_ip if family == "ipv4" else self.server_ip6

    def host6(self, host: int) -> str:
        """Address ``host`` of this uplink's IPv6 /64, e.g. ``host6(3)`` -> ``fd00:B:S::3``.

        For address rotation tests (:meth:`ClientSide.add_address`). Raises ValueError if the
        uplink carries no IPv6.
        """
        if self.client_ip6 is None:
            raise ValueError(f"{self.name} carries no IPv6")
        network = ipaddress.IPv6Network(f"{self.client_ip6}/{self.prefix_len6}", strict=False)
        return str(network[host])


class ClientSide:
    """One client namespace of a :class:`Lab` and its uplinks into the server namespace.

    Client ``k`` (``lab.clients[k]``) has uplinks ``up{i}`` in its own namespace ``ns``; their
    server ends are ``sv{i}`` for client 0 and ``c{k}s{i}`` for the others (see
    :meth:`server_ifname`). Every uplink gets a route to the lab's service address, so
    ``ping -I up{i}`` from any client reaches the server through that client's uplink ``i``.

    The impairment methods act on this client's uplinks only: the nftables tables live in this
    client's namespace and the server ends have names no other client uses.

    Each uplink carries IPv4, IPv6 or both (:attr:`Uplink.families`, chosen in
    :meth:`add_uplink`). :meth:`add_address`, :meth:`remove_address`, :meth:`deprecate_address`,
    :meth:`addresses` and :meth:`wait_address_ready` act on one end of one uplink, for tests of
    address rotation and duplicate address detection.

    Made by :class:`Lab` (client 0) and :meth:`Lab.add_client`; not meant to be built directly.
    """

    def __init__(self, lab: Lab, index: int, ns: str) -> None:
        self.lab = lab
        self.index = index
        self.ns = ns
        self.uplinks: list[Uplink] = []  # every uplink ever defined, by index, deleted ones too

    def __repr__(self) -> str:
        return f"<ClientSide {self.index} {self.ns} {len(self.uplinks)} uplinks>"

    @property
    def max_uplinks(self) -> int:
        """How many uplinks this client may define: 200 alone in its lab, 25 among several."""
        if self.index == 0 and len(self.lab.clients) <= 1:
            return MAX_UPLINKS
        return UPLINKS_PER_CLIENT

    def server_ifname(self, i: int) -> str:
        """The server-side name of uplink ``i``: ``sv{i}`` for client 0, ``c{k}s{i}`` otherwise.

        Defined for any ``i``, whether the uplink exists or not (nftables matches names).
        """
        return f"sv{i}" if self.index == 0 else f"c{self.index}s{i}"

    def _subnet(self, i: int) -> int:
        # Client k owns the third octets 25k .. 25k+24; client 0 keeps 10.B.i as it always had.
        # The IPv6 /64 fd00:B:S:: mirrors 10.B.S.0/24.
        return self.index * UPLINKS_PER_CLIENT + i

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab._ip(self.ns, *args, check=check)

    def _nft(self, script: str) -> None:
        self.lab.run(self.ns, "nft", "-f", "-", input=script)

    # -- uplinks -------------------------------------------------------------------------------

    def uplink(self, i: int) -> Uplink:
        """The definition of uplink ``i`` (it may currently be deleted)."""
        return self.uplinks[i]

    def _plan_uplink(self, i: int, families: tuple[Family, ...]) -> Uplink:
        octet, subnet = self.lab.octet, self._subnet(i)
        v4, v6 = "ipv4" in families, "ipv6" in families
        prefix6 = self.lab.prefix6
        return Uplink(
            i,
            f"up{i}",
            self.server_ifname(i),
            f"10.{octet}.{subnet}.2" if v4 else None,
            f"10.{octet}.{subnet}.1" if v4 else None,
            metric=10 + i,
            client_ip6=_ipv6_in(prefix6, subnet, 2) if v6 else None,
            server_ip6=_ipv6_in(prefix6, subnet, 1) if v6 else None,
        )

    def _define_uplink(self, i: int, families: tuple[Family, ...] | None) -> Uplink:
        if i < len(self.uplinks):
            up = self.uplinks[i]
            return up if families in (None, up.families) else self._plan_uplink(i, families)
        if i != len(self.uplinks) or i >= self.max_uplinks:
            raise ValueError(
                f"next new uplink index is {len(self.uplinks)} (at most {self.max_uplinks} "
                f"uplinks for client {self.index}), got {i}"
            )
        up = self._plan_uplink(i, families or self.lab.families)
        self.uplinks.append(up)
        return up

    def add_uplink(self, i: int, families: str | Sequence[str] | None = None) -> Uplink:
        """Create uplink ``i``: a new one (``i == len(uplinks)``) or one deleted earlier.

        ``families`` (``("ipv4",)``, ``("ipv6",)`` or both) are the address families it carries;
        by default the lab's (``Lab(families=...)``) for a new uplink, and the same as before
        for one re-added (giving them redefines it). The veth pair gets its addresses, is brought
        up on both ends and the client gets its route(s) to the service address; returns once
        the IPv6 addresses are usable. Raises ValueError for a bad index or family, LabError if
        the uplink exists (or its IPv6 addresses are not usable after 5 s).
        """
        self.lab._check_open()
        up = self._define_uplink(i, None if families is None else _families(families))
        c, s = self.ns, self.lab.server_ns
        # gso_max_segs 1: like a real NIC, the veth puts each datagram on the "wire" on its own.
        # Otherwise a veth hands engarde's UDP_SEGMENT runs to the other namespace whole, and
        # tcpdump and nftables there see one packet for many datagrams.
        self._ip(
            "link", "add", up.name, "gso_max_segs", "1", "type", "veth",
            "peer", "name", up.peer_name, "gso_max_segs", "1", "netns", s,
        )  # fmt: skip
        self.uplinks[i] = up  # the veth exists: from now on this is what the uplink is
        if up.client_ip is not None:
            self._ip("addr", "add", f"{up.client_ip}/{up.prefix_len}", "dev", up.name)
            self.lab._ip(s, "addr", "add", f"{up.server_ip}/{up.prefix_len}", "dev", up.peer_name)
        if up.client_ip6 is not None:
            self.lab._add_service_addr6()
            self._add_addr6(up, "client")
            self._add_addr6(up, "server")
        self.lab._ip(s, "link", "set", up.peer_name, "up")  # first, so the client end has carrier
        self.lab._ip(c, "link", "set", up.name, "up")
        self._add_service_route(up)
        self._wait_addr6(up)
        return up

    def _add_addr6(self, up: Uplink, end: Literal["client", "server"]) -> None:
        # `replace`, so that link_up/set_carrier may call it whether the kernel kept it or not.
        ns, ifname = self._end(up.index, end)
        ip = up.client_ip6 if end == "client" else up.server_ip6
        self.lab._ip(ns, "addr", "replace", f"{ip}/{up.prefix_len6}", "dev", ifname, "nodad")

    def _wait_addr6(self, up: Uplink) -> None:
        if up.client_ip6 is None:
            return
        self.wait_address_ready(up.index, up.client_ip6)
        if up.server_ip6 is not None:
            self.wait_address_ready(up.index, up.server_ip6, end="server")

    def _add_service_route(self, up: Uplink) -> None:
        # (dst, metric) is the route's key: `replace` makes this idempotent per uplink.
        if up.server_ip is not None:
            self._ip(
                "route",
                "replace",
                f"{self.lab.service_addr}/32",
                "via",
                up.server_ip,
                "dev",
                up.name,
                "metric",
                str(up.metric),
            )
        if up.server_ip6 is not None:
            self._ip(
                "-6",
                "route",
                "replace",
                f"{self.lab.service_addr6}/128",
                "via",
                up.server_ip6,
                "dev",
                up.name,
                "metric",
                str(up.metric),
            )

    def delete_uplink(self, i: int) -> None:
        """Delete uplink ``i``'s veth pair (both ends vanish, sockets bound to it die)."""
        self._ip("link", "del", self.uplinks[i].name)

    def link_down(self, i: int) -> None:
        """Set the client end ``up{i}`` admin-down; the kernel flushes its routes.

        It keeps the IPv4 address but deletes every IPv6 address of ``up{i}``.
        """
        self._ip("link", "set", self.uplinks[i].name, "down")

    def link_up(self, i: int) -> None:
        """Set ``up{i}`` admin-up and restore its addresses and service routes (idempotent).

        Returns once its IPv6 address is usable. Addresses added with :meth:`add_address` are
        not restored.
        """
        up = self.uplinks[i]
        self._ip("link", "set", up.name, "up")
        if up.client_ip is not None:
            self._ip("addr", "replace", f"{up.client_ip}/{up.prefix_len}", "dev", up.name)
        if up.client_ip6 is not None:
            self._add_addr6(up, "client")
        self._add_service_route(up)
        self._flush_neighbours(up)
        self._wait_addr6(up)

    def _flush_neighbours(self, up: Uplink) -> None:
        # ARP and NDP entries that failed while the link was cut are only retried every second
        # (retrans_time); forget them (both families) so the restored link works at once.
        self._ip("neigh", "flush", "dev", up.name, check=False)
        self.lab._ip(self.lab.server_ns, "neigh", "flush", "dev", up.peer_name, check=False)

    def set_carrier(self, i: int, on: bool) -> None:
        """Carrier loss while ``up{i}`` stays admin-up: its server end goes down.

        ``up{i}`` then shows NO-CARRIER, keeps its address and routes (marked linkdown), and
        sends through it succeed and vanish, like an unplugged cable or a dead modem. The server
        end loses its connected route meanwhile; the kernel restores it when it comes back up.
        Being admin-down, the server end also loses its IPv6 address: ``on=True`` re-adds it.

        Returns once ``up{i}`` shows the new carrier state: the kernel propagates it through its
        link watch, asynchronously (up to about a second later), and (``on=True``) once the
        IPv6 addresses are usable. Raises LabError after 5 s.
        """
        up = self.uplinks[i]
        self.lab._ip(self.lab.server_ns, "link", "set", up.peer_name, "up" if on else "down")
        if on and up.server_ip6 is not None:
            self._add_addr6(up, "server")
        deadline = time.monotonic() + 5.0
        while ("NO-CARRIER" in self.link_flags(up.name)) == on:
            if time.monotonic() > deadline:
                raise LabError(f"{up.name}: carrier still {'off' if on else 'on'} after 5 s")
            time.sleep(0.01)
        if on:
            self._flush_neighbours(up)
            self._wait_addr6(up)

    def blackhole(self, i: int, on: bool = True) -> None:
        """Silently drop every IPv4/IPv6 packet into or out of ``up{i}`` (nftables, client side)."""
        name = self.uplinks[i].name
        rules = [f'iifname "{name}" drop', f'oifname "{name}" drop'] if on else None
        self._set_filter_table(f"eg_blackhole_{name}", rules)

    def drop_random(self, i: int, percent: int) -> None:
        """Drop ``percent``% of IPv4/IPv6 packets each way on ``up{i}`` (0 removes the rule)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within 0..100, got {percent}")
        name = self.uplinks[i].name
        rules = None
        if percent == 100:
            rules = [f'iifname "{name}" drop', f'oifname "{name}" drop']
        elif percent:
            rules = [
                f'iifname "{name}" numgen random mod 100 < {percent} drop',
                f'oifname "{name}" numgen random mod 100 < {percent} drop',
            ]
        self._set_filter_table(f"eg_loss_{name}", rules)

    def _set_filter_table(self, table: str, rules: list[str] | None) -> None:
        """Replace (or with None remove) a table whose input/output chains hold ``rules``."""
        # nft 1.0.6 has no "destroy": add-then-delete removes the table whether it existed or not.
        script = f"add table inet {table}\ndelete table inet {table}\n"
        if rules is not None:
            rule_in, rule_out = rules
            script += (
                f"table inet {table} {{\n"
                f"  chain input {{ type filter hook input priority -150; {rule_in}; }}\n"
                f"  chain output {{ type filter hook output priority -150; {rule_out}; }}\n"
                "}\n"
            )
        self._nft(script)

    def add_dummy(self, name: str, cidr: str) -> None:
        """Add a dummy interface in this namespace: up, with an address, leading nowhere."""
        self._ip("link", "add", name, "type", "dummy")
        self._ip("addr", "add", cidr, "dev", name)
        self._ip("link", "set", name, "up")

    def link_flags(self, ifname: str) -> set[str]:
        """The kernel's flags for an interface of this namespace (empty set if it is absent)."""
        return self.lab.link_flags(ifname, self.ns)

    # -- addresses on an uplink ----------------------------------------------------------------

    def _end(self, i: int, end: Literal["client", "server"]) -> tuple[str, str]:
        """(namespace, interface name) of uplink ``i``'s client or server end."""
        up = self.uplinks[i]
        if end == "client":
            return self.ns, up.name
        if end == "server":
            return self.lab.server_ns, up.peer_name
        raise ValueError(f"end must be 'client' or 'server', got {end!r}")

    def add_address(
        self,
        i: int,
        cidr: str,
        *,
        dad: bool = False,
        preferred_lft_s: int | None = None,
        valid_lft_s: int | None = None,
        end: Literal["client", "server"] = "client",
    ) -> None:
        """Add an address (IPv4 or IPv6, ``addr/prefix``) to uplink ``i``'s client end.

        IPv6 addresses skip duplicate address detection unless ``dad``: then the interface's
        ``accept_dad`` is set to 1 (and stays so) and the address is *tentative* for 1-2 s, or
        ``dadfailed`` if another host on the link has it. ``preferred_lft_s``/``valid_lft_s``
        give finite lifetimes (None: forever; ``preferred_lft_s=0``: deprecated at once).
        ``end="server"`` acts on the server end instead. Raises ValueError for a bad address or
        ``dad`` with IPv4, LabError if ``ip`` refuses (e.g. the address exists).
        """
        ipv6 = ipaddress.ip_interface(cidr).version == 6
        if dad and not ipv6:
            raise ValueError(f"duplicate address detection is IPv6 only, got {cidr}")
        ns, ifname = self._end(i, end)
        argv = ["addr", "add", cidr, "dev", ifname]
        if valid_lft_s is not None or preferred_lft_s is not None:
            valid, preferred = (
                "forever" if lft is None else str(lft) for lft in (valid_lft_s, preferred_lft_s)
            )
            argv += ["valid_lft", valid, "preferred_lft", preferred]
        if dad:
            self.lab.run(ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.accept_dad=1")
        elif ipv6:
            argv.append("nodad")
        self.lab._ip(ns, *argv)

    def remove_address(
        self, i: int, cidr: str, *, end: Literal["client", "server"] = "client"
    ) -> None:
        """Delete an address from uplink ``i``'s client (or server) end.

        Raises LabError if the interface does not have it.
        """
        ns, ifname = self._end(i, end)
        self.lab._ip(ns, "addr", "del", cidr, "dev", ifname)

    def deprecate_address(
        self, i: int, cidr: str, *, end: Literal["client", "server"] = "client"
    ) -> None:
        """Mark an address of uplink ``i`` deprecated: ``ip addr change ... preferred_lft 0``.

        It stays valid (valid lifetime: forever) but the kernel no longer picks it as a source
        address for new traffic. Raises LabError if the interface does not have it.
        """
        ns, ifname = self._end(i, end)
        self.lab._ip(ns, "addr", "change", cidr, "dev", ifname, "preferred_lft", "0")

    def addresses(
        self,
        i: int,
        family: Family | None = None,
        *,
        end: Literal["client", "server"] = "client",
    ) -> list[AddressInfo]:
        """The addresses of uplink ``i``'s client (or server) end, with the kernel's flags.

        ``family`` keeps one family. IPv6 link-local addresses are included (``scope ==
        "link"``). Empty if the interface does not exist (deleted uplink).
        """
        ns, ifname = self._end(i, end)
        proc = self.lab._ip(ns, "-j", "addr", "show", "dev", ifname, check=False)
        if proc.returncode != 0:
            return []
        found = _parse_addresses(proc.stdout)
        return [a for a in found if family is None or a.family == family]

    def wait_address_ready(
        self,
        i: int,
        address: str,
        *,
        timeout_s: float = 5.0,
        end: Literal["client", "server"] = "client",
    ) -> AddressInfo:
        """Wait until uplink ``i`` has ``address`` (with or without ``/prefix``), not tentative.

        Returns its :class:`AddressInfo`. Raises LabError if duplicate address detection fails,
        or if the address is still missing or tentative after ``timeout_s``.
        """
        wanted = str(ipaddress.ip_interface(address).ip)
        ifname = self._end(i, end)[1]
        deadline = time.monotonic() + timeout_s
        while True:
            found = [a for a in self.addresses(i, end=end) if a.address == wanted]
            if found and found[0].dadfailed:
                raise LabError(f"{ifname}: duplicate address detection failed for {wanted}")
            if found and not found[0].tentative:
                return found[0]
            if time.monotonic() > deadline:
                state = "tentative" if found else "missing"
                raise LabError(f"{ifname}: {wanted} still {state} after {timeout_s} s")
            time.sleep(0.01)

    # -- traffic -------------------------------------------------------------------------------

    def ping(
        self,
        addr: str,
        count: int = 3,
        interval_s: float = 0.05,
        timeout_s: float = 1.0,
        *,
        interface: str | None = None,
    ) -> PingResult:
        """:func:`ping` from this client's namespace."""
        return ping(self.ns, addr, count, interval_s, timeout_s, interface=interface)

    def start_ping(
        self,
        addr: str,
        count: int,
        interval_s: float = 0.01,
        timeout_s: float = 2.0,
        *,
        interface: str | None = None,
    ) -> PingProcess:
        """:meth:`Lab.start_ping` from this client's namespace."""
        return self.lab.start_ping(
            addr, count, interval_s, timeout_s, ns=self.ns, interface=interface
        )


class Lab:
    """A server namespace and one or more client namespaces, each joined to it by veth uplinks.

    Use as a context manager (or call :meth:`close`)::

        with Lab(3) as lab:
            lab.link_down(1)
            print(ping(lab.client_ns, lab.service_addr))

        with Lab(2, clients=3) as lab:          # three clients with two uplinks each
            lab.clients[1].blackhole(0)
            print(lab.clients[2].ping(lab.service_addr, interface="up0"))

        with Lab(2, ipv6=True) as lab:          # dual-stack uplinks
            lab.add_uplink(2, families=("ipv6",))
            print(ping(lab.client_ns, lab.service_addr6, interface="up2"))

    ``clients`` (1..8) client namespaces get ``n_uplinks`` uplinks each; :meth:`add_client`
    adds one later with any number. ``lab.clients[k]`` is a :class:`ClientSide`. The one-client
    API (``client_ns``, ``uplinks``, ``link_down(i)``, ...) is client 0's.

    ``families`` are the address families of every uplink made without its own choice:
    ``("ipv4",)`` by default, ``("ipv4", "ipv6")`` with ``ipv6=True`` (give one or the other).

    Attributes: ``client_ns``, ``server_ns``, ``octet`` (the B in 10.B.x.y), ``service_addr``,
    ``prefix6`` (``fd00:B``), ``service_addr6`` (``fd00:B:200::1``, on the server's ``lo`` once
    some uplink carries IPv6), ``families``, ``uplinks`` (client 0's uplinks ever defined, by
    index, including deleted ones), ``clients``, ``workdir`` (a temporary directory for configs
    and logs, deleted on close).

    Construction failures clean up what was already created and raise LabError.
    """

    def __init__(
        self,
        n_uplinks: int = 3,
        *,
        clients: int = 1,
        ipv6: bool = False,
        families: str | Sequence[str] | None = None,
    ) -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients must be within 1..{MAX_CLIENTS}, got {clients}")
        limit = MAX_UPLINKS if clients == 1 else UPLINKS_PER_CLIENT
        if not 0 <= n_uplinks <= limit:
            raise ValueError(
                f"n_uplinks must be within 0..{limit} with {clients} client(s), got {n_uplinks}"
            )
        if ipv6 and families is not None:
            raise ValueError("give ipv6=True or families=..., not both")
        if ipv6:
            families = FAMILIES
        self.families = _families(("ipv4",) if families is None else families)
        pid, n = os.getpid(), next(_counter)
        self.server_ns = f"eg{pid}s{n}"
        self.octet = 100 + (pid + n) % 100
        self.service_addr = f"10.{self.octet}.{SERVICE_OCTET}.1"
        self.prefix6 = f"fd00:{self.octet}"
        self.service_addr6 = _ipv6_in(self.prefix6, SERVICE_OCTET, 1)
        self._service6_added = False
        self.clients: list[ClientSide] = [ClientSide(self, 0, f"eg{pid}c{n}")]
        self.workdir = Path(tempfile.mkdtemp(prefix=f"engarde-lab-{pid}-{n}-"))
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._wireguard: list[WireGuardPair | WireGuardHub] = []
        self._closed = False
        _open_labs.add(self)
        _install_sigterm_handler()
        try:
            for ns in (self.client_ns, self.server_ns):
                self._add_namespace(ns)
            self._ip(self.server_ns, "addr", "add", f"{self.service_addr}/32", "dev", "lo")
            for i in range(n_uplinks):
                self.add_uplink(i)
            for _ in range(1, clients):
                self.add_client(n_uplinks)
        except BaseException:
            self.close()
            raise

    @property
    def client_ns(self) -> str:
        """Client 0's namespace."""
        return self.clients[0].ns

    @property
    def uplinks(self) -> list[Uplink]:
        """Client 0's uplinks, every one ever defined, by index (deleted ones included)."""
        return self.clients[0].uplinks

    def __repr__(self) -> str:
        more = f" +{len(self.clients) - 1} clients" if len(self.clients) > 1 else ""
        return f"<Lab {self.client_ns}/{self.server_ns}{more} 10.{self.octet}.0.0/16>"

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_namespace(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)  # from now on close() deletes it
        # Before any interface exists, so that each inherits "default".
        sysctls = f"{_NO_RP_FILTER} {_NO_DAD}" if _has_ipv6() else _NO_RP_FILTER
        self.run(ns, "sysctl", "-qw", *sysctls.split())
        self._ip(ns, "link", "set", "lo", "up")

    def _add_service_addr6(self) -> None:
        # Only with the first IPv6 uplink: an IPv4-only lab stays exactly as it always was.
        if not self._service6_added:
            self._ip(self.server_ns, "addr", "add", f"{self.service_addr6}/128", "dev", "lo")
            self._service6_added = True

    # -- clients -------------------------------------------------------------------------------

    def add_client(
        self, n_uplinks: int = 3, *, families: str | Sequence[str] | None = None
    ) -> ClientSide:
        """Add client ``k = len(clients)``: a new namespace with ``n_uplinks`` uplinks.

        Its namespace is ``<client_ns>k{k}``, its uplinks ``up{i}`` (server ends ``c{k}s{i}``,
        addresses ``10.B.(25k+i).2/24`` and ``.1``, ``fd00:B:(25k+i)::2/64`` and ``::1``), each
        with a route to the service address. ``families``: those of its uplinks, by default the
        lab's. A lab holds at most 8 clients of at most 25 uplinks each (client 0 may have up
        to 200 only while it is alone). Raises ValueError past those limits and LabError if a
        command fails; a client that failed half-way is deleted again.
        """
        self._check_open()
        chosen = None if families is None else _families(families)
        k = len(self.clients)
        if k >= MAX_CLIENTS:
            raise ValueError(f"a lab holds at most {MAX_CLIENTS} clients")
        if not 0 <= n_uplinks <= UPLINKS_PER_CLIENT:
            raise ValueError(f"n_uplinks must be within 0..{UPLINKS_PER_CLIENT}, got {n_uplinks}")
        if len(self.uplinks) > UPLINKS_PER_CLIENT:
            raise ValueError(
                f"client 0 has {len(self.uplinks)} uplinks: a lab with several clients allows "
                f"{UPLINKS_PER_CLIENT} per client"
            )
        client = ClientSide(self, k, f"{self.client_ns}k{k}")
        self.clients.append(client)
        try:
            self._add_namespace(client.ns)
            for i in range(n_uplinks):
                client.add_uplink(i, chosen)
        except BaseException:
            # Leave no half-built client behind: deleting its namespace takes its veths along.
            self.clients.pop()
            if client.ns in self._namespaces:
                _run(["ip", "netns", "del", client.ns], check=False)
                self._namespaces.remove(client.ns)
            raise
        return client

    # -- commands ------------------------------------------------------------------------------

    def run(
        self,
        ns: str,
        *cmd: str,
        check: bool = True,
        input: str | None = None,
        timeout_s: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside namespace ``ns`` to completion (text stdout/stderr captured).

        Raises LabError on a non-zero exit when ``check``.
        """
        return _run(
            ["ip", "netns", "exec", ns, *cmd], check=check, input=input, timeout_s=timeout_s
        )

    def popen(
        self,
        ns: str,
        *cmd: str,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside namespace ``ns``; ``kwargs`` go to subprocess.Popen.

        ``env`` is *added* to the current environment. The PID is the command's own (``ip netns
        exec`` execs it). The process is stopped on :meth:`close` (SIGTERM, SIGKILL after 3 s)
        unless stopped earlier with :meth:`stop`; it also gets SIGTERM if this process dies.
        """
        self._check_open()
        if env is not None:
            kwargs["env"] = {**os.environ, **env}
        # Own session: a Ctrl-C in the terminal reaches only us, and we stop them in order.
        kwargs.setdefault("start_new_session", True)
        if "preexec_fn" not in kwargs and _in_main_thread():
            # PDEATHSIG follows the parent *thread*; from a worker thread it would fire early.
            kwargs["preexec_fn"] = _die_with_parent
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)
        self._procs.append(proc)
        return proc

    def popen_python(self, ns: str, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start this Python interpreter in ``ns`` with ``args``, cwd the repository root.

        E.g. ``lab.popen_python(lab.server_ns, "-m", "lab.udp_tools", "echo", ...)``.
        """
        kwargs.setdefault("cwd", REPO_ROOT)
        return self.popen(ns, sys.executable, *args, **kwargs)

    def adopt(self, pid: int) -> AdoptedProcess:
        """Stop process ``pid`` (started by one of ours, e.g. an engarde successor) on
        :meth:`close` like the ones :meth:`popen` started; :meth:`stop` takes it too."""
        proc = AdoptedProcess(pid)
        self._procs.append(proc)  # type: ignore[arg-type]
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop a process started by :meth:`popen` now (SIGTERM, then SIGKILL); its exit code."""
        code = stop_process(proc, timeout_s)
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)
        return code

    def start_ping(
        self,
        addr: str,
        count: int,
        interval_s: float = 0.01,
        timeout_s: float = 2.0,
        *,
        ns: str | None = None,
        interface: str | None = None,
    ) -> PingProcess:
        """Start a background ping from ``ns`` (default the client namespace) to ``addr``."""
        ns = ns or self.client_ns
        tag = f"ping-{next(_counter)}"
        out, err = self.workdir / f"{tag}.out", self.workdir / f"{tag}.err"
        cmd = _ping_cmd(addr, count, interval_s, timeout_s, interface)
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = self.popen(ns, *cmd, stdout=stdout, stderr=stderr)
        return PingProcess(proc, out, err)

    def wait_for_udp(
        self,
        ns: str,
        port: int,
        timeout_s: float = 10.0,
        proc: subprocess.Popen[Any] | None = None,
    ) -> None:
        """Wait until some UDP socket in ``ns`` is bound to ``port`` (e.g. a daemon is ready).

        Raises LabError after ``timeout_s``, or as soon as ``proc`` (if given) has exited.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            out = self.run(ns, "ss", "-Hlun").stdout
            if any(line.split()[3].endswith(f":{port}") for line in out.splitlines() if line):
                return
            if proc is not None and proc.poll() is not None:
                raise LabError(f"process {proc.pid} exited ({proc.returncode}) before UDP {port}")
            if time.monotonic() > deadline:
                raise LabError(f"nothing bound to UDP port {port} in {ns} after {timeout_s} s")
            time.sleep(0.05)

    def _ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", ns, *args], check=check)

    def _nft(self, script: str) -> None:
        self.clients[0]._nft(script)

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"{self!r} is closed")

    # -- client 0's uplinks (see ClientSide for the other clients) -----------------------------

    def uplink(self, i: int) -> Uplink:
        """The definition of uplink ``i`` (it may currently be deleted)."""
        return self.clients[0].uplink(i)

    def add_uplink(self, i: int, families: str | Sequence[str] | None = None) -> Uplink:
        """Create uplink ``i``: a new one (``i == len(uplinks)``) or one deleted earlier.

        See :meth:`ClientSide.add_uplink` (``families``: ``("ipv4",)``, ``("ipv6",)`` or both).
        Raises LabError if the uplink exists.
        """
        return self.clients[0].add_uplink(i, families)

    def delete_uplink(self, i: int) -> None:
        """Delete uplink ``i``'s veth pair (both ends vanish, sockets bound to it die)."""
        self.clients[0].delete_uplink(i)

    def link_down(self, i: int) -> None:
        """Set the client end ``up{i}`` admin-down; the kernel flushes its routes.

        It keeps the IPv4 address but deletes every IPv6 address of ``up{i}``.
        """
        self.clients[0].link_down(i)

    def link_up(self, i: int) -> None:
        """Set ``up{i}`` admin-up and restore its addresses and service routes (idempotent)."""
        self.clients[0].link_up(i)

    def set_carrier(self, i: int, on: bool) -> None:
        """Carrier loss while ``up{i}`` stays admin-up: the server end ``sv{i}`` goes down.

        See :meth:`ClientSide.set_carrier`. Raises LabError if the carrier has not changed
        after 5 s.
        """
        self.clients[0].set_carrier(i, on)

    def blackhole(self, i: int, on: bool = True) -> None:
        """Silently drop every IPv4/IPv6 packet into or out of ``up{i}`` (nftables, client side)."""
        self.clients[0].blackhole(i, on)

    def drop_random(self, i: int, percent: int) -> None:
        """Drop ``percent``% of IPv4/IPv6 packets each way on ``up{i}`` (0 removes the rule)."""
        self.clients[0].drop_random(i, percent)

    def add_dummy(self, name: str, cidr: str) -> None:
        """Add a dummy interface in the client namespace: up, with an address, leading nowhere."""
        self.clients[0].add_dummy(name, cidr)

    def add_address(
        self,
        i: int,
        cidr: str,
        *,
        dad: bool = False,
        preferred_lft_s: int | None = None,
        valid_lft_s: int | None = None,
        end: Literal["client", "server"] = "client",
    ) -> None:
        """Add an address to ``up{i}`` (see :meth:`ClientSide.add_address`)."""
        self.clients[0].add_address(
            i, cidr, dad=dad, preferred_lft_s=preferred_lft_s, valid_lft_s=valid_lft_s, end=end
        )

    def remove_address(
        self, i: int, cidr: str, *, end: Literal["client", "server"] = "client"
    ) -> None:
        """Delete an address from ``up{i}`` (see :meth:`ClientSide.remove_address`)."""
        self.clients[0].remove_address(i, cidr, end=end)

    def deprecate_address(
        self, i: int, cidr: str, *, end: Literal["client", "server"] = "client"
    ) -> None:
        """Set an address of ``up{i}`` deprecated (see :meth:`ClientSide.deprecate_address`)."""
        self.clients[0].deprecate_address(i, cidr, end=end)

    def addresses(
        self,
        i: int,
        family: Family | None = None,
        *,
        end: Literal["client", "server"] = "client",
    ) -> list[AddressInfo]:
        """The addresses of ``up{i}`` and their flags (see :meth:`ClientSide.addresses`)."""
        return self.clients[0].addresses(i, family, end=end)

    def wait_address_ready(
        self,
        i: int,
        address: str,
        *,
        timeout_s: float = 5.0,
        end: Literal["client", "server"] = "client",
    ) -> AddressInfo:
        """Wait until ``up{i}`` has ``address``, not tentative (see :meth:`ClientSide`)."""
        return self.clients[0].wait_address_ready(i, address, timeout_s=timeout_s, end=end)

    def link_flags(self, ifname: str, ns: str | None = None) -> set[str]:
        """The kernel's flags for an interface, e.g. {"UP", "LOWER_UP"} or {"NO-CARRIER", ...}.

        ``ns`` defaults to the (first) client namespace. Empty set if the interface does not
        exist.
        """
        proc = self._ip(ns or self.client_ns, "-j", "link", "show", "dev", ifname, check=False)
        if proc.returncode != 0:
            return set()
        info: list[dict[str, Any]] = json.loads(proc.stdout)
        return set(info[0].get("flags", []))

    # -- wireguard -----------------------------------------------------------------------------

    def start_wireguard(
        self,
        *,
        server_port: int = 59301,
        client_endpoint: str = "127.0.0.1:59401",
        client_port: int | None = None,
        keepalive_s: int | None = None,
        tunnel_ipv6: bool = False,
    ) -> WireGuardPair:
        """Start a :class:`WireGuardPair` for client 0 (one WireGuard setup per lab).

        ``client_endpoint`` may be IPv6 (``"[::1]:59401"``, ``pair.direct_endpoint6``);
        ``tunnel_ipv6`` gives the tunnel IPv6 addresses too (fd00:B:250::1 and ::2).
        Stopped on :meth:`close`. Raises LabError if the lab already has one.
        """
        self._check_open()
        if self._wireguard:
            raise LabError("one WireGuard setup per lab (the tunnel addresses are fixed)")
        pair = WireGuardPair(
            self,
            server_port=server_port,
            client_endpoint=client_endpoint,
            client_port=client_port,
            keepalive_s=keepalive_s,
            tunnel_ipv6=tunnel_ipv6,
        )
        return pair

    def start_wireguard_multi(
        self,
        *,
        server_port: int = 59301,
        client_endpoint: str | Sequence[str] = "127.0.0.1:59401",
        client_port: int | None = None,
        keepalive_s: int | None = None,
        tunnel_ipv6: bool = False,
    ) -> WireGuardHub:
        """Start a :class:`WireGuardHub`: one server interface, a peer for every client.

        ``client_endpoint`` is every client's peer Endpoint, or one per client (in the order of
        ``clients``); IPv6 ones are written ``[addr]:port``. ``tunnel_ipv6`` gives the tunnel
        IPv6 addresses too. Clients added later get no peer. One WireGuard setup per lab;
        stopped on :meth:`close`. Raises LabError if the lab already has one or wireguard-go
        fails.
        """
        self._check_open()
        if self._wireguard:
            raise LabError("one WireGuard setup per lab (the tunnel addresses are fixed)")
        endpoints = (
            [client_endpoint] * len(self.clients)
            if isinstance(client_endpoint, str)
            else list(client_endpoint)
        )
        if len(endpoints) != len(self.clients):
            raise ValueError(f"{len(endpoints)} endpoints for {len(self.clients)} clients")
        return WireGuardHub(
            self,
            server_port=server_port,
            client_endpoints=endpoints,
            client_port=client_port,
            keepalive_s=keepalive_s,
            tunnel_ipv6=tunnel_ipv6,
        )

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, delete every namespace and the workdir. Idempotent.

        Every step is attempted; the first failure is raised afterwards as LabError.
        """
        if self._closed:
            return
        # Written so that a second call (atexit after an interrupted close) finishes the job.
        errors: list[str] = []
        for setup in reversed(list(self._wireguard)):
            setup.close()
        stop_processes(list(reversed(self._procs)))
        self._procs.clear()
        while self._namespaces:
            ns = self._namespaces[-1]
            proc = _run(["ip", "netns", "del", ns], check=False)
            if proc.returncode != 0:
                errors.append(f"ip netns del {ns}: {proc.stderr.strip()}")
            self._namespaces.pop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        _open_labs.discard(self)
        self._closed = True
        if errors:
            raise LabError("; ".join(errors))


# ---------------------------------------------------------------------------------------------
# WireGuard


def _wg_keypair(workdir: Path, stem: str) -> tuple[Path, str]:
    """A new private key written to ``workdir/stem.key`` (mode 600), and its public key."""
    private = _run(["wg", "genkey"]).stdout.strip()
    public = _run(["wg", "pubkey"], input=private + "\n").stdout.strip()
    path = workdir / f"{stem}.key"
    path.touch(mode=0o600)
    path.write_text(private + "\n")
    return path, public


def _start_wireguard_go(lab: Lab, ns: str, ifname: str, procs: list[subprocess.Popen[Any]]) -> None:
    """Start ``wireguard-go -f ifname`` in ``ns`` (appended to ``procs`` at once, so that a
    failure still stops it) and wait for its UAPI socket. Raises LabError if it does not come up.
    """
    log = lab.workdir / f"{ifname}.log"
    with log.open("wb") as out:
        proc = lab.popen(
            ns, "wireguard-go", "-f", ifname, env=WG_ENV, stdout=out, stderr=subprocess.STDOUT
        )
    procs.append(proc)
    sock = WG_RUN_DIR / f"{ifname}.sock"
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            output = log.read_text(errors="replace").strip()
            raise LabError(
                f"wireguard-go {ifname} in {ns} did not start "
                f"(exit code {proc.poll()}): {output[-2000:]}"
            )
        time.sleep(0.01)


def _tunnel_ips(ip: str, ip6: str | None) -> str:
    """The allowed-ips of a peer whose tunnel address is ``ip`` (and ``ip6``)."""
    return f"{ip}/32,{ip6}/128" if ip6 is not None else f"{ip}/32"


def _address_tunnel(lab: Lab, ns: str, ifname: str, ip: str, ip6: str | None) -> None:
    """Give a WireGuard interface its tunnel address(es) and bring it up."""
    lab._ip(ns, "addr", "add", f"{ip}/24", "dev", ifname)
    if ip6 is not None:
        lab._ip(ns, "addr", "add", f"{ip6}/64", "dev", ifname, "nodad")
    lab._ip(ns, "link", "set", ifname, "up")


def _check_ifnames(*names: str) -> None:
    for name in names:
        if len(name) > 15:
            raise LabError(f"interface name {name!r} longer than 15 characters")


class WireGuardPair:
    """wireguard-go in both namespaces of a lab, each the other's only peer.

    Server: interface ``server_if`` with ``server_ip`` (10.B.250.1/24), ListenPort
    ``server_port`` on all addresses (IPv4 and IPv6) of the server namespace. Client:
    ``client_if`` with ``client_ip`` (10.B.250.2/24), its peer Endpoint ``client_endpoint`` (by
    default where the engarde client listens; :attr:`direct_endpoint` or
    :attr:`direct_endpoint6` go direct). With ``tunnel_ipv6`` the tunnel also carries
    ``server_ip6``/``client_ip6`` (fd00:B:250::1/64 and ::2); otherwise those are None.
    Interface names are unique per process and run (UAPI sockets live in one shared directory).

    Create it with :meth:`Lab.start_wireguard`. Raises LabError if wireguard-go does not come up.
    """

    def __init__(
        self,
        lab: Lab,
        *,
        server_port: int = 59301,
        client_endpoint: str = "127.0.0.1:59401",
        client_port: int | None = None,
        keepalive_s: int | None = None,
        tunnel_ipv6: bool = False,
    ) -> None:
        n = next(_counter)
        self.lab = lab
        self.client_if = f"eg{os.getpid()}w{n}c"
        self.server_if = f"eg{os.getpid()}w{n}s"
        _check_ifnames(self.client_if)
        self.client_ip = f"10.{lab.octet}.{TUNNEL_OCTET}.2"
        self.server_ip = f"10.{lab.octet}.{TUNNEL_OCTET}.1"
        self.client_ip6 = _ipv6_in(lab.prefix6, TUNNEL_OCTET, 2) if tunnel_ipv6 else None
        self.server_ip6 = _ipv6_in(lab.prefix6, TUNNEL_OCTET, 1) if tunnel_ipv6 else None
        self.server_port = server_port
        self.client_endpoint = client_endpoint
        self.client_public_key = self.server_public_key = ""
        self._procs: list[subprocess.Popen[Any]] = []
        lab._wireguard.append(self)
        try:
            self._setup(client_port, keepalive_s)
        except BaseException:
            self.close()
            raise

    def _setup(self, client_port: int | None, keepalive_s: int | None) -> None:
        lab = self.lab
        client_key, self.client_public_key = self._genkey("client")
        server_key, self.server_public_key = self._genkey("server")
        self._start(lab.server_ns, self.server_if)
        self._start(lab.client_ns, self.client_if)

        server_cmd = f"wg set {self.server_if} listen-port {self.server_port}"
        server_cmd += f" private-key {server_key} peer {self.client_public_key}"
        server_cmd += f" allowed-ips {_tunnel_ips(self.client_ip, self.client_ip6)}"
        lab.run(lab.server_ns, *server_cmd.split())

        client_cmd = f"wg set {self.client_if} private-key {client_key}"
        if client_port is not None:
            client_cmd += f" listen-port {client_port}"
        client_cmd += f" peer {self.server_public_key}"
        client_cmd += f" allowed-ips {_tunnel_ips(self.server_ip, self.server_ip6)}"
        client_cmd += f" endpoint {self.client_endpoint}"
        if keepalive_s is not None:
            client_cmd += f" persistent-keepalive {keepalive_s}"
        lab.run(lab.client_ns, *client_cmd.split())

        _address_tunnel(lab, lab.server_ns, self.server_if, self.server_ip, self.server_ip6)
        _address_tunnel(lab, lab.client_ns, self.client_if, self.client_ip, self.client_ip6)

    def _genkey(self, role: str) -> tuple[Path, str]:
        return _wg_keypair(self.lab.workdir, f"{self.client_if[:-1]}-{role}")

    def _start(self, ns: str, ifname: str) -> None:
        _start_wireguard_go(self.lab, ns, ifname, self._procs)

    @property
    def direct_endpoint(self) -> str:
        """The server's WireGuard port on the IPv4 service address: skips engarde."""
        return host_port(self.lab.service_addr, self.server_port)

    @property
    def direct_endpoint6(self) -> str:
        """``[fd00:B:200::1]:port``: the same on the IPv6 service address (needs an IPv6 uplink)."""
        return host_port(self.lab.service_addr6, self.server_port)

    @property
    def server_pid(self) -> int:
        """The PID of the server namespace's wireguard-go (e.g. to read its CPU time)."""
        return self._procs[0].pid  # _setup starts the server side first

    @property
    def client_pid(self) -> int:
        """The PID of the client namespace's wireguard-go."""
        return self._procs[1].pid

    def set_client_endpoint(self, endpoint: str) -> None:
        """Point the client's peer at another ``host:port`` or ``[v6]:port`` (e.g. straight at
        the server: :attr:`direct_endpoint6`). Raises LabError if ``wg`` rejects it."""
        self.lab.run(
            self.lab.client_ns,
            "wg",
            "set",
            self.client_if,
            "peer",
            self.server_public_key,
            "endpoint",
            endpoint,
        )
        self.client_endpoint = endpoint

    def show(self, side: Literal["client", "server"] = "client") -> str:
        """``wg show`` of one side, for debugging output."""
        ns, ifname = (
            (self.lab.client_ns, self.client_if)
            if side == "client"
            else (self.lab.server_ns, self.server_if)
        )
        return self.lab.run(ns, "wg", "show", ifname).stdout

    def close(self) -> None:
        """Stop both wireguard-go processes and remove their UAPI sockets. Idempotent."""
        for proc in self._procs:
            self.lab.stop(proc)
        for ifname in (self.client_if, self.server_if):
            (WG_RUN_DIR / f"{ifname}.sock").unlink(missing_ok=True)
        with contextlib.suppress(ValueError):
            self.lab._wireguard.remove(self)


class WireGuardPeer:
    """One client of a :class:`WireGuardHub`: wireguard-go in that client's namespace.

    Attributes: ``index`` and ``client`` (its :class:`ClientSide`), ``ns``, ``client_if``,
    ``client_ip`` (10.B.250.(2+k)), ``client_ip6`` (fd00:B:250::(2+k) with the hub's
    ``tunnel_ipv6``, else None), ``client_endpoint`` (its only peer's Endpoint), ``public_key``,
    and the hub's ``server_if``, ``server_ip`` and ``server_ip6`` for convenience.
    """

    def __init__(self, hub: WireGuardHub, client: ClientSide, client_endpoint: str) -> None:
        self.hub = hub
        self.client = client
        self.index = client.index
        self.ns = client.ns
        self.client_if = f"{hub.name_prefix}c{client.index}"
        self.client_ip = f"10.{hub.lab.octet}.{TUNNEL_OCTET}.{2 + client.index}"
        self.client_ip6 = (
            _ipv6_in(hub.lab.prefix6, TUNNEL_OCTET, 2 + client.index)
            if hub.server_ip6 is not None
            else None
        )
        self.server_if = hub.server_if
        self.server_ip = hub.server_ip
        self.server_ip6 = hub.server_ip6
        self.client_endpoint = client_endpoint
        self.public_key = ""

    def __repr__(self) -> str:
        return f"<WireGuardPeer {self.index} {self.client_if} {self.client_ip}>"

    def set_client_endpoint(self, endpoint: str) -> None:
        """Point this client's peer (the server) at another ``host:port`` or ``[v6]:port``."""
        self.hub.lab.run(
            self.ns,
            "wg",
            "set",
            self.client_if,
            "peer",
            self.hub.server_public_key,
            "endpoint",
            endpoint,
        )
        self.client_endpoint = endpoint

    def show(self, side: Literal["client", "server"] = "client") -> str:
        """``wg show`` of this client's interface, or of the hub's (``side="server"``)."""
        if side == "server":
            return self.hub.show()
        return self.hub.lab.run(self.ns, "wg", "show", self.client_if).stdout


class WireGuardHub:
    """One wireguard-go interface in the server namespace with a peer per client namespace.

    Server: ``server_if`` with ``server_ip`` (10.B.250.1/24), ListenPort ``server_port`` on all
    addresses (IPv4 and IPv6) of the server namespace, peer ``k`` allowed ``10.B.250.(2+k)/32``
    (and ``fd00:B:250::(2+k)/128`` with ``tunnel_ipv6``, ``server_ip6`` then being
    fd00:B:250::1/64). Client ``k``:
    ``peers[k]`` (a :class:`WireGuardPeer`), its own interface whose only peer is the server, at
    that client's endpoint (by default where its engarde client listens; ``direct_endpoint`` goes
    straight to the server). Interface names: ``eg<pid>w<n>s`` and ``eg<pid>w<n>c<k>``.

    Create it with :meth:`Lab.start_wireguard_multi`. Raises LabError if wireguard-go does not
    come up (what was started is stopped again).
    """

    def __init__(
        self,
        lab: Lab,
        *,
        server_port: int,
        client_endpoints: Sequence[str],
        client_port: int | None = None,
        keepalive_s: int | None = None,
        tunnel_ipv6: bool = False,
    ) -> None:
        self.lab = lab
        self.name_prefix = f"eg{os.getpid()}w{next(_counter)}"
        self.server_if = f"{self.name_prefix}s"
        self.server_ip = f"10.{lab.octet}.{TUNNEL_OCTET}.1"
        self.server_ip6 = _ipv6_in(lab.prefix6, TUNNEL_OCTET, 1) if tunnel_ipv6 else None
        self.server_port = server_port
        self.server_public_key = ""
        self.peers = [
            WireGuardPeer(self, client, endpoint)
            for client, endpoint in zip(lab.clients, client_endpoints, strict=True)
        ]
        _check_ifnames(*(peer.client_if for peer in self.peers))
        self._procs: list[subprocess.Popen[Any]] = []
        lab._wireguard.append(self)
        try:
            self._setup(client_port, keepalive_s)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<WireGuardHub {self.server_if} {len(self.peers)} peers>"

    @property
    def direct_endpoint(self) -> str:
        """The server's WireGuard port on the service address: an Endpoint that skips engarde."""
        return f"{self.lab.service_addr}:{self.server_port}"

    @property
    def direct_endpoint6(self) -> str:
        """``[fd00:B:200::1]:port``: the same on the IPv6 service address (needs an IPv6 uplink)."""
        return host_port(self.lab.service_addr6, self.server_port)

    def _setup(self, client_port: int | None, keepalive_s: int | None) -> None:
        lab = self.lab
        server_key, self.server_public_key = _wg_keypair(lab.workdir, f"{self.server_if}")
        client_keys = []
        for peer in self.peers:
            key, peer.public_key = _wg_keypair(lab.workdir, peer.client_if)
            client_keys.append(key)
        _start_wireguard_go(lab, lab.server_ns, self.server_if, self._procs)
        for peer in self.peers:
            _start_wireguard_go(lab, peer.ns, peer.client_if, self._procs)

        server_cmd = ["wg", "set", self.server_if, "listen-port", str(self.server_port)]
        server_cmd += ["private-key", str(server_key)]
        for peer in self.peers:
            allowed = _tunnel_ips(peer.client_ip, peer.client_ip6)
            server_cmd += ["peer", peer.public_key, "allowed-ips", allowed]
        lab.run(lab.server_ns, *server_cmd)

        for peer, key in zip(self.peers, client_keys, strict=True):
            cmd = ["wg", "set", peer.client_if, "private-key", str(key)]
            if client_port is not None:
                cmd += ["listen-port", str(client_port)]
            allowed = _tunnel_ips(self.server_ip, self.server_ip6)
            cmd += ["peer", self.server_public_key, "allowed-ips", allowed]
            cmd += ["endpoint", peer.client_endpoint]
            if keepalive_s is not None:
                cmd += ["persistent-keepalive", str(keepalive_s)]
            lab.run(peer.ns, *cmd)

        _address_tunnel(lab, lab.server_ns, self.server_if, self.server_ip, self.server_ip6)
        for peer in self.peers:
            _address_tunnel(lab, peer.ns, peer.client_if, peer.client_ip, peer.client_ip6)

    def show(self) -> str:
        """``wg show`` of the server interface (every peer), for debugging output."""
        return self.lab.run(self.lab.server_ns, "wg", "show", self.server_if).stdout

    def close(self) -> None:
        """Stop every wireguard-go process and remove their UAPI sockets. Idempotent."""
        for proc in self._procs:
            self.lab.stop(proc)
        for ifname in (self.server_if, *(peer.client_if for peer in self.peers)):
            (WG_RUN_DIR / f"{ifname}.sock").unlink(missing_ok=True)
        with contextlib.suppress(ValueError):
            self.lab._wireguard.remove(self)


__all__ = [
    "FAMILIES",
    "MAX_CLIENTS",
    "REPO_ROOT",
    "UPLINKS_PER_CLIENT",
    "AddressInfo",
    "AdoptedProcess",
    "ClientSide",
    "Family",
    "Lab",
    "LabError",
    "LabUnavailable",
    "PingProcess",
    "PingResult",
    "Uplink",
    "WireGuardHub",
    "WireGuardPair",
    "WireGuardPeer",
    "host_port",
    "lab_available",
    "parse_ping_output",
    "ping",
    "require_lab",
    "seq_ranges",
    "stop_process",
    "stop_processes",
]
