"""engarde demo: a WireGuard tunnel that does not notice its uplinks dying one after another.

Builds two network namespaces joined by three veth "uplinks" (see lab/netns.py), runs
wireguard-go in both, the engarde server in the server namespace and the engarde client in the
client namespace, then pings through the tunnel every 10 ms while it cuts and restores one uplink
after another (admin down, interface deleted, blackhole, carrier loss, heavy random loss, two at
once): one uplink is always left. Every ping should come back.

    sudo .venv/bin/python examples/demo.py            # what `make demo` runs
    sudo .venv/bin/python examples/demo.py --hold     # `make demo DEMO_ARGS=--hold`
    sudo .venv/bin/python examples/demo.py --no-engarde   # WireGuard straight over the lab
    sudo .venv/bin/python examples/demo.py --clients 3    # three clients, one server

The dashboards of the engarde client and server are reachable from a browser on this machine:
each namespace gets a veth from the host's namespace with its own small subnet (see
lab/host_link.py: a free 172.30.N.0/24, a /30 per namespace, nothing else routed), each dashboard
listens on its namespace's end, and the URLs are printed at the start. ``--hold`` keeps the
tunnel, the pings and the cycle of cuts running (stretched by ``--pace``, 4 by default with
``--hold``: a link stays cut for 8 s) until Ctrl-C, so a person can watch links go down and come
back on the page; each cycle's pings are reported as it ends.

With ``--no-engarde`` WireGuard talks to the server over whichever uplink routing picks, which
shows what engarde is for: pings are lost while that uplink is cut.

With ``--clients N`` (N > 1) there are N client namespaces with three uplinks each, one engarde
client in each (its own WireGuard interface excluded), ONE engarde server on one port, and one
server WireGuard interface with N peers. Every client pings at once while the timeline cuts and
restores the same uplink of every client (one always left per client); lost pings are reported
per client.

Exit code: 0 when no ping was lost (by any client), 1 when some were (or engarde died), 2 when
the machine cannot run the lab (needs root, ip, nft, ping, wireguard-go, wg), 130 when
interrupted by Ctrl-C (SIGINT), 143 by SIGTERM (how ``--hold`` ends). Everything is cleaned up on
exit, Ctrl-C or SIGTERM: namespaces, the host links, every process. Traffic stays inside the
demo's own namespaces and their host links.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
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
from lab.host_link import HostLink, HostLinks  # noqa: E402
from lab.netns import seq_ranges  # noqa: E402

CLIENT_LISTEN = "127.0.0.1:59401"  # WireGuard's peer Endpoint on the client side
SERVER_PORT = 59402  # engarde server, on the service address
WG_PORT = 59301  # WireGuard server ListenPort
WEB_PORT = 8080  # each client's dashboard, on its namespace's end of its host link
SERVER_WEB_PORT = 8081  # the server's dashboard, likewise
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
HOLD_PACE = 4.0  # with --hold: a cut lasts 8 s (a blackholed link shows "quiet"), a cycle 100 s
MIN_PACE, MAX_PACE = 0.5, 20.0


@dataclass
class Tunnel:
    """One client's end of the WireGuard tunnel: its namespace and its WireGuard interface."""

    label: str  # "client" in the one-client demo, "client0", "client1", ... with several
    client: ClientSide
    wg: WireGuardPair | WireGuardPeer


def client_config(lab: Lab, tunnel: Tunnel, host_link: HostLink | None) -> str:
    description = f"engarde demo {tunnel.label}"  # "engarde demo client" with one client
    # The host link is an interface of the namespace like the uplinks: never an uplink.
    excluded = [tunnel.wg.client_if] + ([host_link.ns_if] if host_link else [])
    labels = {"up0": "first", "up1": "second", "up2": "third"}
    if host_link:
        labels[host_link.ns_if] = "the dashboard's link to the host"
    text = f"""\
client:
  description: "{description}"
  listenAddr: "{CLIENT_LISTEN}"
  dstAddr: "{lab.service_addr}:{SERVER_PORT}"
  excludedInterfaces: {json.dumps(excluded)}
  interfaceLabels: {json.dumps(labels)}
"""
    if host_link:
        text += web_manager(host_link, WEB_PORT)
    return text


def server_config(host_link: HostLink | None) -> str:
    text = f"""\
server:
  description: "engarde demo server"
  listenAddr: "0.0.0.0:{SERVER_PORT}"
  dstAddr: "127.0.0.1:{WG_PORT}"
"""
    if host_link:
        text += web_manager(host_link, SERVER_WEB_PORT)
    return text


def web_manager(host_link: HostLink, port: int) -> str:
    """The dashboard on the namespace's end of its host link, where the host reaches it.

    The URL's host is the listen address, which the dashboard's Host allow-list accepts by
    default; allowedHosts names it anyway, so the config says which name the printed URL uses."""
    web = {"listenAddr": f"{host_link.ns_ip}:{port}", "allowedHosts": [host_link.ns_ip]}
    return f"  webManager: {json.dumps(web)}\n"


