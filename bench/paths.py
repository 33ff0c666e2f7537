"""The paths a benchmark sends through: direct, the C relay pair, and engarde client + server.

Every path tells the load tools where to send (``send_to``, in the client namespace) and where
the receiver binds (``sink_bind``, in the server namespace), and exposes the PIDs of its relay
processes (``pids``: "client" and "server") for CPU and memory readings.

- ``direct``: sender -> 10.B.200.1:59301 through up0, no relay at all.
- ``crelay``: bench/c/relay.c in both namespaces (client fan-out over the first n uplinks).
- ``engarde``: ``python -m engarde client|server FILE.yml``; uplinks beyond the first n are
  listed in ``excludedInterfaces``; ``dedup=False`` writes ``dedup: false`` in both sections.
  Skipped with a note if ``python -m engarde --version`` fails.
- ``crelay-server`` / ``engarde-server``: the server relay alone; the load is simulated engarde
  clients (``udpgen clients``) in the client namespace, sending copies over the uplinks straight
  to the server relay (``send_to`` = 10.B.200.1:59402).
- ``engarde-wg``: engarde client + server with wireguard-go in both namespaces (WireGuard's
  Endpoint is the engarde client, the engarde server forwards to WireGuard's port); the load
  goes through the tunnel: sender -> 10.B.250.1:59310 (the server's tunnel address) -> sink.

The load does a WireGuard-shaped handshake before its data (``handshake``: udpgen
``--handshake`` for senders, ``--wg-respond`` for sinks; see bench/c/udpgen.c): engarde's server
serves a client address only once WireGuard answered its handshake, and the load's data must
take the server's hot path, not the rate-limited path of unproven addresses. Through a real
tunnel (``engarde-wg``) WireGuard does its own handshake.

``start()`` returns only once every used uplink has carried a datagram to the server namespace,
the server relay has handed datagrams on and, for engarde, its server logged every used uplink's
address as proven ("client #N: IP:PORT carrying the tunnel (...)") (:func:`wait_uplinks_ready`),
plus 0.3 s, so a measurement never includes start-up. ``stop()`` stops the processes by PID and
returns what they reported.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench.build import Tools
from bench.procs import (
    BenchError,
    Tool,
    cpu_seconds,
    cpu_seconds_exact,
    process_alive,
    rss_kib,
)
from bench.topology import (
    CLIENT_LISTEN,
    DASHBOARD,
    SERVER_LISTEN,
    SERVER_PORT,
    TUNNEL_PORT,
    WG_ADDR,
    WG_PORT,
    UplinkCounters,
    server_dst,
)
from lab import REPO_ROOT, Lab
from lab.netns import WireGuardPair, stop_process

READY_TIMEOUT_S = 20.0
WG_READY_TIMEOUT_S = 30.0  # a WireGuard handshake lost at start-up is retried after 5 s
PROBE_SETTLE_S = 0.3  # probe stream kept flowing after the path proved it relays end to end
ENGARDE_STOP_TIMEOUT_S = 5.0
PROBE_RID = 0x7072  # the readiness probe's receiver index ("pr")
PROBE_RATE = 500
PROBE_SIZE = 112

# engarde's server, when it starts serving an address (core/server.py, _prove)
PROVEN_LINE = re.compile(
    r"client #(\d+): (\d+\.\d+\.\d+\.\d+):(\d+) carrying the tunnel \(sent to [^;]*; ([^)]*)\)"
)


def clients_argv(lab: Lab, udpgen: str, send_to: str, used: list[int], *, clients: int,
                 rate: float, size: int, duration_s: float, rid: int,
                 handshake_timeout_s: float = 10.0) -> list[str]:
    """``udpgen clients``: ``clients`` simulated engarde clients, each with one socket per used
    uplink (bound to its address and device), copies of every datagram over all of them, after
    a handshake that every one of their sockets saw answered."""
    ups = [lab.uplink(i) for i in used]
    return [udpgen, "clients", "--to", send_to, "--clients", str(clients),
            "--bind", ",".join(up.client_ip for up in ups),
            "--dev", ",".join(up.name for up in ups),
            "--rate", f"{rate:.0f}", "--size", str(size), "--duration", str(duration_s),
            "--rid", str(rid), "--handshake", "--handshake-timeout-ms",
            str(int(handshake_timeout_s * 1000))]


class PathFailed(BenchError):
    """The path under test did not come up or died during a measurement."""


class RelayPath(ABC):
    kind: str = ""
    send_to: str = CLIENT_LISTEN
    sink_bind: str = WG_ADDR
    handshake: bool = True  # the load handshakes (udpgen --handshake / sinks --wg-respond)
    ready_timeout_s: float = READY_TIMEOUT_S

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int, *, dedup: bool = True) -> None:
        if n_uplinks > len(lab.uplinks):
            raise ValueError(f"lab has {len(lab.uplinks)} uplinks, {n_uplinks} wanted")
        self.lab = lab
        self.tools = tools
        self.n_uplinks = n_uplinks
        self.dedup = dedup  # engarde only: `dedup: false` in both sections when False
        self.used = list(range(n_uplinks))
        self.ready: dict[str, Any] = {}  # what wait_uplinks_ready saw, for the results file

    @property
    def label(self) -> str:
        return f"{self.kind} x{self.n_uplinks}"

    def sender_flags(self, timeout_s: float = 10.0) -> list[str]:
        """udpgen send/pingpong options for this path's load: the handshake, if it has one."""
        if not self.handshake:
            return []
        return ["--handshake", "--handshake-timeout-ms", str(int(timeout_s * 1000))]

    def sink_flags(self) -> list[str]:
        """udpgen sink/echo options: answer the load's handshake, if it has one."""
        return ["--wg-respond"] if self.handshake else []

    def probe_argv(self, duration_s: float) -> list[str]:
        """The readiness probe's sender (client namespace): PROBE_RATE datagrams/s."""
        return [self.tools.udpgen, "send", "--to", self.send_to, "--rate", str(PROBE_RATE),
                "--size", str(PROBE_SIZE), "--duration", str(duration_s), "--rid",
                str(PROBE_RID), *self.sender_flags(duration_s)]

    def proven(self) -> list[dict[str, Any]] | None:
        """Client addresses the server relay has proven so far; None if it proves nothing."""
        return None

    def diagnostics(self) -> str:
        """What to show when the path does not come up (relay logs)."""
        return ""

    @abstractmethod
    def start(self) -> None:
        """Start the relays and wait until every used uplink carries traffic (PathFailed)."""

    @abstractmethod
    def stop(self) -> dict[str, Any]:
        """Stop the relays; what they reported (may be empty)."""

    @abstractmethod
    def pids(self) -> dict[str, int]:
        """Relay processes by role ("client", "server"); empty for the direct path."""

    @abstractmethod
    def check_alive(self) -> None:
        """PathFailed if a relay process has exited."""

    def cpu(self) -> dict[str, tuple[float, float]]:
        """By role: (exact on-CPU seconds from schedstat, utime+stime seconds from stat)."""
        return {role: (cpu_seconds_exact(pid), cpu_seconds(pid))
                for role, pid in self.pids().items()}

    def rss(self) -> dict[str, int]:
        return {role: rss_kib(pid) for role, pid in self.pids().items()}

    def __enter__(self) -> RelayPath:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DirectPath(RelayPath):
    """No relay: the sender targets the service address; the kernel routes it through up0."""

    kind = "direct"
    sink_bind = f"0.0.0.0:{WG_PORT}"

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int = 1, *, dedup: bool = True) -> None:
        super().__init__(lab, tools, 1)
        self.send_to = f"{lab.service_addr}:{WG_PORT}"

    @property
    def label(self) -> str:
        return "direct"

    def start(self) -> None:
        pass

    def stop(self) -> dict[str, Any]:
        return {}

    def pids(self) -> dict[str, int]:
        return {}

    def check_alive(self) -> None:
        pass


