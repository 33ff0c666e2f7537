"""Two network namespaces joined by veth "uplinks", with the knobs to break them.

Theory of operation
-------------------
A :class:`Lab` creates a *client* namespace and a *server* namespace and joins them with N veth
pairs. Uplink ``i`` is ``up{i}`` (``10.B.i.2/24``) in the client namespace and ``sv{i}``
(``10.B.i.1/24``) in the server namespace; ``B`` is picked per lab so that concurrent labs use
distinct addresses. The server namespace also holds one *service address* ``10.B.200.1/32`` on
``lo``, reachable from the client namespace through every uplink: the client has one route per
uplink, ``10.B.200.1 via 10.B.i.1 dev up{i} metric 10+i``, so a socket bound to ``up{i}`` with
``SO_BINDTODEVICE`` finds a route through its own uplink. Reverse-path filtering is off in both
namespaces, so replies may come back through any uplink.

Uplinks are broken the ways real ones break: admin down (:meth:`Lab.link_down`, the kernel flushes
the routes), carrier loss with the link still admin-up (:meth:`Lab.set_carrier`, sends vanish
silently), the interface disappearing (:meth:`Lab.delete_uplink`), a silent blackhole or random
loss (:meth:`Lab.blackhole`, :meth:`Lab.drop_random`, nftables rules in the client namespace).
Each has its inverse. Impairments made with nftables match the interface *name*, so they survive
deleting and re-adding the uplink.

:class:`WireGuardPair` runs wireguard-go in both namespaces; :func:`ping` and
:meth:`Lab.start_ping` measure what gets through.

Everything the lab starts is stopped by PID, and everything it creates is deleted on
:meth:`Lab.close` (context-manager exit, ``atexit``, and SIGTERM turned into KeyboardInterrupt when
nobody else handles SIGTERM). The lab never touches a namespace or process it did not create.
Traffic only goes to loopback or to addresses inside the lab's own namespaces.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import json
import os
import re
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
STOP_TIMEOUT_S = 3.0

_NO_RP_FILTER = "net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0"

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


def require_lab(wireguard: bool = True) -> None:
    """Raise LabUnavailable with the reason when :func:`lab_available` says no."""
    ok, reason = lab_available(wireguard)
    if not ok:
        raise LabUnavailable(reason)


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
    addr: str, count: int, interval_s: float, timeout_s: float, interface: str | None
) -> list[str]:
    cmd = ["ping", "-n", "-D", "-c", str(count), "-i", f"{interval_s:g}", "-W", f"{timeout_s:g}"]
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
) -> PingResult:
    """Ping ``addr`` from namespace ``ns`` and wait for the result.

    ``timeout_s`` is how long ping waits for a late reply after the last request. ``interface``
    pins the requests to one interface (``ping -I``). Never raises for lost packets or
    unreachable networks (see ``PingResult.errors``); raises LabError only if ping hangs.
    """
    argv = ["ip", "netns", "exec", ns, *_ping_cmd(addr, count, interval_s, timeout_s, interface)]
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
    """One veth uplink: ``name`` in the client namespace, ``peer_name`` in the server one."""

    index: int
    name: str
    peer_name: str
    client_ip: str
    server_ip: str
    metric: int
    prefix_len: int = 24


class Lab:
    """A client and a server namespace joined by ``n_uplinks`` veth uplinks.

    Use as a context manager (or call :meth:`close`)::

        with Lab(3) as lab:
            lab.link_down(1)
            print(ping(lab.client_ns, lab.service_addr))

    Attributes: ``client_ns``, ``server_ns``, ``octet`` (the B in 10.B.x.y), ``service_addr``,
    ``uplinks`` (every uplink ever defined, by index, including deleted ones), ``workdir`` (a
    temporary directory for configs and logs, deleted on close).

    Construction failures clean up what was already created and raise LabError.
    """

    def __init__(self, n_uplinks: int = 3) -> None:
        if not 0 <= n_uplinks <= MAX_UPLINKS:
            raise ValueError(f"n_uplinks must be within 0..{MAX_UPLINKS}, got {n_uplinks}")
        pid, n = os.getpid(), next(_counter)
        self.client_ns = f"eg{pid}c{n}"
        self.server_ns = f"eg{pid}s{n}"
        self.octet = 100 + (pid + n) % 100
        self.service_addr = f"10.{self.octet}.{SERVICE_OCTET}.1"
        self.uplinks: list[Uplink] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"engarde-lab-{pid}-{n}-"))
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._wireguard: list[WireGuardPair] = []
        self._closed = False
        _open_labs.add(self)
        _install_sigterm_handler()
        try:
            for ns in (self.client_ns, self.server_ns):
                _run(["ip", "netns", "add", ns])
                self._namespaces.append(ns)
                # Before any interface exists, so that each inherits "default".
                self.run(ns, *f"sysctl -qw {_NO_RP_FILTER}".split())
                self._ip(ns, "link", "set", "lo", "up")
            self._ip(self.server_ns, "addr", "add", f"{self.service_addr}/32", "dev", "lo")
            for i in range(n_uplinks):
                self.add_uplink(i)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<Lab {self.client_ns}/{self.server_ns} 10.{self.octet}.0.0/16>"

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        self.run(self.client_ns, "nft", "-f", "-", input=script)

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"{self!r} is closed")

    # -- uplinks -------------------------------------------------------------------------------

    def uplink(self, i: int) -> Uplink:
        """The definition of uplink ``i`` (it may currently be deleted)."""
        return self.uplinks[i]

    def _define_uplink(self, i: int) -> Uplink:
        if i < len(self.uplinks):
            return self.uplinks[i]
        if i != len(self.uplinks) or i >= MAX_UPLINKS:
            raise ValueError(f"next new uplink index is {len(self.uplinks)}, got {i}")
        net = f"10.{self.octet}.{i}"
        up = Uplink(i, f"up{i}", f"sv{i}", f"{net}.2", f"{net}.1", metric=10 + i)
        self.uplinks.append(up)
        return up

    def add_uplink(self, i: int) -> Uplink:
        """Create uplink ``i``: a new one (``i == len(uplinks)``) or one deleted earlier.

        The veth pair gets its addresses, is brought up on both ends and the client gets its
        route to the service address. Raises LabError if the uplink exists.
        """
        self._check_open()
        up = self._define_uplink(i)
        c, s = self.client_ns, self.server_ns
        self._ip(
            c, "link", "add", up.name, "type", "veth", "peer", "name", up.peer_name, "netns", s
        )
        self._ip(c, "addr", "add", f"{up.client_ip}/{up.prefix_len}", "dev", up.name)
        self._ip(s, "addr", "add", f"{up.server_ip}/{up.prefix_len}", "dev", up.peer_name)
        self._ip(s, "link", "set", up.peer_name, "up")  # first, so the client end has carrier
        self._ip(c, "link", "set", up.name, "up")
        self._add_service_route(up)
        return up

    def _add_service_route(self, up: Uplink) -> None:
        # (dst, metric) is the route's key: `replace` makes this idempotent per uplink.
        self._ip(
            self.client_ns,
            "route",
            "replace",
            f"{self.service_addr}/32",
            "via",
            up.server_ip,
            "dev",
            up.name,
            "metric",
            str(up.metric),
        )

    def delete_uplink(self, i: int) -> None:
        """Delete uplink ``i``'s veth pair (both ends vanish, sockets bound to it die)."""
        self._ip(self.client_ns, "link", "del", self.uplinks[i].name)

    def link_down(self, i: int) -> None:
        """Set the client end ``up{i}`` admin-down; the kernel flushes its routes."""
        self._ip(self.client_ns, "link", "set", self.uplinks[i].name, "down")

    def link_up(self, i: int) -> None:
        """Set ``up{i}`` admin-up and restore its address and service route (idempotent)."""
        up = self.uplinks[i]
        self._ip(self.client_ns, "link", "set", up.name, "up")
        self._ip(
            self.client_ns, "addr", "replace", f"{up.client_ip}/{up.prefix_len}", "dev", up.name
        )
        self._add_service_route(up)
        self._flush_neighbours(up)

    def _flush_neighbours(self, up: Uplink) -> None:
        # ARP entries that failed while the link was cut are only retried every second
        # (retrans_time); forget them so the restored link works at once.
        self._ip(self.client_ns, "neigh", "flush", "dev", up.name, check=False)
        self._ip(self.server_ns, "neigh", "flush", "dev", up.peer_name, check=False)

    def set_carrier(self, i: int, on: bool) -> None:
        """Carrier loss while ``up{i}`` stays admin-up: the server end ``sv{i}`` goes down.

        ``up{i}`` then shows NO-CARRIER, keeps its address and routes (marked linkdown), and
        sends through it succeed and vanish, like an unplugged cable or a dead modem. The server
        end loses its connected route meanwhile; the kernel restores it when it comes back up.

        Returns once ``up{i}`` shows the new carrier state: the kernel propagates it through its
        link watch, asynchronously (up to about a second later). Raises LabError after 5 s.
        """
        up = self.uplinks[i]
        self._ip(self.server_ns, "link", "set", up.peer_name, "up" if on else "down")
        deadline = time.monotonic() + 5.0
        while ("NO-CARRIER" in self.link_flags(up.name)) == on:
            if time.monotonic() > deadline:
                raise LabError(f"{up.name}: carrier still {'off' if on else 'on'} after 5 s")
            time.sleep(0.01)
        if on:
            self._flush_neighbours(up)

    def blackhole(self, i: int, on: bool = True) -> None:
        """Silently drop every IP packet into or out of ``up{i}`` (nftables, client side)."""
        name = self.uplinks[i].name
        rules = [f'iifname "{name}" drop', f'oifname "{name}" drop'] if on else None
        self._set_filter_table(f"eg_blackhole_{name}", rules)

    def drop_random(self, i: int, percent: int) -> None:
        """Drop ``percent``% of packets in each direction on ``up{i}`` (0 removes the rule)."""
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
        """Add a dummy interface in the client namespace: up, with an address, leading nowhere."""
        self._ip(self.client_ns, "link", "add", name, "type", "dummy")
        self._ip(self.client_ns, "addr", "add", cidr, "dev", name)
        self._ip(self.client_ns, "link", "set", name, "up")

    def link_flags(self, ifname: str, ns: str | None = None) -> set[str]:
        """The kernel's flags for an interface, e.g. {"UP", "LOWER_UP"} or {"NO-CARRIER", ...}.

        Empty set if the interface does not exist.
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
    ) -> WireGuardPair:
        """Start a :class:`WireGuardPair` in this lab (one per lab); stopped on :meth:`close`."""
        self._check_open()
        if self._wireguard:
            raise LabError("one WireGuardPair per lab (the tunnel addresses are fixed)")
        pair = WireGuardPair(
            self,
            server_port=server_port,
            client_endpoint=client_endpoint,
            client_port=client_port,
            keepalive_s=keepalive_s,
        )
        return pair

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, delete both namespaces and the workdir. Idempotent.

        Every step is attempted; the first failure is raised afterwards as LabError.
        """
        if self._closed:
            return
        # Written so that a second call (atexit after an interrupted close) finishes the job.
        errors: list[str] = []
        for pair in reversed(list(self._wireguard)):
            pair.close()
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