class Demo:
    def __init__(
        self, lab: Lab, args: argparse.Namespace, host_links: HostLinks | None = None
    ) -> None:
        self.lab = lab
        self.args = args
        self.host_links = host_links
        self.links: dict[str, HostLink] = {}  # "server", "client" (or "client0", ...) -> link
        self.engarde: dict[str, subprocess.Popen[Any]] = {}
        self.start = time.monotonic()
        self.log_offsets: dict[str, int] = {}
        self.several = len(lab.clients) > 1
        self.pace: float = args.pace
        self.pingers: list[PingProcess] = []  # running now (stopped on Ctrl-C)
        self.cycles = 0
        self.sent = 0  # over every finished cycle (--hold)
        self.lost = 0

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
        if self.host_links is not None:
            self.open_dashboards(tunnels)
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

        server_ip = tunnels[0].wg.server_ip
        every = f" from all {len(tunnels)} clients" if self.several else ""
        self.say(f"pinging {server_ip} through the tunnel every {args.interval_ms:g} ms{every}")
        if args.hold:
            return self.hold(tunnels)
        results = self.run_timeline(tunnels)
        if results is None:
            return 1
        if self.links:
            for tunnel in tunnels:
                self.show_dashboard(tunnel)
        if any(result.lost for result in results) and not args.no_engarde:
            self.show_logs()
        if args.show_logs:
            self.show_logs()
        return 0 if all(result.sent and not result.lost for result in results) else 1

    def run_timeline(self, tunnels: list[Tunnel], cycle: str = "") -> list[PingResult] | None:
        """Ping through every tunnel while the timeline (stretched by --pace) cuts and restores
        the uplinks; print what each client lost. None when engarde died meanwhile."""
        interval_s = self.args.interval_ms / 1000
        # ping runs until the timeline is over (its -i is only a lower bound on some kernels).
        self.pingers = [
            t.client.start_ping(t.wg.server_ip, MAX_PINGS, interval_s, timeout_s=2.0)
            for t in tunnels
        ]
        pings_started, pings_started_epoch = time.monotonic(), time.time()
        steps = timeline([t.client for t in tunnels])
        for step in [*steps, Step(DURATION_S, "stopping the pings", lambda: None)]:
            while (wait := pings_started + step.at_s * self.pace - time.monotonic()) > 0:
                time.sleep(min(wait, 0.1))
                self.echo_engarde()
                if self.engarde_died():
                    self.stop_pings()
                    return None
            self.say(f"{cycle}{step.what}")
            step.action()
        results = self.stop_pings()
        self.echo_engarde()
        if self.engarde_died():
            return None
        for tunnel, result in zip(tunnels, results, strict=True):
            print(
                f"{cycle}{self.who(tunnel)}pings sent {result.sent}, lost {len(result.lost)}",
                flush=True,
            )
            if result.lost:
                print(f"{cycle}{self.who(tunnel)}lost: {lost_report(result, pings_started_epoch)}")
        return results

    def hold(self, tunnels: list[Tunnel]) -> int:
        """Run the timeline again and again until Ctrl-C or SIGTERM (KeyboardInterrupt)."""
        cycle_s = DURATION_S * self.pace
        self.say(
            f"holding: a cycle of cuts every {cycle_s:g} s (--pace {self.pace:g}) "
            "until Ctrl-C; watch the dashboards"
        )
        while True:
            results = self.run_timeline(tunnels, f"cycle {self.cycles + 1}: ")
            if results is None:
                return 1
            self.cycles += 1
            self.sent += sum(result.sent for result in results)
            self.lost += sum(len(result.lost) for result in results)
            if any(result.lost for result in results) and not self.args.no_engarde:
                self.show_logs(10)

    def stop_pings(self) -> list[PingResult]:
        """Stop the running pings; what each saw (their output files are deleted)."""
        results = []
        for pinger in self.pingers:
            results.append(pinger.stop())
            pinger.remove_output()
        self.pingers = []
        return results

    def interrupted(self) -> None:
        """After Ctrl-C or SIGTERM: stop the pings and say what was seen until then."""
        results = self.stop_pings()
        if not self.args.hold:
            return
        sent = self.sent + sum(result.sent for result in results)
        lost = self.lost + sum(len(result.lost) for result in results)
        print(
            f"held for {self.cycles} full cycle(s) and a part: pings sent {sent}, lost {lost}",
            flush=True,
        )

    def open_dashboards(self, tunnels: list[Tunnel]) -> None:
        """A host link into every namespace with an engarde (server first); print the URLs."""
        assert self.host_links is not None
        for tunnel in tunnels:
            self.links[tunnel.label] = self.host_links.add(tunnel.client.ns)
        self.links["server"] = self.host_links.add(self.lab.server_ns)
        self.say(f"dashboards, for a browser on this machine ({self.host_links.subnet}):")
        for name, link in self.links.items():
            port = SERVER_WEB_PORT if name == "server" else WEB_PORT
            self.say(f"  {name} dashboard: {link.url(port)}")

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
        configs = [("server", lab.server_ns, server_config(self.links.get("server")))]
        configs += [
            (t.label, t.client.ns, client_config(lab, t, self.links.get(t.label))) for t in tunnels
        ]
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
            if name in self.links:  # its dashboard starts after the relay: wait for it too
                self.wait_for_log(name, proc, "dashboard on ", timeout_s=20)
            self.say(f"engarde {name} ready")
            self.echo_engarde()

    def wait_for_log(
        self, name: str, proc: subprocess.Popen[Any], text: str, timeout_s: float
    ) -> None:
        """Wait until engarde ``name`` logged a line containing ``text``; LabError if it exits
        first or after ``timeout_s``."""
        path = self.lab.workdir / f"engarde-{name}.log"
        deadline = time.monotonic() + timeout_s
        while text.encode() not in path.read_bytes():
            if proc.poll() is not None:
                raise LabError(f"engarde {name} exited ({proc.returncode}) before {text!r}")
            if time.monotonic() > deadline:
                raise LabError(f"engarde {name}: no {text!r} in its log after {timeout_s} s")
            time.sleep(0.05)

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
        """The client's interface list, fetched from here (the host) through its host link."""
        url = self.links[tunnel.label].url(WEB_PORT, "/api/v1/get-list")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                out = response.read().decode()
        except OSError as exc:
            self.say(f"{self.who(tunnel)}dashboard not answering: {exc}")
            return
        self.say(f"{tunnel.label} dashboard {url}:\n{out}")

    def show_logs(self, lines: int = 30) -> None:
        for name in self.engarde:
            log = self.lab.workdir / f"engarde-{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- engarde {name} log (last {len(tail)} lines) ---")
                print("\n".join(tail))


