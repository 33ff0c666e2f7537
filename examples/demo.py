"""engarde demo: a WireGuard tunnel that does not notice its uplinks dying one after another.

Builds two network namespaces joined by three veth "uplinks" (see lab/netns.py), runs
wireguard-go in both, the engarde server in the server namespace and the engarde client in the
client namespace, then pings through the tunnel every 10 ms while it cuts and restores one uplink
after another (admin down, interface deleted, blackhole, carrier loss, heavy random loss, two at
once): one uplink is always left. Every ping should come back.

    sudo .venv/bin/python examples/demo.py            # what `make demo` runs
    sudo .venv/bin/python examples/demo.py --no-engarde   # WireGuard straight over the lab

With ``--no-engarde`` WireGuard talks to the server over whichever uplink routing picks, which
shows what engarde is for: pings are lost while that uplink is cut.

Exit code: 0 when no ping was lost, 1 when some were (or engarde died), 2 when the machine cannot
run the lab (needs root, ip, nft, ping, wireguard-go, wg), 130 when interrupted. Everything is
cleaned up on exit, Ctrl-C or SIGTERM. Traffic stays inside the demo's own namespaces.
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

from lab import Lab, LabError, PingResult, WireGuardPair, lab_available, ping  # noqa: E402
from lab.netns import seq_ranges  # noqa: E402

CLIENT_LISTEN = "127.0.0.1:59401"  # WireGuard's peer Endpoint on the client side
SERVER_PORT = 59402  # engarde server, on the service address
WG_PORT = 59301  # WireGuard server ListenPort
WEB_LISTEN = "127.0.0.1:8080"  # dashboard, inside the client namespace


@dataclass
class Step:
    at_s: float
    what: str
    action: Callable[[], object]


def timeline(lab: Lab) -> list[Step]:
    """The cuts and repairs, at seconds after the pings start. One uplink always works."""
    return [
        Step(2, "cutting up0 (link down)", lambda: lab.link_down(0)),
        Step(4, "restoring up0 (link up)", lambda: lab.link_up(0)),
        Step(6, "cutting up1 (interface deleted)", lambda: lab.delete_uplink(1)),
        Step(8, "restoring up1 (interface re-created)", lambda: lab.add_uplink(1)),
        Step(10, "cutting up2 (blackhole: everything silently dropped)", lambda: lab.blackhole(2)),
        Step(12, "restoring up2 (blackhole removed)", lambda: lab.blackhole(2, on=False)),
        Step(14, "cutting up0 (carrier lost, link still up)", lambda: lab.set_carrier(0, False)),
        Step(16, "restoring up0 (carrier back)", lambda: lab.set_carrier(0, True)),
        Step(17, "degrading up1 (50% random loss each way)", lambda: lab.drop_random(1, 50)),
        Step(19, "restoring up1 (no loss)", lambda: lab.drop_random(1, 0)),
        Step(
            20, "cutting up0 (link down) and up1 (blackhole): only up2 left", lambda: cut_two(lab)
        ),
        Step(23, "restoring up0 and up1", lambda: restore_two(lab)),
    ]


def cut_two(lab: Lab) -> None:
    lab.link_down(0)
    lab.blackhole(1)


def restore_two(lab: Lab) -> None:
    lab.link_up(0)
    lab.blackhole(1, on=False)


DURATION_S = 25.0
MAX_PINGS = 60_000  # icmp_seq is 16 bits


def client_config(lab: Lab, wg: WireGuardPair, web: bool) -> str:
    text = f"""\
