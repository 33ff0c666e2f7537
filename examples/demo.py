"""engarde demo: a WireGuard tunnel that does not notice its uplinks dying one after another.

Builds two network namespaces joined by three veth "uplinks" (see lab/netns.py), runs
wireguard-go in both, the engarde server in the server namespace and the engarde client in the
client namespace, then pings through the tunnel every 10 ms while it cuts and restores one uplink
after another (admin down, interface deleted, blackhole, carrier loss, heavy random loss, two at
once): one uplink is always left. Every ping should come back.

    sudo .venv/bin/python examples/demo.py            # what `make demo` runs
    sudo .venv/bin/python examples/demo.py --no-engarde   # WireGuard straight over the lab
    sudo .venv/bin/python examples/demo.py --clients 3    # three clients, one server

With ``--no-engarde`` WireGuard talks to the server over whichever uplink routing picks, which
shows what engarde is for: pings are lost while that uplink is cut.

With ``--clients N`` (N > 1) there are N client namespaces with three uplinks each, one engarde
client in each (its own WireGuard interface excluded), ONE engarde server on one port, and one
server WireGuard interface with N peers. Every client pings at once while the timeline cuts and
restores the same uplink of every client (one always left per client); lost pings are reported
per client.

Exit code: 0 when no ping was lost (by any client), 1 when some were (or engarde died), 2 when
the machine cannot run the lab (needs root, ip, nft, ping, wireguard-go, wg), 130 when
interrupted. Everything is cleaned up on exit, Ctrl-C or SIGTERM. Traffic stays inside the demo's
own namespaces.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from lab import (  # noqa: E402
    MAX_CLIENTS,
    ClientSide,
    Lab,
    LabError,
    PingProcess,
    PingResult,
    WireGuardPair,
    WireGuardPeer,
    lab_available,
    ping,
)
from lab.netns import seq_ranges  # noqa: E402

CLIENT_LISTEN = "127.0.0.1:59401"  # WireGuard's peer Endpoint on the client side
SERVER_PORT = 59402  # engarde server, on the service address
WG_PORT = 59301  # WireGuard server ListenPort
WEB_LISTEN = "127.0.0.1:8080"  # dashboard, inside each client namespace
UPLINKS = 3  # per client


@dataclass
class Step:
    at_s: float
    what: str
    action: Callable[[], object]


def timeline(clients: list[ClientSide]) -> list[Step]:
    """The cuts and repairs, at seconds after the pings start, done to every client at once.

    One uplink of each client always works.
    """

    def each(action: Callable[[ClientSide], object]) -> Callable[[], None]:
        def run() -> None:
            for client in clients:
                action(client)

        return run

    steps = [
        Step(2, "cutting up0 (link down)", each(lambda c: c.link_down(0))),
        Step(4, "restoring up0 (link up)", each(lambda c: c.link_up(0))),
        Step(6, "cutting up1 (interface deleted)", each(lambda c: c.delete_uplink(1))),
        Step(8, "restoring up1 (interface re-created)", each(lambda c: c.add_uplink(1))),
        Step(
            10,
            "cutting up2 (blackhole: everything silently dropped)",
            each(lambda c: c.blackhole(2)),
        ),
        Step(12, "restoring up2 (blackhole removed)", each(lambda c: c.blackhole(2, on=False))),
        Step(
            14,
            "cutting up0 (carrier lost, link still up)",
            each(lambda c: c.set_carrier(0, False)),
        ),
        Step(16, "restoring up0 (carrier back)", each(lambda c: c.set_carrier(0, True))),
        Step(17, "degrading up1 (50% random loss each way)", each(lambda c: c.drop_random(1, 50))),
        Step(19, "restoring up1 (no loss)", each(lambda c: c.drop_random(1, 0))),
        Step(20, "cutting up0 (link down) and up1 (blackhole): only up2 left", each(cut_two)),
        Step(23, "restoring up0 and up1", each(restore_two)),
    ]
    if len(clients) > 1:
        for step in steps:
            step.what += f" on all {len(clients)} clients"
    return steps


def cut_two(client: ClientSide) -> None:
    client.link_down(0)
    client.blackhole(1)


def restore_two(client: ClientSide) -> None:
    client.link_up(0)
    client.blackhole(1, on=False)


DURATION_S = 25.0
MAX_PINGS = 60_000  # icmp_seq is 16 bits


@dataclass
class Tunnel:
    """One client's end of the WireGuard tunnel: its namespace and its WireGuard interface."""

    label: str  # "client" in the one-client demo, "client0", "client1", ... with several
    client: ClientSide
    wg: WireGuardPair | WireGuardPeer