class WireGuardPair:
    """wireguard-go in both namespaces of a lab, each the other's only peer.

    Server: interface ``server_if`` with ``server_ip`` (10.B.250.1/24), ListenPort
    ``server_port`` on all addresses of the server namespace. Client: ``client_if`` with
    ``client_ip`` (10.B.250.2/24), its peer Endpoint ``client_endpoint`` (by default where the
    engarde client listens; point it at ``f"{lab.service_addr}:{server_port}"`` to go direct).
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
    ) -> None:
        n = next(_counter)
        self.lab = lab
        self.client_if = f"eg{os.getpid()}w{n}c"
        self.server_if = f"eg{os.getpid()}w{n}s"
        if len(self.client_if) > 15:
            raise LabError(f"interface name {self.client_if!r} longer than 15 characters")
        self.client_ip = f"10.{lab.octet}.{TUNNEL_OCTET}.2"
        self.server_ip = f"10.{lab.octet}.{TUNNEL_OCTET}.1"
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
        server_cmd += f" allowed-ips {self.client_ip}/32"
        lab.run(lab.server_ns, *server_cmd.split())

        client_cmd = f"wg set {self.client_if} private-key {client_key}"
        if client_port is not None:
            client_cmd += f" listen-port {client_port}"
        client_cmd += f" peer {self.server_public_key} allowed-ips {self.server_ip}/32"
        client_cmd += f" endpoint {self.client_endpoint}"
        if keepalive_s is not None:
            client_cmd += f" persistent-keepalive {keepalive_s}"
        lab.run(lab.client_ns, *client_cmd.split())

        for ns, ifname, ip in (
            (lab.server_ns, self.server_if, self.server_ip),
            (lab.client_ns, self.client_if, self.client_ip),
        ):
            lab._ip(ns, "addr", "add", f"{ip}/24", "dev", ifname)
            lab._ip(ns, "link", "set", ifname, "up")

    def _genkey(self, role: str) -> tuple[Path, str]:
        private = _run(["wg", "genkey"]).stdout.strip()
        public = _run(["wg", "pubkey"], input=private + "\n").stdout.strip()
        path = self.lab.workdir / f"{self.client_if[:-1]}-{role}.key"
        path.touch(mode=0o600)
        path.write_text(private + "\n")
        return path, public

    def _start(self, ns: str, ifname: str) -> None:
        log = self.lab.workdir / f"{ifname}.log"
        with log.open("wb") as out:
            proc = self.lab.popen(
                ns, "wireguard-go", "-f", ifname, env=WG_ENV, stdout=out, stderr=subprocess.STDOUT
            )
        self._procs.append(proc)
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

    def set_client_endpoint(self, endpoint: str) -> None:
        """Point the client's peer at another ``host:port`` (e.g. straight at the server)."""
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


__all__ = [
    "REPO_ROOT",
    "Lab",
    "LabError",
    "LabUnavailable",
    "PingProcess",
    "PingResult",
    "Uplink",
    "WireGuardPair",
    "lab_available",
    "parse_ping_output",
    "ping",
    "require_lab",
    "seq_ranges",
    "stop_process",
    "stop_processes",
]
