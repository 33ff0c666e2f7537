"""One engarde server port, one WireGuard interface with 3 peers, 3 field kits.

The server namespace runs one engarde server and one wireguard-go interface with 3 peers; each
of 3 client namespaces has 2 uplinks, its own engarde client and its own wireguard-go peer. All
three ping through the tunnel at the same time while uplinks of each are cut and restored
(always one left per client): no ping may be lost. tcpdump on every client uplink shows that
each client receives only datagrams of its own WireGuard sessions (by index). Then one client
restarts (its engarde client and its WireGuard sessions): the other two lose nothing meanwhile,
and it comes back.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

from lab import ClientSide, Lab
from tests.net.helpers import (
    CLIENT_LISTEN,
    Capture,
    Datagram,
    Engarde,
    server_section,
    start_engarde,
    start_server,
    stop_gracefully,
    wait_for_socket,
    wait_until,
    wireguard_client_section,
    write_config,
)

WG_PORT = 59301
SERVER_PORT = 59402
UPLINKS = 2
INTERVAL_S = 0.01


def start_kit(lab: Lab, side: ClientSide) -> Engarde:
    path = write_config(lab, f"client{side.index}.yml", client=wireguard_client_section(lab))
    client = start_engarde(lab, "client", path, ns=side.ns)
    for i in range(UPLINKS):
        wait_for_socket(client, i)
    return client


def indices(datagrams: list[Datagram]) -> tuple[set[int], set[int]]:
    """(indices this client's WireGuard created: senders of its initiations and responses,
    indices named by what the server sent it: receivers of responses, cookies and data)."""
    own: set[int] = set()
    named: set[int] = set()
    for d in datagrams:
        p = d.payload
        if len(p) < 16:
            continue
        kind = p[0]
        if d.dport == SERVER_PORT and kind in (1, 2):  # from this client's WireGuard
            own.add(struct.unpack_from("<I", p, 4)[0])
        elif d.sport == SERVER_PORT:
            if kind == 2:
                named.add(struct.unpack_from("<I", p, 8)[0])
            elif kind in (3, 4):
                named.add(struct.unpack_from("<I", p, 4)[0])
            elif kind == 1:
                named.add(-1)  # an initiation names no peer index; it must still be ours
    return own, named


def test_three_clients_share_one_server_port_isolated(make_lab: Callable[[int], Lab]) -> None:
    lab = make_lab(UPLINKS)
    sides = [lab.clients[0], lab.add_client(UPLINKS), lab.add_client(UPLINKS)]
    server_config = write_config(
        lab, "server.yml", server=server_section(f"127.0.0.1:{WG_PORT}", wireguard_only=True)
    )
    server = start_server(lab, server_config)
    kits = [start_kit(lab, side) for side in sides]
    hub = lab.start_wireguard_multi(server_port=WG_PORT, client_endpoint=CLIENT_LISTEN)
    captures = [
        Capture(lab, side.ns, f"up{i}", f"udp port {SERVER_PORT}")
        for side in sides
        for i in range(UPLINKS)
    ]

    def state() -> str:
        return "\n".join([hub.show(), server.log.tail(3000)] + [k.log.tail(1200) for k in kits])

    for peer in hub.peers:
        wait_until(
            lambda peer=peer: peer.client.ping(hub.server_ip, count=1, timeout_s=1).received == 1,
            f"client {peer.index}'s tunnel",
            timeout_s=30,
            details=state,
        )

    # All three ping at once while each client's uplinks are cut and restored in turn.
    count = 900
    pingers = [side.start_ping(hub.server_ip, count, INTERVAL_S, timeout_s=2.0) for side in sides]
    steps: list[tuple[float, Callable[[], Any]]] = []
    for k, side in enumerate(sides):
        offset = 0.4 * k
        steps += [
            (0.5 + offset, lambda side=side: side.link_down(0)),
            (1.7 + offset, lambda side=side: side.link_up(0)),
            (3.0 + offset, lambda side=side: side.blackhole(1)),
            (4.2 + offset, lambda side=side: side.blackhole(1, on=False)),
            (5.2 + offset, lambda side=side: side.blackhole(0)),
            (6.4 + offset, lambda side=side: side.blackhole(0, on=False)),
        ]
    started = time.monotonic()
    for at, action in sorted(steps, key=lambda step: step[0]):
        time.sleep(max(0.0, started + at - time.monotonic()))
        action()
    results = [p.wait(timeout_s=count * INTERVAL_S + 60) for p in pingers]
    for k, result in enumerate(results):
        assert result.sent == count and result.lost == [], f"client {k}: {result}\n{state()}"

    # One client restarts: its engarde client, and its WireGuard (new sessions).
    survivors = [side.start_ping(hub.server_ip, 500, INTERVAL_S, timeout_s=2.0) for side in
                 sides[:2]]  # fmt: skip
    time.sleep(0.5)
    stop_gracefully(lab, kits[2].proc)
    restarted = hub.peers[2]
    before_restart = captures[4].stop() + captures[5].stop()
    old_sessions = indices(before_restart)[0]
    # Its WireGuard forgets the server peer and learns it again: new keypairs, new indices.
    wg_peer = ["wg", "set", restarted.client_if, "peer", hub.server_public_key]
    lab.run(sides[2].ns, *wg_peer, "remove")
    lab.run(sides[2].ns, *wg_peer, "allowed-ips", f"{hub.server_ip}/32", "endpoint",
            CLIENT_LISTEN)  # fmt: skip
    captures[4:6] = [Capture(lab, sides[2].ns, f"up{i}", f"udp port {SERVER_PORT}")
                     for i in range(UPLINKS)]  # fmt: skip
    kits[2] = start_kit(lab, sides[2])
    wait_until(
        lambda: sides[2].ping(hub.server_ip, count=1, timeout_s=1).received == 1,
        "the restarted client's tunnel",
        timeout_s=30,
        details=state,
    )
    for k, pinger in enumerate(survivors):
        result = pinger.wait(timeout_s=60)
        assert result.lost == [], f"client {k} while client 2 restarted: {result}\n{state()}"
    assert sides[2].ping(hub.server_ip, count=20, interval_s=0.02).received == 20
    after_restart = captures[4].stop() + captures[5].stop()
    captures[4:6] = []
    new_sessions = indices(after_restart)[0]
    assert new_sessions and not new_sessions & old_sessions, "client 2 has new sessions"

    # Each client received only what belongs to its own WireGuard sessions.
    per_client: list[list[Datagram]] = [[], [], before_restart + after_restart]
    for n, capture in enumerate(captures):
        per_client[n // UPLINKS] += capture.stop()
    owned = [indices(datagrams) for datagrams in per_client]
    for k, (own, named) in enumerate(owned):
        assert own and named, f"client {k}: nothing captured"
        foreign = named - own - {-1}
        assert not foreign, f"client {k} got datagrams for indices {sorted(foreign)}\n{state()}"
        others = set().union(*(o for j, (o, _) in enumerate(owned) if j != k))
        assert not (named & others), f"client {k} got another client's datagrams"
    assert "Traceback" not in server.log.text()
