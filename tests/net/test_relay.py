"""The relay between namespaces: engarde client in the client namespace, engarde server in the
server namespace, 3 veth uplinks between them, a deduplicating UDP echo behind the server (it
drops repeated payloads the way WireGuard's anti-replay window does).

What crosses each uplink is checked from the outside, in the server namespace: tcpdump captures
on sv{i} and nftables counters per sv{i} (tests/net/helpers.py). The application's view is the
report of ``lab.udp_tools send`` (every sequence number answered or not).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import REPO_ROOT, Lab
from tests.net.helpers import (
    CLIENT_LISTEN,
    SERVER_PORT,
    Capture,
    Datagram,
    Echo,
    Engarde,
    Sender,
    UplinkCounters,
    default_config,
    inject_udp,
    require_tool,
    sequence_numbers,
    server_saw,
    server_section,
    start_client,
    start_server,
    wait_for_socket,
    wait_handed_over,
    wait_until,
    write_config,
)

ALL = (0, 1, 2)
WARMUP = 10


def warm_up(lab: Lab, count: int = WARMUP) -> None:
    """A few datagrams, so that the server knows every client address before a measured run.

    (The very first reply can leave before the server has read the slowest uplink's first copy:
    it then goes to the addresses known so far. That race is inherent, not a loss.)
    """
    report = Sender(lab, count, 5, grace_ms=500).wait()
    assert report["lost"] == [], report


@pytest.fixture
def relay(lab: Lab) -> Iterator[tuple[Echo, Engarde, Engarde]]:
    """Echo + engarde server + engarde client with the default config, all uplinks carrying,
    warmed up with WARMUP datagrams (the echo's statistics include them)."""
    config = default_config(lab)
    echo = Echo(lab)
    server = start_server(lab, config)
    client = start_client(lab, config, ALL)
    warm_up(lab)
    yield echo, server, client


# ---------------------------------------------------------------------------------------------
# Copies


def test_every_datagram_crosses_every_uplink_both_ways(
    lab: Lab, relay: tuple[Echo, Engarde, Engarde]
) -> None:
    require_tool("tcpdump")
    echo, _server, _client = relay
    count = 300
    report, captured, stats = send_captured(lab, echo, count)

    assert report["lost"] == [], report
    assert report["foreign"] == 0, report
    # Every datagram reached the server 3 times; the application behind it saw it once.
    assert stats["received"] == 3 * (count + WARMUP), stats
    assert stats["unique"] == count + WARMUP, stats
    assert stats["duplicates"] == 2 * (count + WARMUP), stats
    for i, datagrams in zip(ALL, captured, strict=True):
        up = lab.uplink(i)
        to_server = [d for d in datagrams if d.dport == SERVER_PORT]
        to_client = [d for d in datagrams if d.sport == SERVER_PORT]
        # Per-uplink copies, verified by capture: each sequence number exactly once each way.
        assert sorted(sequence_numbers(to_server)) == list(range(count)), f"sv{i} to server"
        assert sorted(sequence_numbers(to_client)) == list(range(count)), f"sv{i} to client"
        assert {(d.src, d.dst) for d in to_server} == {(up.client_ip, lab.service_addr)}
        assert {(d.src, d.dst) for d in to_client} == {(lab.service_addr, up.client_ip)}
        # One socket per uplink: a single source port for the whole run.
        assert len({d.sport for d in to_server}) == 1


def test_no_loss_while_uplinks_go_down_disappear_and_return(
    lab: Lab, relay: tuple[Echo, Engarde, Engarde]
) -> None:
    """Always at least one uplink left; every step waits until the survivors carry traffic
    and every restored uplink carries copies again (both ways) before the next cut."""
    echo, _server, client = relay
    counters = UplinkCounters(lab)
    log = client.log
    count = 5000  # 10 s at 2 ms: longer than the script below
    sender = Sender(lab, count, 2)
    counters.wait_carrying(*ALL, log=log, source=sender.proc)

    def cut(i: int, how: str, state: str) -> None:
        mark = log.mark()
        {"down": lab.link_down, "delete": lab.delete_uplink}.get(
            how, lambda i: lab.set_carrier(i, on=False)
        )(i)
        log.wait_for(rf"up{i}: {state}", since=mark)

    def restore(i: int, how: str) -> None:
        mark = log.mark()
        {"down": lab.link_up, "delete": lab.add_uplink}.get(
            how, lambda i: lab.set_carrier(i, on=True)
        )(i)
        wait_for_socket(client, i, since=mark)
        counters.wait_carrying(i, log=log, source=sender.proc)

    def survivors_carry(*alive: int) -> None:
        counters.wait_carrying(*alive, packets=50, log=log, source=sender.proc)

    cut(0, "down", "admin-down -> stopped carrying copies")
    survivors_carry(1, 2)
    cut(1, "down", "admin-down -> stopped carrying copies")
    silent_0, silent_1 = counters.into(0), counters.into(1)
    survivors_carry(2)  # the last uplink alone
    assert (counters.into(0), counters.into(1)) == (silent_0, silent_1), "down links carried"
    restore(0, "down")
    restore(1, "down")
    cut(2, "delete", r"gone \(interface removed\)")
    survivors_carry(0, 1)
    restore(2, "delete")
    cut(0, "carrier", "no-carrier -> stopped carrying copies")
    survivors_carry(1, 2)
    restore(0, "carrier")
    survivors_carry(*ALL)
    assert sender.running(), "the sender ended before the last step: raise its count"

    report = sender.wait()
    stats = echo.stop()
    assert report["lost"] == [], report
    assert report["sent"] == count
    assert stats["unique"] == count + WARMUP, stats


def test_uplink_added_while_traffic_flows_carries_copies(
    lab: Lab, relay: tuple[Echo, Engarde, Engarde]
) -> None:
    _echo, server, client = relay
    counters = UplinkCounters(lab)
    sender = Sender(lab, 2000, 2)
    counters.wait_carrying(*ALL, source=sender.proc)
    client_mark, server_mark = client.log.mark(), server.log.mark()

    up3 = lab.add_uplink(3)

    ip = re.escape(up3.client_ip)
    client.log.wait_for(rf"up3: up, {ip} -> carrying copies", since=client_mark)
    server.log.wait_for(server_saw(up3.client_ip), since=server_mark)
    counters.wait_carrying(3, log=client.log, source=sender.proc)
    assert sender.running(), "the sender ended before uplink 3 carried copies: raise its count"
    report = sender.wait()
    assert report["lost"] == [], report

    # A fresh run now crosses all 4 uplinks: each datagram once per uplink in each direction.
    before = counters.read()
    count = 200
    report = Sender(lab, count, 2).wait()
    assert report["lost"] == [], report

    def deltas() -> dict[str, int]:
        after = counters.read()
        return {k: after[k] - before[k] for k in after if after[k] != before[k]}

    expected = {f"{d}_sv{i}": count for i in range(4) for d in ("in", "out")}
    wait_until(
        lambda: deltas() == expected, f"copies per uplink {expected}", details=lambda: str(deltas())
    )


@pytest.mark.parametrize("pattern", ["up2", "up2*"])
def test_excluded_uplink_carries_nothing(lab: Lab, pattern: str) -> None:
    config = default_config(lab, excludedInterfaces=["eth*", pattern])
    counters = UplinkCounters(lab)
    echo = Echo(lab)
    server = start_server(lab, config)
    client = start_client(lab, config, (0, 1))
    warm_up(lab)
    before = counters.read()
    count = 300

    report = Sender(lab, count, 2).wait()
    stats = echo.stop()

    assert report["lost"] == [], report
    client.log.wait_for(r"up2: appeared \(excluded\)")
    assert "up2: socket" not in client.log.text()
    assert stats["received"] == 2 * (count + WARMUP), stats  # two uplinks, two copies
    assert stats["unique"] == count + WARMUP, stats
    after = counters.read()
    assert (after["in_sv2"], after["out_sv2"]) == (0, 0), after
    for i in (0, 1):
        for way in ("in", "out"):
            key = f"{way}_sv{i}"
            assert after[key] - before[key] == count, (before, after)
    assert lab.uplink(2).client_ip not in server.log.text()


def test_dst_overrides_send_each_uplink_to_its_own_destination(lab: Lab) -> None:
    require_tool("tcpdump")
    ups = lab.uplinks
    config = write_config(
        lab,
        client={
            "listenAddr": CLIENT_LISTEN,
            # Uplink 0's server side: unreachable through up1/up2 (no route), so the copies on
            # those only flow if the overrides are honoured.
            "dstAddr": f"{ups[0].server_ip}:{SERVER_PORT}",
            "dstOverrides": [
                {"ifName": "up1", "dstAddr": f"{ups[1].server_ip}:{SERVER_PORT}"},
                {"ifName": "up2*", "dstAddr": f"{ups[2].server_ip}:{SERVER_PORT}"},
                # First match wins: never used (up1 and up2 matched above, up0 does not match).
                {"ifName": "up[12]", "dstAddr": f"{lab.service_addr}:{SERVER_PORT}"},
            ],
        },
        server=server_section(),
    )
    echo = Echo(lab)
    server = start_server(lab, config)
    client = start_client(lab, config, ALL)
    warm_up(lab)
    count = 200
    report, captured, stats = send_captured(lab, echo, count)

    assert report["lost"] == [], report
    assert stats["received"] == 3 * (count + WARMUP), stats
    for up, datagrams in zip(ups, captured, strict=True):
        ip = re.escape(up.server_ip)
        client.log.wait_for(rf"up{up.index}: socket [0-9.]+:\d+ -> {ip}:{SERVER_PORT}\b")
        server.log.wait_for(server_saw(up.client_ip, up.server_ip))
        to_server = [d for d in datagrams if d.dport == SERVER_PORT]
        to_client = [d for d in datagrams if d.sport == SERVER_PORT]
        assert len(sequence_numbers(to_server)) == count, f"sv{up.index}"
        assert len(sequence_numbers(to_client)) == count, f"sv{up.index}"
        assert {(d.src, d.dst) for d in to_server} == {(up.client_ip, up.server_ip)}
        assert {(d.src, d.dst) for d in to_client} == {(up.server_ip, up.client_ip)}


# ---------------------------------------------------------------------------------------------
# Who may talk to whom


@pytest.mark.parametrize("drop", [True, False], ids=["dropForeignSources", "acceptForeign"])
def test_datagrams_from_foreign_sources_do_not_reach_wireguard(lab: Lab, drop: bool) -> None:
    config = default_config(lab, dropForeignSources=drop)
    echo = Echo(lab)
    server = start_server(lab, config)
    client = start_client(lab, config, ALL)
    sender = Sender(lab, 1500, 2)
    client.log.wait_for(r"WireGuard peer at ")
    per_uplink = 10
    injected = 0
    for up in lab.uplinks:
        match = server.log.wait_for(server_saw(up.client_ip))
        port = int(match.group(1))
        # The right host from the wrong port, and another address of the server namespace.
        for source in ((lab.service_addr, 40000), (up.server_ip, 40001)):
            inject_udp(
                lab, lab.server_ns, source, (up.client_ip, port), b"foreign!" * 4, per_uplink
            )
            injected += per_uplink
    assert sender.running(), "the sender ended before the injection: raise its count"

    report = sender.wait()
    echo.stop()
    assert report["lost"] == [], report
    if drop:
        assert report["foreign"] == 0, report
    else:  # the control: the same injection does reach the application when allowed
        assert report["foreign"] == injected, report


def test_multi_homed_server_replies_from_the_address_the_client_sent_to(lab: Lab) -> None:
    """The server has the service address and a second one on lo (plus one per uplink); the
    client talks to the second. The kernel would answer from the uplink's own address; engarde
    must answer from the second (IP_PKTINFO), or the client drops every reply as foreign."""
    require_tool("tcpdump")
    second = f"10.{lab.octet}.201.1"
    lab.run(lab.server_ns, "ip", "addr", "add", f"{second}/32", "dev", "lo")
    for up in lab.uplinks:
        lab.run(
            lab.client_ns, "ip", "route", "replace", f"{second}/32", "via", up.server_ip,
            "dev", up.name, "metric", str(up.metric),
        )  # fmt: skip
    # Precondition: the routing table alone would pick another source address.
    route = lab.run(lab.server_ns, "ip", "route", "get", lab.uplink(0).client_ip).stdout
    assert f"src {lab.uplink(0).server_ip}" in route, route

    config = write_config(
        lab,
        client={"listenAddr": CLIENT_LISTEN, "dstAddr": f"{second}:{SERVER_PORT}"},
        server=server_section(),
    )
    echo = Echo(lab)
    server = start_server(lab, config)
    start_client(lab, config, ALL)
    warm_up(lab)
    capture = Capture(lab, lab.server_ns, "sv0", f"udp port {SERVER_PORT}")
    count = 200

    report = Sender(lab, count, 2).wait()
    datagrams = capture.stop()
    echo.stop()

    assert report["lost"] == [], report
    assert report["foreign"] == 0, report
    assert report["duplicates"] > 0, report  # replies were accepted on more than one uplink
    for up in lab.uplinks:
        server.log.wait_for(server_saw(up.client_ip, second))
    replies = [d for d in datagrams if d.sport == SERVER_PORT]
    assert len(sequence_numbers(replies)) == count
    assert {d.src for d in replies} == {second}


# ---------------------------------------------------------------------------------------------
# Process life cycle


def assert_clean_exit(lab: Lab, proc: Engarde) -> None:
    """SIGTERM; exit code 0 well before the SIGKILL deadline, no traceback in the log."""
    code = lab.stop(proc.proc, timeout_s=8)
    text = proc.log.text()
    assert code == 0, f"engarde {proc.role} exit code {code}\n{proc.log.tail()}"
    assert "Traceback" not in text, proc.log.tail()


def test_sigterm_stops_client_and_server_cleanly(
    lab: Lab, relay: tuple[Echo, Engarde, Engarde]
) -> None:
    echo, server, client = relay
    report = Sender(lab, 100, 2).wait()
    assert report["lost"] == [], report
    assert_clean_exit(lab, client)
    assert_clean_exit(lab, server)
    assert "engarde client stopped" in client.log.text()
    assert "engarde server stopped" in server.log.text()
    echo.stop()


def test_second_client_on_the_same_listen_address_takes_over(
    lab: Lab, relay: tuple[Echo, Engarde, Engarde]
) -> None:
    """A second engarde with the same listen address is a successor (docs/restart.md): it
    takes over once its paths carry, the first one forwards what is left and exits 0; the
    datagrams sent meanwhile all come back."""
    _echo, _server, client = relay
    sender = Sender(lab, 1500, 2)  # 3 s of traffic across the handover
    second = start_client(lab, default_config(lab), ALL)
    assert sender.wait()["lost"] == [], second.log.tail()
    wait_handed_over(lab, client)
    report = Sender(lab, 100, 2).wait()
    assert report["lost"] == [], f"{report}\n{second.log.tail()}"


# These two need no namespace: loopback only, and the process exits before relaying anything.


def test_server_listen_address_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        config = tmp_path / "engarde.yml"
        config.write_text(
            f'server:\n  listenAddr: "127.0.0.1:{port}"\n  dstAddr: "127.0.0.1:{port}"\n'
        )
        proc = subprocess.run(
            [sys.executable, "-m", "engarde", "server", str(config)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "engarde.yml"
    config.write_text(
        'server:\n  listenAddr: "127.0.0.1:70000"\n  dstAddr: "127.0.0.1"\n  clientTimeuot: 5\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "engarde", "server", str(config)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 3, proc.stderr
    for line, key in zip(
        lines, ("server.listenAddr", "server.dstAddr", "server.clientTimeuot"), strict=True
    ):
        assert line.startswith(f"{config}: {key}: "), line
    assert "Traceback" not in proc.stderr


def send_captured(
    lab: Lab, echo: Echo, count: int
) -> tuple[dict[str, Any], list[list[Datagram]], dict[str, Any]]:
    """Send `count` datagrams (2 ms apart) while capturing what arrives on every server-side
    veth; the sender's report, the captures (per uplink) and the echo's counts."""
    captures = [Capture(lab, lab.server_ns, f"sv{i}", f"udp port {SERVER_PORT}") for i in ALL]
    report = Sender(lab, count, 2).wait()
    captured = [capture.stop() for capture in captures]
    return report, captured, echo.stop()