client:
  description: "engarde demo client"
  listenAddr: "{CLIENT_LISTEN}"
  dstAddr: "{lab.service_addr}:{SERVER_PORT}"
  excludedInterfaces: ["{wg.client_if}"]
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

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.2f}s] {text}", flush=True)

    def run(self) -> int:
        lab, args = self.lab, self.args
        endpoint = f"{lab.service_addr}:{WG_PORT}" if args.no_engarde else CLIENT_LISTEN
        wg = lab.start_wireguard(server_port=WG_PORT, client_endpoint=endpoint)
        self.say(f"lab up: namespaces {lab.client_ns} (client) and {lab.server_ns} (server)")
        for up in lab.uplinks:
            self.say(f"  {up.name} {up.client_ip} <-> {up.peer_name} {up.server_ip}")
        self.say(f"  wireguard {wg.client_if} {wg.client_ip} -> {wg.server_if} {wg.server_ip}")
        self.say(f"  WireGuard peer endpoint {endpoint}")
        if not args.no_engarde:
            try:
                self.start_engarde(wg)
            except LabError as exc:
                self.say(f"engarde did not start: {exc}")
                self.show_logs()
                return 1

        if not self.wait_for_tunnel(wg):
            self.say("the tunnel never came up")
            self.show_logs()
            return 1

        interval_s = args.interval_ms / 1000
        self.say(f"pinging {wg.server_ip} through the tunnel every {args.interval_ms:g} ms")
        # ping runs until the timeline is over (its -i is only a lower bound on some kernels).
        pinger = lab.start_ping(wg.server_ip, MAX_PINGS, interval_s, timeout_s=2.0)
        pings_started, pings_started_epoch = time.monotonic(), time.time()
        for step in [*timeline(lab), Step(DURATION_S, "stopping the pings", lambda: None)]:
            while (wait := pings_started + step.at_s - time.monotonic()) > 0:
                time.sleep(min(wait, 0.1))
                self.echo_engarde()
                if self.engarde_died():
                    pinger.stop()
                    return 1
            self.say(step.what)
            step.action()
        result = pinger.stop()
        self.echo_engarde()
        if self.engarde_died():
            return 1
        if args.web:
            self.show_dashboard()

        print(f"pings sent {result.sent}, lost {len(result.lost)}", flush=True)
        if result.lost:
            print(f"lost: {lost_report(result, pings_started_epoch)}")
            if not args.no_engarde:
                self.show_logs()
        if args.show_logs:
            self.show_logs()
        return 0 if result.sent and not result.lost else 1

    def start_engarde(self, wg: WireGuardPair) -> None:
        lab = self.lab
        configs = {
            "server": (lab.server_ns, server_config()),
            "client": (lab.client_ns, client_config(lab, wg, self.args.web)),
        }
        for role, (ns, text) in configs.items():  # server first: the client sends at once
            path = lab.workdir / f"engarde-{role}.yml"
            path.write_text(text)
            argv = ["-m", "engarde", role, str(path)]
            if self.args.log_level:
                argv += ["--log-level", self.args.log_level]
            with (lab.workdir / f"engarde-{role}.log").open("wb") as log:
                proc = lab.popen_python(ns, *argv, stdout=log, stderr=log)
            self.engarde[role] = proc
            self.say(f"engarde {role} starting in {ns} (pid {proc.pid})")
            port = SERVER_PORT if role == "server" else int(CLIENT_LISTEN.rsplit(":", 1)[1])
            lab.wait_for_udp(ns, port, timeout_s=20, proc=proc)
            self.say(f"engarde {role} ready")
            self.echo_engarde()

    def echo_engarde(self) -> None:
        """Print what engarde itself logged since last time (its INFO/WARNING lines)."""
        if self.args.quiet_engarde:
            return
        for role in self.engarde:
            path = self.lab.workdir / f"engarde-{role}.log"
            try:
                with path.open("rb") as f:
                    f.seek(self.log_offsets.get(role, 0))
                    data = f.read()
            except OSError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self.log_offsets[role] = self.log_offsets.get(role, 0) + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                parts = line.split(None, 4)  # date time LEVEL logger: message
                if len(parts) == 5 and parts[2] in ("INFO", "WARNING", "ERROR"):
                    self.say(f"    engarde {role}: {parts[4]}")

    def engarde_died(self) -> bool:
        for role, proc in self.engarde.items():
            if proc.poll() is not None:
                self.say(f"engarde {role} exited with code {proc.returncode}")
                self.show_logs()
                return True
        return False

    def wait_for_tunnel(self, wg: WireGuardPair, timeout_s: float = 20.0) -> bool:
        """Ping once at a time until WireGuard answers: engarde is up and the handshake done."""
        self.say("waiting for the tunnel (engarde starting, WireGuard handshake)")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.engarde_died():
                return False
            if ping(self.lab.client_ns, wg.server_ip, 1, 0.2, 0.5).received:
                self.say("tunnel up")
                return True
        return False

    def show_dashboard(self) -> None:
        url = f"http://{WEB_LISTEN}/api/v1/get-list"
        code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=2).read().decode())"
        try:
            out = self.lab.run(self.lab.client_ns, sys.executable, "-c", code).stdout
        except LabError as exc:
            self.say(f"dashboard not answering: {exc}")
            return
        self.say(f"dashboard {url} (client namespace):\n{out}")

    def show_logs(self, lines: int = 30) -> None:
        for role in self.engarde:
            log = self.lab.workdir / f"engarde-{role}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- engarde {role} log (last {len(tail)} lines) ---")
                print("\n".join(tail))


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
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--show-logs", action="store_true", help="print engarde's logs at the end")
    parser.add_argument(
        "--quiet-engarde", action="store_true", help="don't interleave engarde's own log lines"
    )
    args = parser.parse_args(argv)

    ok, reason = lab_available(wireguard=True)
    if not ok:
        print(f"demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    lab: Lab | None = None
    try:
        lab = Lab(3)
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
