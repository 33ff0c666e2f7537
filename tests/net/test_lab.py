"""The namespace lab itself: topology, impairments, WireGuard, UDP tools, teardown."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from lab import REPO_ROOT, Lab, PingResult, ping
from lab.netns import WG_RUN_DIR


def ping_via(lab: Lab, i: int, count: int = 2) -> PingResult:
    """Ping the service address pinned to uplink i, as an engarde uplink socket would go."""
    return ping(lab.client_ns, lab.service_addr, count, 0.02, 0.3, interface=lab.uplinks[i].name)


def assert_only_broken(lab: Lab, broken: int) -> None:
    for up in lab.uplinks:
        result = ping_via(lab, up.index)
        if up.index == broken:
            assert result.received == 0, f"{up.name} should be cut: {result}"
        else:
            assert result.received == result.sent == 2, f"{up.name} should work: {result}"


def test_every_uplink_reaches_the_service_address(lab: Lab) -> None:
    routes = lab.run(lab.client_ns, "ip", "route", "show", lab.service_addr).stdout
    for up in lab.uplinks:
        assert f"via {up.server_ip} dev {up.name} metric {up.metric}" in routes
        assert ping(lab.client_ns, up.server_ip, 2, 0.02).received == 2
        assert ping_via(lab, up.index).received == 2


def test_link_down_cuts_and_link_up_restores_the_route(lab: Lab) -> None:
    lab.link_down(1)
    assert "UP" not in lab.link_flags("up1")
    assert_only_broken(lab, 1)
    lab.link_up(1)
    lab.link_up(1)  # idempotent
    assert ping_via(lab, 1).received == 2


def test_blackhole_drops_silently(lab: Lab) -> None:
    lab.blackhole(0)
    assert {"UP", "LOWER_UP"} <= lab.link_flags("up0")
    assert_only_broken(lab, 0)
    lab.blackhole(0, on=False)
    lab.blackhole(0, on=False)  # removing twice is fine
    assert ping_via(lab, 0).received == 2


def test_drop_random_100_percent_drops_all(lab: Lab) -> None:
    lab.drop_random(2, 100)
    assert_only_broken(lab, 2)
    lab.drop_random(2, 0)
    assert ping_via(lab, 2).received == 2


def test_carrier_loss_keeps_the_link_admin_up(lab: Lab) -> None:
    lab.set_carrier(0, on=False)
    flags = lab.link_flags("up0")
    assert "UP" in flags
    assert "NO-CARRIER" in flags
    assert "LOWER_UP" not in flags
    assert "linkdown" in lab.run(lab.client_ns, "ip", "route", "show", "dev", "up0").stdout
    assert_only_broken(lab, 0)
    lab.set_carrier(0, on=True)
    assert ping_via(lab, 0).received == 2


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_delete_and_add_uplinks(lab: Lab) -> None:
    lab.delete_uplink(1)
    assert lab.link_flags("up1") == set()
    assert ping_via(lab, 0).received == 2
    lab.add_uplink(1)
    new = lab.add_uplink(2)  # hot-add a third uplink
    assert (new.name, new.client_ip) == ("up2", f"10.{lab.octet}.2.2")
    for up in lab.uplinks:
        assert ping_via(lab, up.index).received == 2


def test_wireguard_pair_pings_across_without_engarde(lab: Lab) -> None:
    pair = lab.start_wireguard(client_endpoint=f"{lab.uplinks[0].server_ip}:59301")
    assert pair.client_if != pair.server_if
    assert max(len(pair.client_if), len(pair.server_if)) <= 15
    result = ping(lab.client_ns, pair.server_ip, 5, 0.02, 2.0)
    assert result.received == result.sent == 5, result
    # Replies come back through the lab, not through some shortcut.
    assert "latest handshake" in pair.show("server")
    pair.close()
    for ifname in (pair.client_if, pair.server_if):
        assert not (WG_RUN_DIR / f"{ifname}.sock").exists()
    assert lab.link_flags(pair.client_if) == set()


@pytest.mark.parametrize("wg_shape", [False, True])
@pytest.mark.parametrize("lab", [1], indirect=True)
def test_udp_tools_echo_and_send_across_the_lab(lab: Lab, wg_shape: bool) -> None:
    echo_args = ["-m", "lab.udp_tools", "echo", "--listen", "0.0.0.0:0", "--dedup"]
    echo = lab.popen_python(lab.server_ns, *echo_args, stdout=subprocess.PIPE, text=True)
    assert echo.stdout is not None
    port = json.loads(echo.stdout.readline())["listening"].rsplit(":", 1)[1]
    report = lab.workdir / "send.json"
    send_args = f"-m lab.udp_tools send --to {lab.service_addr}:{port} --count 50"
    send_args += f" --interval-ms 1 --grace-ms 500 --report {report}"
    if wg_shape:
        send_args += " --wg-shape"
    sender = lab.popen_python(lab.client_ns, *send_args.split())
    assert sender.wait(timeout=10) == 0
    sent = json.loads(report.read_text())
    assert (sent["sent"], sent["received_unique"], sent["lost"]) == (50, 50, [])
    lab.stop(echo)
    stats = json.loads(echo.stdout.read())
    assert (stats["received"], stats["unique"], stats["duplicates"]) == (50, 50, 0)


def test_udp_echo_dedup_on_loopback() -> None:
    """Needs no namespace: loopback of this machine only."""
    echo = subprocess.Popen(
        [sys.executable, "-m", "lab.udp_tools", "echo", "--listen", "127.0.0.1:0", "--dedup"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert echo.stdout is not None
        port = int(json.loads(echo.stdout.readline())["listening"].rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            for payload in (b"one", b"one", b"two", b"one"):
                sock.sendto(payload, ("127.0.0.1", port))
            assert sorted(sock.recv(100) for _ in range(2)) == [b"one", b"two"]
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(100)
    finally:
        echo.terminate()
        out, _ = echo.communicate(timeout=5)
    stats = json.loads(out)
    assert (stats["received"], stats["unique"], stats["duplicates"]) == (4, 2, 2)


def test_close_removes_namespaces_processes_and_sockets(make_lab: Callable[[int], Lab]) -> None:
    lab = make_lab(1)
    pair = lab.start_wireguard()
    sleeper = lab.popen(lab.client_ns, "sleep", "60")
    lab.close()
    lab.close()  # idempotent
    assert sleeper.returncode is not None
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in listing.splitlines() if line.strip()}
    assert not {lab.client_ns, lab.server_ns} & names
    assert not (WG_RUN_DIR / f"{pair.client_if}.sock").exists()
    assert not lab.workdir.exists()