class CRelayPath(RelayPath):
    """bench/c/relay.c: the practical limit for a straightforward user-space relay."""

    kind = "crelay"
    client_role = True  # False: the server relay alone (simulated clients send to it)

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int, *, dedup: bool = True) -> None:
        super().__init__(lab, tools, n_uplinks)
        self._tools: dict[str, Tool] = {}

    @property
    def label(self) -> str:
        return f"C relay x{self.n_uplinks}"

    def start(self) -> None:
        lab, relay = self.lab, self.tools.relay
        server = Tool(lab, lab.server_ns, [relay, "server", "--listen", SERVER_LISTEN, "--dst",
                                           WG_ADDR, "--client-timeout", "30"], "relay server")
        self._tools["server"] = server
        if self.client_role:
            argv = [relay, "client", "--listen", CLIENT_LISTEN]
            for i in self.used:
                up = lab.uplink(i)
                argv += ["--uplink", f"{up.name},{up.client_ip},{server_dst(lab)}"]
            self._tools["client"] = Tool(lab, lab.client_ns, argv, "relay client")
        try:
            for tool in self._tools.values():
                tool.wait_ready("relay: ready")
            self.ready = wait_uplinks_ready(self, self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for role, tool in self._tools.items():
            try:
                results[role] = tool.finish()
            except BenchError as exc:
                results[role] = {"error": str(exc)}
        self._tools.clear()
        return results

    def pids(self) -> dict[str, int]:
        return {role: tool.pid for role, tool in self._tools.items()}

    def check_alive(self) -> None:
        for role, tool in self._tools.items():
            if not tool.alive():
                raise PathFailed(f"C relay {role} exited: {tool.stderr_text[-300:]!r}")


class CRelayServerPath(CRelayPath):
    """The C relay's server alone; simulated engarde clients (udpgen clients) send to it."""

    kind = "crelay-server"
    client_role = False

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int, *, dedup: bool = True) -> None:
        super().__init__(lab, tools, n_uplinks)
        self.send_to = server_dst(lab)

    @property
    def label(self) -> str:
        return "C relay server"

    def probe_argv(self, duration_s: float) -> list[str]:
        return clients_argv(self.lab, self.tools.udpgen, self.send_to, self.used, clients=1,
                            rate=PROBE_RATE, size=PROBE_SIZE, duration_s=duration_s,
                            rid=PROBE_RID, handshake_timeout_s=duration_s)