def client_config(lab: Lab, tunnel: Tunnel, web: bool) -> str:
    description = f"engarde demo {tunnel.label}"  # "engarde demo client" with one client
    text = f"""\
client:
  description: "{description}"
  listenAddr: "{CLIENT_LISTEN}"
  dstAddr: "{lab.service_addr}:{SERVER_PORT}"
  excludedInterfaces: ["{tunnel.wg.client_if}"]
  interfaceLabels: {{up0: "first", up1: "second", up2: "third"}}
"""
    if web:
        text += f'  webManager: {{listenAddr: "{WEB_LISTEN}"}}\n'
    return text


def server_config() -> str:
    return f"""\
server:
  description: "engarde demo server"
  listenAddr: "0.0.0.0:{SERVER_PORT}"
  dstAddr: "127.0.0.1:{WG_PORT}"
"""


class Demo:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab = lab
        self.args = args
        self.engarde: dict[str, subprocess.Popen[Any]] = {}
        self.start = time.monotonic()
        self.log_offsets: dict[str, int] = {}
        self.several = len(lab.clients) > 1

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.2f}s] {text}", flush=True)

    def who(self, tunnel: Tunnel) -> str:
        """The prefix naming a client in messages; none in the one-client demo."""
        return f"{tunnel.label}: " if self.several else ""

    def run(self) -> int:
        lab, args = self.lab, self.args
        endpoint = f"{lab.service_addr}:{WG_PORT}" if args.no_engarde else CLIENT_LISTEN
        tunnels = self.start_wireguard(endpoint)
        self.describe(tunnels, endpoint)
        if not args.no_engarde:
            try:
                self.start_engarde(tunnels)
            except LabError as exc:
                self.say(f"engarde did not start: {exc}")
                self.show_logs()
                return 1

        for tunnel in tunnels:
            if not self.wait_for_tunnel(tunnel):
                self.say(f"{self.who(tunnel)}the tunnel never came up")
                self.show_logs()
                return 1

        interval_s = args.interval_ms / 1000
        server_ip = tunnels[0].wg.server_ip
        every = f" from all {len(tunnels)} clients" if self.several else ""
        self.say(f"pinging {server_ip} through the tunnel every {args.interval_ms:g} ms{every}")
        # ping runs until the timeline is over (its -i is only a lower bound on some kernels).
        pingers = [
            t.client.start_ping(t.wg.server_ip, MAX_PINGS, interval_s, timeout_s=2.0)
            for t in tunnels
        ]
        pings_started, pings_started_epoch = time.monotonic(), time.time()
        steps = timeline([t.client for t in tunnels])
        for step in [*steps, Step(DURATION_S, "stopping the pings", lambda: None)]:
            while (wait := pings_started + step.at_s - time.monotonic()) > 0:
                time.sleep(min(wait, 0.1))
                self.echo_engarde()
                if self.engarde_died():
                    stop_pings(pingers)
                    return 1
            self.say(step.what)
            step.action()
        results = stop_pings(pingers)
        self.echo_engarde()
        if self.engarde_died():
            return 1
        if args.web:
            for tunnel in tunnels:
                self.show_dashboard(tunnel)

        for tunnel, result in zip(tunnels, results, strict=True):
            print(
                f"{self.who(tunnel)}pings sent {result.sent}, lost {len(result.lost)}", flush=True
            )
            if result.lost:
                print(f"{self.who(tunnel)}lost: {lost_report(result, pings_started_epoch)}")
        if any(result.lost for result in results) and not args.no_engarde:
            self.show_logs()
        if args.show_logs:
            self.show_logs()
        return 0 if all(result.sent and not result.lost for result in results) else 1

    def start_wireguard(self, endpoint: str) -> list[Tunnel]:
        """One WireGuard pair (one client), or one server interface with a peer per client."""
        lab = self.lab
        if not self.several:
            pair = lab.start_wireguard(server_port=WG_PORT, client_endpoint=endpoint)
            return [Tunnel("client", lab.clients[0], pair)]
        hub = lab.start_wireguard_multi(server_port=WG_PORT, client_endpoint=endpoint)
        return [Tunnel(f"client{peer.index}", peer.client, peer) for peer in hub.peers]

    def describe(self, tunnels: list[Tunnel], endpoint: str) -> None:
        lab = self.lab
        if not self.several:
            self.say(f"lab up: namespaces {lab.client_ns} (client) and {lab.server_ns} (server)")
        else:
            self.say(f"lab up: server namespace {lab.server_ns}, {len(tunnels)} client namespaces")
        indent = "    " if self.several else "  "
        for tunnel in tunnels:
            wg = tunnel.wg
            if self.several:
                self.say(f"  {tunnel.label} in {tunnel.client.ns}")
            for up in tunnel.client.uplinks:
                self.say(f"{indent}{up.name} {up.client_ip} <-> {up.peer_name} {up.server_ip}")
            self.say(
                f"{indent}wireguard {wg.client_if} {wg.client_ip} -> {wg.server_if} {wg.server_ip}"
            )
        self.say(f"  WireGuard peer endpoint {endpoint}")

    def start_engarde(self, tunnels: list[Tunnel]) -> None:
        lab = self.lab
        # The server first: the clients send at once. One server, one port, for every client.
        configs = [("server", lab.server_ns, server_config())]
        configs += [(t.label, t.client.ns, client_config(lab, t, self.args.web)) for t in tunnels]
        for name, ns, text in configs:
            role = "server" if name == "server" else "client"
            path = lab.workdir / f"engarde-{name}.yml"
            path.write_text(text)
            argv = ["-m", "engarde", role, str(path)]
            if self.args.log_level:
                argv += ["--log-level", self.args.log_level]
            with (lab.workdir / f"engarde-{name}.log").open("wb") as log:
                proc = lab.popen_python(ns, *argv, stdout=log, stderr=log)
            self.engarde[name] = proc
            self.say(f"engarde {name} starting in {ns} (pid {proc.pid})")
            port = SERVER_PORT if role == "server" else int(CLIENT_LISTEN.rsplit(":", 1)[1])
            lab.wait_for_udp(ns, port, timeout_s=20, proc=proc)
            self.say(f"engarde {name} ready")
            self.echo_engarde()

    def echo_engarde(self) -> None:
        """Print what engarde itself logged since last time (its INFO/WARNING lines)."""
        if self.args.quiet_engarde:
            return
        for name in self.engarde:
            path = self.lab.workdir / f"engarde-{name}.log"
            try:
                with path.open("rb") as f:
                    f.seek(self.log_offsets.get(name, 0))
                    data = f.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self.log_offsets[name] = self.log_offsets.get(name, 0) + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                parts = line.split(None, 4)  # date time LEVEL logger: message
                if len(parts) == 5 and parts[2] in ("INFO", "WARNING", "ERROR"):
                    self.say(f"    engarde {name}: {parts[4]}")

    def engarde_died(self) -> bool:
        for name, proc in self.engarde.items():
            if proc.poll() is not None:
                self.say(f"engarde {name} exited with code {proc.returncode}")
                self.show_logs()
                return True
        return False

    def wait_for_tunnel(self, tunnel: Tunnel, timeout_s: float = 20.0) -> bool:
        """Ping once at a time until WireGuard answers: engarde is up and the handshake done."""
        self.say(
            f"{self.who(tunnel)}waiting for the tunnel (engarde starting, WireGuard handshake)"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.engarde_died():
                return False
            if ping(tunnel.client.ns, tunnel.wg.server_ip, 1, 0.2, 0.5).received:
                self.say(f"{self.who(tunnel)}tunnel up")
                return True
        return False

    def show_dashboard(self, tunnel: Tunnel) -> None:
        url = f"http://{WEB_LISTEN}/api/v1/get-list"
        code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=2).read().decode())"
        try:
            out = self.lab.run(tunnel.client.ns, sys.executable, "-c", code).stdout
        except LabError as exc:
            self.say(f"{self.who(tunnel)}dashboard not answering: {exc}")
            return
        where = f"{tunnel.label}'s namespace" if self.several else "client namespace"
        self.say(f"dashboard {url} ({where}):\n{out}")

    def show_logs(self, lines: int = 30) -> None:
        for name in self.engarde:
            log = self.lab.workdir / f"engarde-{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- engarde {name} log (last {len(tail)} lines) ---")
                print("\n".join(tail))


