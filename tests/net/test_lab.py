"""The namespace lab itself: topology, impairments, WireGuard, UDP tools, teardown."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ipaddress import ip_address

import pytest

from lab import (
    FAMILIES,
    MAX_CLIENTS,
    REPO_ROOT,
    UPLINKS_PER_CLIENT,
    Lab,
    LabError,
    PingResult,
    ping,
)
from lab.netns import WG_RUN_DIR
from tests.net.helpers import UplinkCounters


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


# ---------------------------------------------------------------------------------------------
# Several clients on one server namespace


def three_clients(make_lab: Callable[[int], Lab]) -> Lab:
    lab = make_lab(2)
    lab.add_client(2)
    lab.add_client(2)
    return lab


def test_client_limits_are_checked_before_anything_is_created() -> None:
    with pytest.raises(ValueError, match="clients"):
        Lab(1, clients=MAX_CLIENTS + 1)
    with pytest.raises(ValueError, match="n_uplinks"):
        Lab(UPLINKS_PER_CLIENT + 1, clients=2)


def test_each_client_has_its_own_uplinks_and_impairments(make_lab: Callable[[int], Lab]) -> None:
    lab = three_clients(make_lab)
    first, c1, c2 = lab.clients
    assert (first.ns, first.uplinks) == (lab.client_ns, lab.uplinks)
    assert len({c.ns for c in lab.clients} | {lab.server_ns}) == 4
    server_ends = [up.peer_name for c in lab.clients for up in c.uplinks]
    assert server_ends == ["sv0", "sv1", "c1s0", "c1s1", "c2s0", "c2s1"]
    assert len({up.server_ip for c in lab.clients for up in c.uplinks}) == 6
    assert (c2.uplink(1).name, c2.uplink(1).client_ip) == ("up1", f"10.{lab.octet}.51.2")

    c1.blackhole(0)
    c1.link_down(1)
    for client in lab.clients:
        for up in client.uplinks:
            result = client.ping(lab.service_addr, 2, 0.02, 0.3, interface=up.name)
            expected = 0 if client is c1 else 2
            assert result.received == expected, f"client {client.index} {up.name}: {result}"

    c2.delete_uplink(0)  # the server end c2s0 vanishes, sv0 and c1s0 stay
    assert lab.link_flags("c2s0", lab.server_ns) == set()
    assert "UP" in lab.link_flags("sv0", lab.server_ns)
    assert "UP" in lab.link_flags("c1s0", lab.server_ns)
    assert first.ping(lab.service_addr, 2, 0.02, 0.3, interface="up0").received == 2
    c2.add_uplink(0)
    assert c2.ping(lab.service_addr, 2, 0.02, 0.3, interface="up0").received == 2


def test_wireguard_hub_serves_three_clients_at_once_without_engarde(
    make_lab: Callable[[int], Lab],
) -> None:
    lab = three_clients(make_lab)
    counters = [UplinkCounters(lab, 2, port=59301, client=c) for c in lab.clients]
    hub = lab.start_wireguard_multi(client_endpoint=f"{lab.service_addr}:59301")
    assert hub.direct_endpoint == f"{lab.service_addr}:59301"
    names = [hub.server_if, *(peer.client_if for peer in hub.peers)]
    assert len(set(names)) == 4
    assert max(map(len, names)) <= 15
    assert [peer.client_ip for peer in hub.peers] == [f"10.{lab.octet}.250.{k}" for k in (2, 3, 4)]

    pingers = [peer.client.start_ping(hub.server_ip, 20, 0.02) for peer in hub.peers]
    for peer, pinger in zip(hub.peers, pingers, strict=True):
        result = pinger.wait(timeout_s=15)
        assert result.received == result.sent == 20, f"{peer}: {result}\n{peer.show()}"

    # Each client's tunnel crossed its own uplink 0 (the lowest metric), both ways, and the
    # server knows each peer at one of that client's own addresses.
    for client, count in zip(lab.clients, counters, strict=True):
        assert count.into(0) >= 20 and count.out_of(0) >= 20, (client, count.read())
    endpoints = dict(
        line.split("\t")
        for line in lab.run(lab.server_ns, "wg", "show", hub.server_if, "endpoints")
        .stdout.strip()
        .splitlines()
    )
    for peer in hub.peers:
        address = endpoints[peer.public_key].rsplit(":", 1)[0]
        assert address in {up.client_ip for up in peer.client.uplinks}, hub.show()


def test_close_removes_every_client_namespace_and_the_hub(
    make_lab: Callable[[int], Lab],
) -> None:
    lab = make_lab(1)
    second = lab.add_client(1)
    endpoints = ["127.0.0.1:59401", f"{lab.service_addr}:59301"]  # one per client
    hub = lab.start_wireguard_multi(client_endpoint=endpoints)
    assert [peer.client_endpoint for peer in hub.peers] == endpoints
    with pytest.raises(LabError, match="one WireGuard setup per lab"):
        lab.start_wireguard()
    sleeper = lab.popen(second.ns, "sleep", "60")
    lab.close()
    assert sleeper.returncode is not None
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = {line.split()[0] for line in listing.splitlines() if line.strip()}
    assert not {lab.client_ns, second.ns, lab.server_ns} & names
    for ifname in (hub.server_if, *(peer.client_if for peer in hub.peers)):
        assert not (WG_RUN_DIR / f"{ifname}.sock").exists()


# ---------------------------------------------------------------------------------------------
# IPv6


@pytest.fixture
def lab6(make_lab: Callable[[int], Lab]) -> Iterator[Lab]:
    """Three dual-stack uplinks (make_lab only for its netns marker and skip)."""
    with Lab(3, ipv6=True) as dual:
        yield dual


def ping6_via(lab: Lab, i: int, count: int = 2) -> PingResult:
    """Ping the IPv6 service address pinned to uplink i."""
    return ping(lab.client_ns, lab.service_addr6, count, 0.02, 0.3, interface=lab.uplinks[i].name)


def test_dual_stack_uplinks_reach_the_v6_service_address_until_cut(lab6: Lab) -> None:
    lab = lab6
    routes = lab.run(lab.client_ns, "ip", "-6", "route", "show", lab.service_addr6).stdout
    for up in lab.uplinks:
        assert up.families == FAMILIES
        assert ip_address(up.client_ip6 or "") == ip_address(f"fd00:{lab.octet}:{up.index}::2")
        assert f"via {up.server_ip6} dev {up.name} metric {up.metric}" in routes
        assert ping6_via(lab, up.index).received == 2
        assert ping_via(lab, up.index).received == 2
    lab.blackhole(1)
    lab.drop_random(2, 100)
    for i, expected in enumerate([2, 0, 0]):
        assert ping6_via(lab, i).received == expected, f"up{i}"
        assert ping_via(lab, i).received == expected, f"up{i}"


def test_ipv6_only_and_ipv4_only_uplinks_side_by_side(lab: Lab) -> None:
    up = lab.add_uplink(3, families=("ipv6",))
    assert (up.families, up.client_ip, up.server_ip) == (("ipv6",), None, None)
    assert lab.addresses(3, "ipv4") == lab.addresses(3, "ipv4", end="server") == []
    assert [a.address for a in lab.addresses(3, "ipv6") if a.scope == "global"] == [up.client_ip6]
    assert ping6_via(lab, 3).received == 2
    # The IPv4-only uplinks carry no global IPv6 address, so no IPv6 route either.
    assert all(a.scope == "link" for a in lab.addresses(0, "ipv6"))
    assert "unreachable" in ping6_via(lab, 0).errors
    assert ping_via(lab, 0).received == 2


def test_dad_deprecation_and_rotation_show_in_the_address_flags(lab6: Lab) -> None:
    lab = lab6
    new = lab.uplinks[0].host6(3)
    lab.add_address(0, f"{new}/64", dad=True)
    (seen,) = [a for a in lab.addresses(0) if a.address == new]
    assert seen.tentative and seen.family == "ipv6", seen
    started = time.monotonic()
    assert not lab.wait_address_ready(0, new).tentative
    assert time.monotonic() - started < 5
    lab.deprecate_address(0, f"{new}/64")
    (seen,) = [a for a in lab.addresses(0) if a.address == new]
    assert seen.deprecated and seen.preferred_lft_s == 0 and seen.valid_lft_s is None, seen
    lab.remove_address(0, f"{new}/64")
    assert new not in {a.address for a in lab.addresses(0)}
    with pytest.raises(LabError):
        lab.remove_address(0, f"{new}/64")


def test_link_down_flushes_v6_and_every_restore_brings_it_back(lab6: Lab) -> None:
    lab = lab6
    lab.link_down(1)
    assert lab.addresses(1, "ipv6") == []  # the kernel deletes IPv6 addresses on admin down
    assert [a.address for a in lab.addresses(1, "ipv4")] == [lab.uplinks[1].client_ip]
    assert ping6_via(lab, 1).received == 0
    lab.link_up(1)
    lab.link_up(1)  # idempotent
    assert ping6_via(lab, 1).received == 2

    lab.set_carrier(0, on=False)
    assert lab.addresses(0, "ipv6", end="server") == []  # the server end went admin-down
    assert ping6_via(lab, 0).received == 0
    lab.set_carrier(0, on=True)
    assert ping6_via(lab, 0).received == 2

    lab.delete_uplink(2)
    lab.add_uplink(2)
    assert ping6_via(lab, 2).received == ping_via(lab, 2).received == 2
    lab.delete_uplink(2)
    assert lab.add_uplink(2, families="ipv6").client_ip is None  # redefined IPv6-only
    assert ping6_via(lab, 2).received == 2
    assert lab.addresses(2, "ipv4") == []


def test_wireguard_direct_over_the_v6_service_address(lab6: Lab) -> None:
    lab = lab6
    endpoint = f"[{lab.service_addr6}]:59301"
    pair = lab.start_wireguard(client_endpoint=endpoint, tunnel_ipv6=True)
    assert pair.direct_endpoint6 == endpoint
    result = ping(lab.client_ns, pair.server_ip, 5, 0.02, 2.0)
    assert result.received == result.sent == 5, f"{result}\n{pair.show()}"
    assert pair.server_ip6 is not None
    assert ping(lab.client_ns, pair.server_ip6, 3, 0.02, 2.0).received == 3
    # The server saw the client at its IPv6 address on uplink 0 (the lowest metric).
    endpoints = lab.run(lab.server_ns, "wg", "show", pair.server_if, "endpoints").stdout
    assert f"\t[{lab.uplinks[0].client_ip6}]:" in endpoints, pair.show("server")