def engarde_version() -> tuple[bool, str]:
    """(True, version) if ``python -m engarde --version`` works here, else (False, why not)."""
    argv = [sys.executable, "-m", "engarde", "--version"]
    try:
        proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                              check=False)
    except subprocess.TimeoutExpired:
        return False, "`python -m engarde --version` did not answer within 60 s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return False, f"`python -m engarde --version` failed ({proc.returncode}): {last}"
    return True, proc.stdout.strip() or proc.stderr.strip()


class EngardePath(RelayPath):
    """The product: ``python -m engarde client|server FILE.yml`` in the two namespaces."""

    kind = "engarde"
    roles: tuple[str, ...] = ("server", "client")
    excluded_patterns: tuple[str, ...] = ()  # excludedInterfaces beyond the unused uplinks

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int, *, dedup: bool = True) -> None:
        super().__init__(lab, tools, n_uplinks, dedup=dedup)
        self._procs: dict[str, subprocess.Popen[Any]] = {}
        self._logs: dict[str, Path] = {}

    @property
    def label(self) -> str:
        return f"engarde x{self.n_uplinks}{'' if self.dedup else ' dedup off'}"

    def write_configs(self) -> dict[str, Path]:
        lab = self.lab
        excluded = [up.name for up in lab.uplinks if up.index not in self.used]
        excluded += self.excluded_patterns
        dedup = "" if self.dedup else "  dedup: false\n"
        client = lab.workdir / "engarde-client.yml"
        client.write_text(
            "client:\n"
            "  description: engarde bench client\n"
            f'  listenAddr: "{CLIENT_LISTEN}"\n'
            f'  dstAddr: "{server_dst(lab)}"\n'
            f"  excludedInterfaces: [{', '.join(f'{name!r}' for name in excluded)}]\n"
            f"{dedup}"
        )
        server = lab.workdir / "engarde-server.yml"
        server.write_text(
            "server:\n"
            "  description: engarde bench server\n"
            f'  listenAddr: "{SERVER_LISTEN}"\n'
            f'  dstAddr: "{WG_ADDR}"\n'
            "  clientTimeout: 30\n"
            f"{dedup}"
        )
        return {"client": client, "server": server}

    def start_processes(self) -> None:
        lab = self.lab
        configs = self.write_configs()
        namespaces = {"server": lab.server_ns, "client": lab.client_ns}
        for role in self.roles:
            log = lab.workdir / f"engarde-{role}-{time.monotonic_ns()}.log"
            self._logs[role] = log
            with log.open("wb") as out:
                self._procs[role] = lab.popen_python(
                    namespaces[role], "-m", "engarde", role, str(configs[role]),
                    stdout=out, stderr=subprocess.STDOUT,
                )

    def start(self) -> None:
        try:
            self.start_processes()
            self.ready = wait_uplinks_ready(self, self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def wait_listening(self, timeout_s: float) -> None:
        """Until every role logged its "listening" line (start-up done); PathFailed if not."""
        deadline = time.monotonic() + timeout_s
        while not all(f"{role} listening on" in self.log_tail(role, 1 << 20)
                      for role in self.roles):
            self.check_alive()
            if time.monotonic() > deadline:
                raise PathFailed(f"{self.label}: not listening after {timeout_s} s: "
                                 f"{self.diagnostics()}")
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for role, proc in self._procs.items():
            code = stop_process(proc, ENGARDE_STOP_TIMEOUT_S)
            results[role] = {"exit_code": code}
            if code not in (0, -15, None):
                results[role]["log_tail"] = self.log_tail(role)
        self._procs.clear()
        return results

    def pids(self) -> dict[str, int]:
        return {role: proc.pid for role, proc in self._procs.items()}

    def check_alive(self) -> None:
        for role, proc in self._procs.items():
            if proc.poll() is not None:
                raise PathFailed(f"engarde {role} exited with code {proc.returncode}: "
                                 f"{self.log_tail(role)}")

    def log_tail(self, role: str, chars: int = 600) -> str:
        log = self._logs.get(role)
        if log is None or not log.exists():
            return ""
        return log.read_text(errors="replace")[-chars:]

    def proven(self) -> list[dict[str, Any]] | None:
        """Every "carrying the tunnel" line of the server's log so far (at most 30 lines come
        at once, then 5 a second: engarde rate-limits them)."""
        return [{"client": int(m[1]), "address": f"{m[2]}:{m[3]}", "ip": m[2], "how": m[4]}
                for m in PROVEN_LINE.finditer(self.log_tail("server", 1 << 22))]

    def diagnostics(self) -> str:
        return " | ".join(f"{role} log: {self.log_tail(role, 1500)!r}" for role in self._logs)


class EngardeWebPath(EngardePath):
    """engarde with the dashboard on in both roles (webManager at DASHBOARD in each namespace)."""

    kind = "engarde-web"

    @property
    def label(self) -> str:
        return f"engarde x{self.n_uplinks} with dashboards"

    def write_configs(self) -> dict[str, Path]:
        configs = super().write_configs()
        for path in configs.values():
            path.write_text(path.read_text() + f'  webManager:\n    listenAddr: "{DASHBOARD}"\n')
        return configs


class EngardeServerPath(EngardePath):
    """engarde's server alone; simulated engarde clients (udpgen clients) send to it."""

    kind = "engarde-server"
    roles = ("server",)

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int, *, dedup: bool = True) -> None:
        super().__init__(lab, tools, n_uplinks, dedup=dedup)
        self.send_to = server_dst(lab)

    @property
    def label(self) -> str:
        return f"engarde server{'' if self.dedup else ' dedup off'}"

    def probe_argv(self, duration_s: float) -> list[str]:
        return clients_argv(self.lab, self.tools.udpgen, self.send_to, self.used, clients=1,
                            rate=PROBE_RATE, size=PROBE_SIZE, duration_s=duration_s,
                            rid=PROBE_RID, handshake_timeout_s=duration_s)