def stop_pings(pingers: list[PingProcess]) -> list[PingResult]:
    return [pinger.stop() for pinger in pingers]


def lost_report(result: PingResult, started_epoch: float) -> str:
    """Each run of lost pings as "seq 201-215 (after 2.01 s)", to match against the timeline."""
    parts = []
    for run in seq_ranges(result.lost).split(","):
        before = result.replied_at.get(int(run.split("-")[0]) - 1)
        when = f" (after {before - started_epoch:.2f} s)" if before else ""
        parts.append(f"seq {run}{when}")
    return ", ".join(parts)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--no-engarde",
        action="store_true",
        help="point WireGuard straight at the server (no engarde): shows the loss engarde avoids",
    )
    parser.add_argument(
        "--web", action="store_true", help=f"enable the client dashboard on {WEB_LISTEN}"
    )
    parser.add_argument("--interval-ms", type=float, default=10.0, help="ping interval")
    parser.add_argument(
        "--clients",
        type=int,
        default=1,
        metavar="N",
        help=f"client namespaces, each with its engarde client (1..{MAX_CLIENTS}; default 1)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--show-logs", action="store_true", help="print engarde's logs at the end")
    parser.add_argument(
        "--quiet-engarde", action="store_true", help="don't interleave engarde's own log lines"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be within 1..{MAX_CLIENTS}, got {args.clients}")

    ok, reason = lab_available(wireguard=True)
    if not ok:
        print(f"demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    lab: Lab | None = None
    try:
        lab = Lab(UPLINKS, clients=args.clients)
        return Demo(lab, args).run()
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    except LabError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not leave namespaces behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if lab is not None:
            try:
                lab.close()
            except LabError as exc:
                print(f"demo: cleanup: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
