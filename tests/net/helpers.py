"""Driving the engarde processes and the UDP tools inside a :class:`lab.Lab`, and watching what
crosses each uplink from the outside (nftables counters and tcpdump captures in the server
namespace).

Everything here runs inside the lab's namespaces or on loopback, is started through the lab (so
it is stopped by PID on teardown) and writes its files under ``lab.workdir``. Waits poll for an
observable event with a generous deadline and fail with the relevant log tail; nothing sleeps
for a fixed time to "let things settle".

Ports: WireGuard (or the UDP sender) talks to the engarde client on 127.0.0.1:59401 in the client
namespace; the engarde server listens on 59402 in the server namespace and forwards to the dedup
echo on 127.0.0.1:7000 (or to WireGuard on 59301).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import ClientSide, Lab

CLIENT_LISTEN = "127.0.0.1:59401"
SERVER_PORT = 59402
ECHO_ADDR = "127.0.0.1:7000"
WAIT_S = 15.0  # generous: only there to turn a hang into a failure
POLL_S = 0.02
SEQ = struct.Struct("!Q8s")  # lab.udp_tools send: sequence number, run id


def require_tool(name: str) -> None:
    """Skip when a command is missing; under CI=true that is a failure instead."""
    if shutil.which(name) is not None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{name} is required on CI (CI=true)", pytrace=False)
    pytest.skip(f"{name} not installed")


def wait_until(
    predicate: Callable[[], Any],
    what: str,
    *,
    timeout_s: float = WAIT_S,
    details: Callable[[], str] = lambda: "",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = details()
            pytest.fail(
                f"timed out after {timeout_s} s waiting for {what}"
                + (f"\n{extra}" if extra else "")
            )
        time.sleep(POLL_S)


# ---------------------------------------------------------------------------------------------
# Logs


class LogFile:
    """A process's log file, read as it grows. Offsets (``mark()``) let a wait ignore old lines."""

    def __init__(self, path: Path, proc: subprocess.Popen[Any] | None = None) -> None:
        self.path = path
        self.proc = proc

    def text(self, since: int = 0) -> str:
        try:
            with self.path.open("rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.path.name} (last {chars} chars):\n{self.text()[-chars:]}"

    def wait_for(self, pattern: str, *, since: int = 0, timeout_s: float = WAIT_S) -> re.Match[str]:
        """Wait for a line matching ``pattern`` (a regex) written after offset ``since``."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            match = regex.search(self.text(since))
            if match is None and self.proc is not None and self.proc.poll() is not None:
                pytest.fail(
                    f"process exited ({self.proc.returncode}) before logging {pattern!r}\n"
                    + self.tail()
                )
            return match

        result: re.Match[str] = wait_until(
            found, f"{pattern!r} in {self.path.name}", timeout_s=timeout_s, details=self.tail
        )
        return result

    def findall(self, pattern: str, since: int = 0) -> list[Any]:
        return re.findall(pattern, self.text(since))


# ---------------------------------------------------------------------------------------------
# engarde


def write_config(
    lab: Lab,
    name: str = "engarde.yml",
    *,
    client: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> Path:
    """Write an engarde.yml into the lab's workdir (sections as given)."""
    doc: dict[str, Any] = {}
    if client is not None:
        doc["client"] = client
    if server is not None:
        doc["server"] = server
    path = lab.workdir / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def server_section(dst: str = ECHO_ADDR, *, wireguard_only: bool = False) -> dict[str, Any]:
    """The server section: listen on every address, forward to ``dst``.

    The UDP tools' datagrams are not shaped like WireGuard messages; a server that filters
    those (``relayNonWireGuard``, off by default) is told to relay them unless
    ``wireguard_only``.
    """
    section: dict[str, Any] = {"listenAddr": f"0.0.0.0:{SERVER_PORT}", "dstAddr": dst}
    if not wireguard_only:
        section["relayNonWireGuard"] = True
    return section


def wireguard_client_section(lab: Lab) -> dict[str, Any]:
    """The client section for a lab with wireguard-go (lab.start_wireguard) behind it."""
    return {
        "listenAddr": CLIENT_LISTEN,
        "dstAddr": f"{lab.service_addr}:{SERVER_PORT}",
        # The WireGuard interfaces are eg<pid>w<n>c / ...s: never an uplink (a loop).
        "excludedInterfaces": ["eg*w*"],
    }


def default_config(lab: Lab, **client_extra: Any) -> Path:
    """Client relaying to the service address, server forwarding to the dedup echo."""
    return write_config(
        lab,
        client={
            "listenAddr": CLIENT_LISTEN,
            "dstAddr": f"{lab.service_addr}:{SERVER_PORT}",
            **client_extra,
        },
        server=server_section(),
    )


def server_saw(client_ip: str, sent_to: str | None = None) -> str:
    """Regex for the server's log line about a client address it now serves (group 1: its port).

    "client #N: IP:PORT carrying the tunnel (sent to X; how it was proven)".
    """
    to = re.escape(sent_to) if sent_to is not None else r"[^;)]*"
    return rf"client #\d+: {re.escape(client_ip)}:(\d+) carrying the tunnel \(sent to {to}[;)]"


@dataclass
class Engarde:
    """One running ``python -m engarde ROLE`` and its stderr log (debug level)."""

    role: str
    proc: subprocess.Popen[Any]
    log: LogFile


_engarde_counter = iter(range(1_000_000))


def start_engarde(lab: Lab, role: str, config: Path, *, ns: str | None = None) -> Engarde:
    """Start ``python -m engarde ROLE CONFIG --log-level debug`` and wait until it listens."""
    ns = ns or (lab.client_ns if role == "client" else lab.server_ns)
    path = lab.workdir / f"{role}-{next(_engarde_counter)}.log"
    with path.open("wb") as err:
        proc = lab.popen_python(
            ns,
            "-m",
            "engarde",
            role,
            str(config),
            "--log-level",
            "debug",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    log = LogFile(path, proc)
    log.wait_for(rf"{role} listening on ")
    section = (yaml.safe_load(config.read_text()) or {}).get(role) or {}
    if section.get("webManager"):  # the dashboard starts after the relay
        log.wait_for(r"dashboard on ")
    return Engarde(role, proc, log)


def start_server(lab: Lab, config: Path) -> Engarde:
    return start_engarde(lab, "server", config)


def start_client(lab: Lab, config: Path, uplinks: Iterable[int] = (0, 1, 2)) -> Engarde:
    """Start the client and wait until each of ``uplinks`` has its socket."""
    client = start_engarde(lab, "client", config)
    for i in uplinks:
        wait_for_socket(client, i)
    return client


def restart_with_usr2(lab: Lab, engarde: Engarde) -> Engarde:
    """Restart the documented way (docs/restart.md): SIGUSR2 makes ``engarde`` start its
    successor (same command line), which takes over once its relay runs; the old process
    forwards what is left for a grace period and exits (see :func:`wait_handed_over`).

    Returns the successor, adopted by the lab (stopped by PID on teardown). It inherited
    stderr: its lines go to the same log file."""
    mark = engarde.log.mark()
    assert engarde.proc.send_signal(signal.SIGUSR2) is None
    found = engarde.log.wait_for(r"SIGUSR2: started the successor \(pid (\d+)\)", since=mark)
    successor: Any = lab.adopt(int(found.group(1)))
    log = LogFile(engarde.log.path, successor)
    log.wait_for(r"took over: forwarding what is left", since=mark)
    log.wait_for(rf"{engarde.role} listening on ", since=mark)
    return Engarde(engarde.role, successor, log)


def wait_handed_over(lab: Lab, old: Engarde, timeout_s: float = 30.0) -> None:
    """Wait until ``old`` exited after handing over: exit code 0, no traceback."""
    try:
        code = old.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"engarde {old.role} still running after the handover\n{old.log.tail()}")
    lab.stop(old.proc)
    assert code == 0, f"engarde {old.role} exit code {code}\n{old.log.tail()}"
    assert re.search(r"handed over to pid \d+: exiting", old.log.text()), old.log.tail()
    assert "Traceback" not in old.log.text(), old.log.tail()


def wait_for_socket(client: Engarde, i: int, since: int = 0, *, ipv6: bool = False) -> int:
    """Wait for the client's "upI: socket IP:PORT -> ..." debug line (an IPv6 path's with
    `ipv6`: "[IP]:PORT"); returns the local port."""
    address = r"\[[0-9a-f:]+\]" if ipv6 else r"[0-9.]+"
    match = client.log.wait_for(rf"up{i}: socket {address}:(\d+) -> ", since=since)
    return int(match.group(1))


def stop_gracefully(lab: Lab, proc: subprocess.Popen[Any], timeout_s: float = 8.0) -> int | None:
    """SIGTERM and wait (SIGKILL only after ``timeout_s``); the exit code, negative if killed."""
    return lab.stop(proc, timeout_s=timeout_s)


# ---------------------------------------------------------------------------------------------
# The dashboard's API, from inside a namespace

WEB = "127.0.0.1:9001"


def http(
    lab: Lab,
    ns: str,
    path: str,
    *,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    auth: tuple[str, str] | None = None,
    web: str = WEB,
) -> tuple[int, dict[str, Any]]:
    """An HTTP request to the dashboard at ``web`` inside namespace ``ns``: (status, JSON)."""
    code = (
        "import base64, json, sys, urllib.request, urllib.error\n"
        f"req = urllib.request.Request('http://{web}{path}', method={method!r},\n"
        f"    data={json.dumps(body).encode() if body is not None else None!r},\n"
        "    headers={'Content-Type': 'application/json'})\n"
        f"auth = {auth!r}\n"
        "if auth:\n"
        "    token = base64.b64encode(f'{auth[0]}:{auth[1]}'.encode()).decode()\n"
        "    req.add_header('Authorization', 'Basic ' + token)\n"
        "try:\n"
        "    answer = urllib.request.urlopen(req, timeout=10)\n"
        "    print(answer.status); print(answer.read().decode())\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code); print(exc.read().decode())\n"
    )
    out = lab.run(ns, sys.executable, "-c", code).stdout
    status, _, text = out.partition("\n")
    doc: dict[str, Any] = json.loads(text) if text.strip() else {}
    return int(status), doc


def api(lab: Lab, ns: str, path: str, web: str = WEB) -> dict[str, Any]:
    """GET the dashboard's JSON at ``path`` (must answer 200)."""
    status, doc = http(lab, ns, path, web=web)
    assert status == 200, (path, status, doc)
    return doc


# ---------------------------------------------------------------------------------------------
# UDP tools (lab.udp_tools)


def kernel_udp_counters(lab: Lab, ns: str) -> dict[str, int]:
    """The namespace's UDP counters from /proc/net/snmp (RcvbufErrors: a socket was full)."""
    lines = [ln.split() for ln in lab.run(ns, "cat", "/proc/net/snmp").stdout.splitlines()]
    names, values = [ln for ln in lines if ln and ln[0] == "Udp:"][:2]
    return {k: int(v) for k, v in zip(names[1:], values[1:], strict=True)}


def counters_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed between two flat counter dicts (for failure messages)."""
    return {
        k: v - before.get(k, 0)
        for k, v in after.items()
        if isinstance(v, int) and v != before.get(k, 0)
    }


class Echo:
    """``udp_tools echo --dedup`` in the server namespace: WireGuard's anti-replay, in effect."""

    def __init__(self, lab: Lab, listen: str = ECHO_ADDR) -> None:
        self.lab = lab
        self.out = lab.workdir / f"echo-{listen.replace(':', '_')}.out"
        with self.out.open("wb") as out:
            self.proc = lab.popen_python(
                lab.server_ns,
                "-m",
                "lab.udp_tools",
                "echo",
                "--listen",
                listen,
                "--dedup",
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        LogFile(self.out, self.proc).wait_for(r'"listening"')

    def stop(self) -> dict[str, int]:
        """Stop it and return its statistics: received, unique, duplicates, replied."""
        self.lab.stop(self.proc)
        for line in reversed(self.out.read_text().splitlines()):
            if line.startswith("{") and '"received"' in line:
                stats: dict[str, int] = json.loads(line)
                return stats
        pytest.fail(f"echo printed no statistics:\n{self.out.read_text()[-2000:]}")


_sender_counter = iter(range(1_000_000))


class Sender:
    """``udp_tools send`` in the client namespace towards the engarde client, in the background."""

    def __init__(
        self,
        lab: Lab,
        count: int,
        interval_ms: float,
        *,
        to: str = CLIENT_LISTEN,
        grace_ms: float = 1500,
        size: int = 100,
    ) -> None:
        self.lab = lab
        self.count = count
        n = next(_sender_counter)
        self.report_path = lab.workdir / f"send-{n}.json"
        self.err_path = lab.workdir / f"send-{n}.err"
        with self.err_path.open("wb") as err:
            self.proc = lab.popen_python(
                lab.client_ns,
                "-m",
                "lab.udp_tools",
                "send",
                "--to",
                to,
                "--count",
                str(count),
                "--interval-ms",
                f"{interval_ms:g}",
                "--grace-ms",
                f"{grace_ms:g}",
                "--size",
                str(size),
                "--report",
                str(self.report_path),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self._bound_s = count * interval_ms / 1000 + grace_ms / 1000 + 30

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self) -> dict[str, Any]:
        """Wait for the run to end (generous bound) and return its JSON report."""
        try:
            self.proc.wait(timeout=self._bound_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"udp_tools send did not finish within {self._bound_s:.0f} s")
        assert self.proc.returncode == 0, self.err_path.read_text()[-2000:]
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        return report


class WgSink:
    """``udp_tools wg-sink`` (fake WireGuard server) in the server namespace by default.

    Listens on ECHO_ADDR unless told otherwise, so :func:`default_config` forwards to it. With
    ``echo`` it answers every first copy of a data datagram, as a WireGuard peer answering
    traffic would. ``addr`` and ``index`` (its receiver index) come from its "listening" line.
    """

    def __init__(
        self,
        lab: Lab,
        listen: str = ECHO_ADDR,
        *,
        echo: bool = True,
        index: int | None = None,
        ns: str | None = None,
    ) -> None:
        self.lab = lab
        n = next(_sender_counter)
        self.out = lab.workdir / f"wg-sink-{n}.out"
        args = ["-m", "lab.udp_tools", "wg-sink", "--listen", listen]
        if echo:
            args.append("--echo")
        if index is not None:
            args += ["--index", str(index)]
        with self.out.open("wb") as out:
            self.proc = lab.popen_python(
                ns or lab.server_ns, *args, stdout=out, stderr=subprocess.STDOUT
            )
        match = LogFile(self.out, self.proc).wait_for(r'\{"listening".*\}')
        hello = json.loads(match.group(0))
        self.addr: str = hello["listening"]
        self.index: int = hello["index"]

    def stop(self) -> dict[str, Any]:
        """Stop it and return its statistics: received, unique, duplicates, handshakes,
        replied, other, send_errors, sessions, index, by_source {"IP:PORT": {received, first}}.
        """
        self.lab.stop(self.proc)
        for line in reversed(self.out.read_text().splitlines()):
            if line.startswith("{") and '"received"' in line:
                stats: dict[str, Any] = json.loads(line)
                return stats
        pytest.fail(f"wg-sink printed no statistics:\n{self.out.read_text()[-2000:]}")


class WgSender:
    """``udp_tools wg-send`` (fake WireGuard client) in the client namespace by default,
    towards the engarde client, in the background.

    It handshakes first (``wait_handshake()``), then sends ``count`` data datagrams. For a test
    that changes impairments mid-run: ``sent_now()`` is the exact count sent so far (SIGUSR1
    -> a progress line), ``pause()`` stops the sending and returns the exact count, ``resume()``
    goes on at the same pace; ``stop()`` ends a long run early and returns its report.
    """

    def __init__(
        self,
        lab: Lab,
        count: int,
        interval_ms: float,
        *,
        to: str = CLIENT_LISTEN,
        size: int = 128,
        grace_ms: float = 1500,
        index: int | None = None,
        handshake_timeout_s: float = 10.0,
        ns: str | None = None,
    ) -> None:
        self.lab = lab
        self.count = count
        n = next(_sender_counter)
        self.report_path = lab.workdir / f"wg-send-{n}.json"
        self.err_path = lab.workdir / f"wg-send-{n}.err"
        self.pause_path = lab.workdir / f"wg-send-{n}.pause"
        self.log = LogFile(self.err_path)
        args = [
            "-m",
            "lab.udp_tools",
            "wg-send",
            "--to",
            to,
            "--count",
            str(count),
            "--interval-ms",
            f"{interval_ms:g}",
            "--grace-ms",
            f"{grace_ms:g}",
            "--size",
            str(size),
            "--handshake-timeout-s",
            f"{handshake_timeout_s:g}",
            "--pause-file",
            str(self.pause_path),
            "--report",
            str(self.report_path),
        ]
        if index is not None:
            args += ["--index", str(index)]
        with self.err_path.open("wb") as err:
            self.proc = lab.popen_python(
                ns or lab.client_ns, *args, stdout=subprocess.DEVNULL, stderr=err
            )
        self.log.proc = self.proc
        self._bound_s = handshake_timeout_s + count * interval_ms / 1000 + grace_ms / 1000 + 30

    def running(self) -> bool:
        return self.proc.poll() is None

    def _progress(self, since: int = 0) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for line in self.log.text(since).splitlines()
            if line.startswith('{"sent"') and line.endswith("}")
        ]

    def wait_handshake(self, timeout_s: float = WAIT_S) -> dict[str, Any]:
        """Wait for the handshake; its progress line (handshake_ms, responder_index, index)."""
        match = self.log.wait_for(r'\{"sent".*"handshake_ms".*\}\n', timeout_s=timeout_s)
        line: dict[str, Any] = json.loads(match.group(0))
        return line

    def sent_so_far(self) -> int:
        """Datagrams sent according to the latest progress line (one a second): cheap, late."""
        lines = self._progress()
        return int(lines[-1]["sent"]) if lines else 0

    def sent_now(self) -> int:
        """The exact count sent so far: asks for a progress line (SIGUSR1) and waits for it."""
        self.wait_handshake()  # the SIGUSR1 handler is in place from then on
        mark = self.log.mark()
        self.proc.send_signal(signal.SIGUSR1)
        match = self.log.wait_for(r'\{"sent": (\d+)[^\n]*\}\n', since=mark)
        return int(match.group(1))

    def pause(self) -> int:
        """Stop sending (the run keeps counting replies); the exact count sent until then."""
        mark = self.log.mark()
        self.pause_path.touch()
        match = self.log.wait_for(r'\{"sent": (\d+)[^\n]*"paused": true\}\n', since=mark)
        return int(match.group(1))

    def resume(self) -> None:
        """Go on sending at the same pace, from the next sequence number."""
        mark = self.log.mark()
        self.pause_path.unlink(missing_ok=True)
        self.log.wait_for(r'"paused": false\}\n', since=mark)

    def wait(self) -> dict[str, Any]:
        """Wait for the run to end (generous bound) and return its JSON report."""
        try:
            self.proc.wait(timeout=self._bound_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"udp_tools wg-send did not finish within {self._bound_s:.0f} s")
        assert self.proc.returncode == 0, self.err_path.read_text()[-2000:]
        report: dict[str, Any] = json.loads(self.report_path.read_text())
        return report

    def stop(self) -> dict[str, Any]:
        """End the run now (SIGTERM: no more sends, no grace) and return its report."""
        if self.proc.poll() is None:
            self.wait_handshake()  # before it, SIGTERM would end it without a report
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()


def inject_udp(
    lab: Lab,
    ns: str,
    source: tuple[str, int],
    dest: tuple[str, int],
    payload: bytes,
    count: int = 1,
) -> None:
    """Send ``count`` datagrams from ``source`` (bound) to ``dest``, from namespace ``ns``."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(({source[0]!r},{source[1]}))\n"
        f"for _ in range({count}): s.sendto({payload!r},({dest[0]!r},{dest[1]}))\n"
    )
    lab.run(ns, sys.executable, "-c", code)


# ---------------------------------------------------------------------------------------------
# What crosses each uplink, seen from the server namespace


class UplinkCounters:
    """nftables counters in the server namespace: engarde's UDP per server-side veth.

    ``into(i)`` counts datagrams arriving on uplink i's server end for the engarde server port
    (copies the client sent through uplink i), ``out_of(i)`` the server's copies leaving through
    it. The server ends are client 0's ``sv{i}``, or with ``client=lab.clients[k]`` that client's
    ``c{k}s{i}`` (one instance per client; each has its own table). Matching is by interface
    name, so counters survive deleting and re-adding an uplink.
    """

    TABLE = "eg_test_counters"

    def __init__(
        self,
        lab: Lab,
        n_names: int = 8,
        port: int = SERVER_PORT,
        *,
        client: ClientSide | None = None,
    ) -> None:
        self.lab = lab
        side = client if client is not None else lab.clients[0]
        self.names = [side.server_ifname(i) for i in range(n_names)]
        self.table = self.TABLE if side.index == 0 else f"{self.TABLE}_c{side.index}"
        lines = [f"table inet {self.table} {{"]
        for name in self.names:
            lines += [f"  counter in_{name} {{ }}", f"  counter out_{name} {{ }}"]
        lines.append("  chain input { type filter hook input priority -200;")
        lines += [
            f'    iifname "{name}" udp dport {port} counter name "in_{name}"' for name in self.names
        ]
        lines.append("  }")
        lines.append("  chain output { type filter hook output priority -200;")
        lines += [
            f'    oifname "{name}" udp sport {port} counter name "out_{name}"'
            for name in self.names
        ]
        lines += ["  }", "}"]
        lab.run(lab.server_ns, "nft", "-f", "-", input="\n".join(lines) + "\n")

    def read(self) -> dict[str, int]:
        out = self.lab.run(
            self.lab.server_ns, "nft", "-j", "list", "counters", "table", "inet", self.table
        ).stdout
        counts: dict[str, int] = {}
        for item in json.loads(out)["nftables"]:
            counter = item.get("counter")
            if counter is not None:
                counts[counter["name"]] = int(counter["packets"])
        return counts

    def into(self, i: int) -> int:
        return self.read()[f"in_{self.names[i]}"]

    def out_of(self, i: int) -> int:
        return self.read()[f"out_{self.names[i]}"]

    def wait_carrying(
        self,
        *uplinks: int,
        packets: int = 20,
        log: LogFile | None = None,
        timeout_s: float = WAIT_S,
        source: subprocess.Popen[Any] | None = None,
    ) -> None:
        """Wait until ``packets`` more copies crossed each of ``uplinks`` in *both* directions.

        ``source`` is the process making the traffic: if it has ended, no more copies will come,
        and the wait fails at once instead of timing out.
        """
        start = self.read()
        keys = [f"{way}_{self.names[i]}" for i in uplinks for way in ("in", "out")]

        def carried() -> bool:
            now = self.read()
            if all(now[key] - start[key] >= packets for key in keys):
                return True
            if source is not None and source.poll() is not None:
                pytest.fail(
                    f"the traffic source ended while waiting for uplinks {list(uplinks)} to "
                    f"carry copies (the steps took longer than the traffic run: lengthen it)\n"
                    f"counters at start {start}\nnow {now}"
                )
            return False

        wait_until(
            carried,
            f"uplinks {list(uplinks)} to carry {packets} more copies each way",
            timeout_s=timeout_s,
            details=lambda: (
                f"counters at start {start}\nnow {self.read()}\n" + (log.tail() if log else "")
            ),
        )


@dataclass(frozen=True)
class Datagram:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass
class Capture:
    """tcpdump on one interface of a namespace, written to a pcap file and parsed on stop."""

    lab: Lab
    ns: str
    ifname: str
    bpf: str
    path: Path = field(init=False)
    proc: subprocess.Popen[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.path = self.lab.workdir / f"cap-{self.ns}-{self.ifname}.pcap"
        err = self.lab.workdir / f"cap-{self.ns}-{self.ifname}.err"
        with err.open("wb") as f:
            self.proc = self.lab.popen(
                self.ns,
                "tcpdump",
                "-i",
                self.ifname,
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",  # whole packets: a segmented run (UDP_SEGMENT) crosses a veth as one
                "-Z",
                "root",
                "-w",
                str(self.path),
                self.bpf,
                stdout=subprocess.DEVNULL,
                stderr=f,
            )
        LogFile(err, self.proc).wait_for(r"listening on ")

    def stop(self) -> list[Datagram]:
        """Let the file stop growing, stop tcpdump (SIGINT: it flushes) and parse the capture."""
        last = -1

        def settled() -> bool:
            nonlocal last
            size = self.path.stat().st_size if self.path.exists() else 0
            if size == last:
                return True
            last = size
            time.sleep(0.2)
            return False

        wait_until(settled, f"capture on {self.ifname} to settle")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.lab.stop(self.proc)
        return parse_pcap(self.path.read_bytes())


def parse_pcap(data: bytes) -> list[Datagram]:
    """IPv4/UDP datagrams from a classic pcap file (Ethernet or Linux cooked link type)."""
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"not a pcap file (magic {magic.hex()})")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    link_header = {1: 14, 113: 16}.get(linktype)
    if link_header is None:
        raise ValueError(f"unsupported pcap link type {linktype}")
    out: list[Datagram] = []
    pos = 24
    while pos + 16 <= len(data):
        incl_len = struct.unpack_from(endian + "I", data, pos + 8)[0]
        frame = data[pos + 16 : pos + 16 + incl_len]
        pos += 16 + incl_len
        ethertype = struct.unpack_from("!H", frame, link_header - 2)[0]
        if ethertype != 0x0800:
            continue
        ip = frame[link_header:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != socket.IPPROTO_UDP:
            continue
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        sport, dport = struct.unpack_from("!HH", ip, ihl)
        out.append(Datagram(src, sport, dst, dport, bytes(ip[ihl + 8 :])))
    return out


def sequence_numbers(datagrams: Iterable[Datagram], size: int = 100) -> list[int]:
    """The ``udp_tools send`` sequence numbers (payload bytes 0-7) of captured datagrams of
    ``size`` bytes (``Sender``'s default).

    A captured packet may hold several of them back to back: engarde sends a run of equal-sized
    datagrams as one UDP_SEGMENT message, and a veth hands it to the other namespace whole (the
    kernel cuts it up only on delivery to the socket), so tcpdump there sees one packet."""
    found = []
    for d in datagrams:
        payload = d.payload
        for offset in range(0, len(payload) - SEQ.size + 1, size):
            found.append(SEQ.unpack_from(payload, offset)[0])
    return found


def open_fds(pid: int) -> list[str]:
    """What ``pid``'s file descriptors point to (``socket:[...]``, paths, ...), leaving out
    ``/proc`` files: the relay-delay sampler keeps one schedstat fd per thread, and trio's
    worker threads come and go, so those count threads, not leaks."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if not target.startswith("/proc/"):
            found.append(target)
    return found


def fd_kinds(fds: list[str]) -> str:
    """``fds`` (from :func:`open_fds`) counted by kind, for a failure message."""
    kinds = Counter(re.sub(r"\[\d+\]$", "", fd) for fd in fds)
    return ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