def lost_report(result: PingResult, started_epoch: float) -> str:
    """Each run of lost pings as "seq 201-215 (after 2.01 s)", to match against the timeline."""
    parts = []
    for run in seq_ranges(result.lost).split(","):
        before = result.replied_at.get(int(run.split("-")[0]) - 1)
        when = f" (after {before - started_epoch:.2f} s)" if before else ""
        parts.append(f"seq {run}{when}")
    return ", ".join(parts)


_signals: list[int] = []  # what interrupted the demo


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _signals.append(signum)
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
        "--web",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the dashboards of the engarde client(s) and server, reachable from this machine "
        "through a veth into each namespace (default: on)",
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="keep the tunnel, the pings and the cycle of cuts running until Ctrl-C",
    )
    parser.add_argument(
        "--pace",
        type=float,
        metavar="FACTOR",
        help="stretch the timeline of cuts by FACTOR (default 1, or 4 with --hold)",
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
    if args.pace is None:
        args.pace = HOLD_PACE if args.hold else 1.0
    if not MIN_PACE <= args.pace <= MAX_PACE:
        parser.error(f"--pace must be within {MIN_PACE:g}..{MAX_PACE:g}, got {args.pace:g}")
    if not 1 <= args.interval_ms <= 1000:
        parser.error(f"--interval-ms must be within 1..1000, got {args.interval_ms:g}")
    if DURATION_S * args.pace * 1000 / args.interval_ms >= MAX_PINGS:
        parser.error(f"--pace {args.pace:g} at --interval-ms {args.interval_ms:g} is too slow")

    ok, reason = lab_available(wireguard=True)
    if not ok:
        print(f"demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    lab: Lab | None = None
    host_links: HostLinks | None = None
    demo: Demo | None = None
    try:
        lab = Lab(UPLINKS, clients=args.clients)
        if args.web and not args.no_engarde:
            host_links = HostLinks()
        demo = Demo(lab, args, host_links)
        return demo.run()
    except KeyboardInterrupt:
        # A second Ctrl-C must not leave namespaces behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signum = _signals[0] if _signals else signal.SIGINT
        print(f"\ninterrupted ({signal.Signals(signum).name}): cleaning up", file=sys.stderr)
        if demo is not None:
            with contextlib.suppress(LabError, OSError):
                demo.interrupted()
        return 128 + signum
    except LabError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        clean = True
        for thing in (host_links, lab):
            if thing is not None:
                try:
                    thing.close()
                except LabError as exc:
                    clean = False
                    print(f"demo: cleanup: {exc}", file=sys.stderr)
        if _signals and clean:
            print("demo: everything removed", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