class WireGuardEngardePath(EngardePath):
    """wireguard-go in both namespaces (lab.start_wireguard: the client's Endpoint is the engarde
    client, the server listens on WG_PORT where the engarde server forwards), engarde between
    them; the load crosses the tunnel: sender -> the server's tunnel address, TUNNEL_PORT.

    A new WireGuard pair for every start, so each run begins with a real handshake through the
    engarde pair that runs now (a session from an earlier engarde server would be unknown to
    this one). Roles for CPU readings: client, server, wg_client, wg_server.
    """

    kind = "engarde-wg"
    handshake = False  # WireGuard handshakes itself
    excluded_patterns = ("eg*w*",)  # the WireGuard interfaces (eg<pid>w<n>c): never an uplink
    ready_timeout_s = WG_READY_TIMEOUT_S

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int, *, dedup: bool = True) -> None:
        super().__init__(lab, tools, n_uplinks, dedup=dedup)
        self.wg: WireGuardPair | None = None

    @property
    def label(self) -> str:
        return f"wireguard-go + engarde x{self.n_uplinks}{'' if self.dedup else ' dedup off'}"

    def start(self) -> None:
        try:
            self.start_processes()
            # WireGuard's first handshake must find engarde up: a lost one is retried after 5 s
            self.wait_listening(READY_TIMEOUT_S)
            self.wg = self.lab.start_wireguard(server_port=WG_PORT, client_endpoint=CLIENT_LISTEN)
            self.send_to = self.sink_bind = f"{self.wg.server_ip}:{TUNNEL_PORT}"
            self.ready = wait_uplinks_ready(self, self.ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, Any]:
        results = super().stop()
        if self.wg is not None:
            self.wg.close()
            self.wg = None
        return results

    def pids(self) -> dict[str, int]:
        pids = super().pids()
        if self.wg is not None:
            pids.update(wg_client=self.wg.client_pid, wg_server=self.wg.server_pid)
        return pids

    def check_alive(self) -> None:
        super().check_alive()
        if self.wg is not None:
            for role, pid in (("client", self.wg.client_pid), ("server", self.wg.server_pid)):
                if not process_alive(pid):
                    raise PathFailed(f"wireguard-go ({role}) exited: {self.diagnostics()}")

    def diagnostics(self) -> str:
        text = super().diagnostics()
        if self.wg is not None:
            text += f" | wg show server: {self.wg.show('server')!r}"
        return text


