"""The paths a benchmark sends through: direct, the C relay pair, and engarde client + server.

Every path tells the load tools where to send (``send_to``, in the client namespace) and where
the receiver binds (``sink_bind``, in the server namespace), and exposes the PIDs of its relay
processes (``pids``: "client" and "server") for CPU and memory readings.

- ``direct``: sender -> 10.B.200.1:59301 through up0, no relay at all.
- ``crelay``: bench/c/relay.c in both namespaces (client fan-out over the first n uplinks).
- ``engarde``: ``python -m engarde client|server FILE.yml``; uplinks beyond the first n are
  listed in ``excludedInterfaces``. Skipped with a note if ``python -m engarde --version`` fails.

``start()`` returns only once every used uplink has carried a datagram to the server namespace
and the server relay has handed datagrams on (:func:`wait_uplinks_ready`), plus 0.3 s, so a
measurement never includes start-up. ``stop()`` stops the
processes by PID and returns what they reported.
"""

from __future__ import annotations

import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from bench.build import Tools
from bench.procs import BenchError, Tool, cpu_seconds, cpu_seconds_exact, rss_kib
from bench.topology import (
    CLIENT_LISTEN,
    SERVER_LISTEN,
    SERVER_PORT,
    WG_ADDR,
    WG_PORT,
    UplinkCounters,
    server_dst,
)
from lab import REPO_ROOT, Lab
from lab.netns import stop_process

READY_TIMEOUT_S = 20.0
PROBE_SETTLE_S = 0.3  # probe stream kept flowing after the path proved it relays end to end
ENGARDE_STOP_TIMEOUT_S = 5.0


class PathFailed(BenchError):
    """The path under test did not come up or died during a measurement."""


class RelayPath(ABC):
    kind: str = ""
    send_to: str = CLIENT_LISTEN
    sink_bind: str = WG_ADDR

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int) -> None:
        if n_uplinks > len(lab.uplinks):
            raise ValueError(f"lab has {len(lab.uplinks)} uplinks, {n_uplinks} wanted")
        self.lab = lab
        self.tools = tools
        self.n_uplinks = n_uplinks
        self.used = list(range(n_uplinks))

    @property
    def label(self) -> str:
        return f"{self.kind} x{self.n_uplinks}"

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

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int = 1) -> None:
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

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int) -> None:
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
        argv = [relay, "client", "--listen", CLIENT_LISTEN]
        for i in self.used:
            up = lab.uplink(i)
            argv += ["--uplink", f"{up.name},{up.client_ip},{server_dst(lab)}"]
        self._tools["client"] = Tool(lab, lab.client_ns, argv, "relay client")
        try:
            for tool in self._tools.values():
                tool.wait_ready("relay: ready")
            wait_uplinks_ready(self, READY_TIMEOUT_S)
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

    def __init__(self, lab: Lab, tools: Tools, n_uplinks: int) -> None:
        super().__init__(lab, tools, n_uplinks)
        self._procs: dict[str, subprocess.Popen[Any]] = {}
        self._logs: dict[str, Path] = {}

    @property
    def label(self) -> str:
        return f"engarde x{self.n_uplinks}"

    def write_configs(self) -> dict[str, Path]:
        lab = self.lab
        excluded = [up.name for up in lab.uplinks if up.index not in self.used]
        client = lab.workdir / "engarde-client.yml"
        client.write_text(
            "client:\n"
            "  description: engarde bench client\n"
            f'  listenAddr: "{CLIENT_LISTEN}"\n'
            f'  dstAddr: "{server_dst(lab)}"\n'
            f"  excludedInterfaces: [{', '.join(excluded)}]\n"
        )
        server = lab.workdir / "engarde-server.yml"
        server.write_text(
            "server:\n"
            "  description: engarde bench server\n"
            f'  listenAddr: "{SERVER_LISTEN}"\n'
            f'  dstAddr: "{WG_ADDR}"\n'
            "  clientTimeout: 30\n"
        )
        return {"client": client, "server": server}

    def start(self) -> None:
        lab = self.lab
        configs = self.write_configs()
        try:
            for role, ns in (("server", lab.server_ns), ("client", lab.client_ns)):
                log = lab.workdir / f"engarde-{role}-{time.monotonic_ns()}.log"
                self._logs[role] = log
                with log.open("wb") as out:
                    self._procs[role] = lab.popen_python(
                        ns, "-m", "engarde", role, str(configs[role]),
                        stdout=out, stderr=subprocess.STDOUT,
                    )
            wait_uplinks_ready(self, READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

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


PATHS: dict[str, type[RelayPath]] = {
    "direct": DirectPath,
    "crelay": CRelayPath,
    "engarde": EngardePath,
}


def wait_uplinks_ready(path: RelayPath, timeout_s: float) -> None:
    """Send a light probe stream through ``path`` until every used uplink has carried a datagram.

    A throwaway sink listens where WireGuard would, so nothing answers with ICMP errors. Raises
    PathFailed (with what each uplink counted) after ``timeout_s`` or if a relay exits. If an
    uplink the path must not use carries traffic, that is a failure too.
    """
    lab, udpgen = path.lab, path.tools.udpgen
    all_idx = [up.index for up in lab.uplinks]
    deadline = time.monotonic() + timeout_s
    with UplinkCounters(lab, all_idx, SERVER_PORT) as counters:
        sink = Tool(lab, lab.server_ns, [udpgen, "sink", "--bind", path.sink_bind], "probe sink")
        sender: subprocess.Popen[Any] | None = None
        try:
            sink.wait_ready("udpgen: ready")
            sender = lab.popen(lab.client_ns, udpgen, "send", "--to", path.send_to, "--rate",
                               "500", "--size", "112", "--duration", str(timeout_s), "--rid",
                               "0x7072", stdout=subprocess.DEVNULL)
            counts: dict[int, int] = {}
            # A relay path is ready when every uplink carries copies *and* the server relay
            # hands them on: copies reach sv{i} even while the server relay is still starting
            # (they are then lost), so uplink counts alone would start measurements early.
            relayed = path.kind != "direct"
            while True:
                path.check_alive()
                counts = counters.read()
                if all(counts[i] > 0 for i in path.used) and (
                        not relayed or counters.delivered > 0):
                    break
                if time.monotonic() > deadline:
                    raise PathFailed(f"{path.label}: not every uplink carried traffic after "
                                     f"{timeout_s} s (datagrams per uplink: {counts}, handed "
                                     f"on by the server relay: {counters.delivered})")
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
