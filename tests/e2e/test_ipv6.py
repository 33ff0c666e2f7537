"""IPv6: real WireGuard through engarde over IPv6 uplinks, endpoints and a dual-stack server.

- IPv6 only: every uplink has only an IPv6 address; WireGuard's peer Endpoint is the engarde
  client on [::1], the engarde server listens on [::] and hands over to WireGuard on [::1].
  Uplinks are cut and restored while pings cross the tunnel: none may be lost.
- Mixed: up0 IPv4 only, up1 IPv6 only, up2 both (so 4 paths, up2 carrying a copy over each
  family), `addressFamilies: [ipv4, ipv6]`, a dual-stack server ("[::]:port" serves both).
  While pings cross: up2 goes down and comes back, up1's address rotates (a new one added, the
  old one removed), then gets one that is tentative for a second or two (duplicate address
  detection): engarde waits for it, it does not spam errors. Nothing may be lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lab import Lab, ping
from tests.net.helpers import (
    WEB,
    api,
    start_engarde,
    start_server,
    wait_for_socket,
    wait_until,
    write_config,
)

WG_PORT = 59301
SERVER_PORT = 59402


def tunnel_up(lab: Lab, server_ip: str, details: Callable[[], str]) -> None:
    wait_until(
        lambda: ping(lab.client_ns, server_ip, count=1, timeout_s=1).received == 1,
        "the WireGuard tunnel",
        timeout_s=30,
        details=details,
    )


def test_ipv6_only_uplinks_and_endpoints(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(3)
    for i in range(3):  # the same uplinks, IPv6 only
        lab.delete_uplink(i)
        lab.add_uplink(i, families=("ipv6",))
    config = write_config(
        lab,
        client={
            "listenAddr": "[::1]:59401",
            "dstAddr": f"[{lab.service_addr6}]:{SERVER_PORT}",
            "addressFamilies": ["ipv6"],
            "excludedInterfaces": ["eg*w*"],
        },
        server={"listenAddr": f"[::]:{SERVER_PORT}", "dstAddr": f"[::1]:{WG_PORT}"},
    )
    server = start_server(lab, config)
    client = start_engarde(lab, "client", config)
    for i in range(3):
        wait_for_socket(client, i, ipv6=True)
    wg = lab.start_wireguard(server_port=WG_PORT, client_endpoint="[::1]:59401")

    def state() -> str:
        return "\n".join([wg.show("server"), server.log.tail(), client.log.tail()])

    tunnel_up(lab, wg.server_ip, state)
    pinger = lab.start_ping(wg.server_ip, 700, 0.01, timeout_s=2.0)
    for i, cut, restore in (
        (0, lambda: lab.link_down(0), lambda: lab.link_up(0)),
        (1, lambda: lab.delete_uplink(1), lambda: lab.add_uplink(1)),
        (2, lambda: lab.blackhole(2), lambda: lab.blackhole(2, on=False)),
    ):
        mark = client.log.mark()
        cut()
        wait_until(lambda: ping(lab.client_ns, wg.server_ip, count=1).received == 1, "pings")
        restore()
        if i != 2:
            wait_for_socket(client, i, since=mark, ipv6=True)
    result = pinger.wait(timeout_s=60)
    assert result.lost == [], f"{result}\n{state()}"
    assert "Traceback" not in server.log.text() + client.log.text()


def test_mixed_families_rotation_and_a_tentative_address(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(0)
    lab.add_uplink(0, families=("ipv4",))
    lab.add_uplink(1, families=("ipv6",))
    lab.add_uplink(2, families=("ipv4", "ipv6"))
    config = write_config(
        lab,
        client={
            "listenAddr": "127.0.0.1:59401",
            "dstAddr": f"{lab.service_addr}:{SERVER_PORT}",
            "dstAddrV6": f"[{lab.service_addr6}]:{SERVER_PORT}",
            "addressFamilies": ["ipv4", "ipv6"],
            "excludedInterfaces": ["eg*w*"],
            "webManager": {"listenAddr": WEB},
        },
        server={
            "listenAddr": f"[::]:{SERVER_PORT}",
            "dstAddr": f"127.0.0.1:{WG_PORT}",
            "webManager": {"listenAddr": WEB},
        },
    )
    server = start_server(lab, config)
    client = start_engarde(lab, "client", config)
    wait_for_socket(client, 0)
    wait_for_socket(client, 1, ipv6=True)
    wait_for_socket(client, 2)
    wait_for_socket(client, 2, ipv6=True)
    wg = lab.start_wireguard(server_port=WG_PORT, client_endpoint="127.0.0.1:59401")

    def state() -> str:
        return "\n".join([server.log.tail(), client.log.tail()])

    tunnel_up(lab, wg.server_ip, state)

    def families() -> dict[str, list[str]]:
        doc = api(lab, lab.client_ns, "/api/v2/status")
        return {
            link["name"]: sorted(p["family"] for p in link["paths"] if p["status"] == "active")
            for link in doc["links"]
            if link["name"].startswith("up")
        }

    wait_until(
        lambda: families() == {"up0": ["ipv4"], "up1": ["ipv6"], "up2": ["ipv4", "ipv6"]},
        "4 paths: up0 IPv4, up1 IPv6, up2 both",
        details=lambda: f"{families()}\n{state()}",
    )

    def server_families() -> set[str]:
        doc = api(lab, lab.server_ns, "/api/v2/status")
        found: set[str] = set()
        for group in doc["clients"]:
            for address in group["addresses"]:
                found.add("ipv6" if address["address"].startswith("[") else "ipv4")
        return found

    wait_until(lambda: server_families() == {"ipv4", "ipv6"}, "the server serving both")

    def link_rx(name: str) -> dict[str, Any]:
        doc = api(lab, lab.client_ns, "/api/v2/status")
        rx: dict[str, Any] = next(x for x in doc["links"] if x["name"] == name)["rx"]
        return rx

    # The dual-stack server answers each path from the address it was reached at (IPv4 through
    # the IPv6 socket too): the client (dropForeignSources) accepts what arrives over each.
    for name in ("up0", "up1"):
        wait_until(lambda name=name: link_rx(name)["datagrams"] > 0, f"replies over {name}")
        assert link_rx(name)["dropped"]["foreign"] == 0

    pinger = lab.start_ping(wg.server_ip, 1200, 0.01, timeout_s=2.0)
    # up2 down (both its paths) and back.
    mark = client.log.mark()
    lab.link_down(2)
    client.log.wait_for(r"up2: admin-down", since=mark)
    lab.link_up(2)
    wait_for_socket(client, 2, since=mark)
    wait_for_socket(client, 2, since=mark, ipv6=True)
    # up1's address rotates: a new one appears, then the old one goes.
    up1 = lab.uplink(1)
    old, new = up1.client_ip6, up1.host6(5)
    assert old is not None
    mark = client.log.mark()
    lab.add_address(1, f"{new}/64")
    lab.remove_address(1, f"{old}/64")
    client.log.wait_for(rf"up1: socket \[{new}\]:\d+ -> ", since=mark)
    client.log.wait_for(rf"up1: (address changed {old} -> {new}|.*path {old} gone)", since=mark)
    # ... and once more, to an address still being checked for duplicates (tentative).
    newer = up1.host6(7)
    mark = client.log.mark()
    lab.add_address(1, f"{newer}/64", dad=True)
    lab.remove_address(1, f"{new}/64")
    client.log.wait_for(r"up1: tentative -> stopped carrying copies", since=mark)
    lab.wait_address_ready(1, newer)
    client.log.wait_for(rf"up1: up, {newer} -> carrying copies", since=mark)
    wait_for_socket(client, 1, since=mark, ipv6=True)
    text = client.log.text(mark)
    assert "WARNING" not in text, text

    result = pinger.wait(timeout_s=60)
    assert result.lost == [], f"{result}\n{state()}"
    assert "Traceback" not in server.log.text() + client.log.text()