PATHS: dict[str, type[RelayPath]] = {
    "direct": DirectPath,
    "crelay": CRelayPath,
    "engarde": EngardePath,
    "engarde-web": EngardeWebPath,
    "crelay-server": CRelayServerPath,
    "engarde-server": EngardeServerPath,
    "engarde-wg": WireGuardEngardePath,
}


def wait_uplinks_ready(path: RelayPath, timeout_s: float) -> dict[str, Any]:
    """Send a light probe stream through ``path`` until every used uplink has carried a datagram
    and, for engarde, its server logged every used uplink's address as proven.

    The probe does the path's handshake (so engarde's server proves the addresses) against a
    throwaway sink where WireGuard would be, so nothing answers with ICMP errors. Raises
    PathFailed (with what each uplink counted, what was proven, the relays' logs) after
    ``timeout_s``, if the probe's handshake fails or if a relay exits. If an uplink the path must
    not use carries traffic, that is a failure too. Returns what it saw.
    """
    lab, udpgen = path.lab, path.tools.udpgen
    all_idx = [up.index for up in lab.uplinks]
    need = {lab.uplink(i).client_ip for i in path.used}
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    with UplinkCounters(lab, all_idx, SERVER_PORT) as counters:
        sink = Tool(lab, lab.server_ns, [udpgen, "sink", "--bind", path.sink_bind,
                                         *path.sink_flags()], "probe sink")
        sender: subprocess.Popen[Any] | None = None
        sender_err = lab.workdir / f"probe-sender-{time.monotonic_ns()}.err"
        try:
            sink.wait_ready("udpgen: ready")
            with sender_err.open("wb") as err:
                sender = lab.popen(lab.client_ns, *path.probe_argv(timeout_s),
                                   stdout=subprocess.DEVNULL, stderr=err)
            counts: dict[int, int] = {}
            proven: list[dict[str, Any]] | None = None
            # A relay path is ready when every uplink carries copies *and* the server relay
            # hands them on: copies reach sv{i} even while the server relay is still starting
            # (they are then lost), so uplink counts alone would start measurements early.
            relayed = path.kind != "direct"
            while True:
                path.check_alive()
                counts = counters.read()
                proven = path.proven()
                proven_ips = {p["ip"] for p in proven} if proven is not None else need
                if (all(counts[i] > 0 for i in path.used)
                        and (not relayed or counters.delivered > 0) and need <= proven_ips):
                    break
                if sender.poll() is not None and sender.returncode != 0:
                    raise PathFailed(f"{path.label}: the probe sender failed (exit code "
                                     f"{sender.returncode}): "
                                     f"{sender_err.read_text(errors='replace').strip()} "
                                     f"{path.diagnostics()}")
                if time.monotonic() > deadline:
                    missing = sorted(need - proven_ips)
                    raise PathFailed(
                        f"{path.label}: not ready after {timeout_s} s: datagrams per uplink "
                        f"{counts}, handed on by the server relay {counters.delivered}"
                        + (f"; the server never proved {missing} (proven: {proven})"
                           if missing else "")
                        + f" {path.diagnostics()}")
                time.sleep(0.05)
            if relayed:
                # the server relay is relaying now: let a few more probes through so one-off
                # start-up work right after "ready" is behind us too
                time.sleep(PROBE_SETTLE_S)
            stray = {i: n for i, n in counts.items() if i not in path.used and n > 0}
            if stray:
                raise PathFailed(f"{path.label}: excluded uplinks carried traffic: {stray}")
        finally:
            if sender is not None:
                lab.stop(sender)
            sink.kill()
    return {"ready_s": round(time.monotonic() - t0, 3), "uplink_datagrams": counts,
            "delivered": counters.delivered, "proven": proven}
