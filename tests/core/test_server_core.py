"""ServerCore: clients grouped by WireGuard session, proofs, isolation, reflection, caps, expiry.

The tests drive the core as the shell does (engarde.net.server): every datagram from a client
address goes through `from_client` (the shell's hot path takes a subset of these with the same
outcome), every datagram our WireGuard sends goes through `from_wireguard` with the route whose
socket it arrived on. `Shell` below plays the sockets: it "opens" a route's socket when the
core returns a route without one, and records which routes the core closes.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from engarde.config import load_config_text
from engarde.core import wireguard as wg
from engarde.core.peers import Client, ClientAddress, Route
from engarde.core.server import (
    INDEX_TTL_S,
    MAX_PROBES,
    PROBE_LINGER_S,
    ServerCore,
)

A1, A2, A3, A4 = (("203.0.113.7", 40000 + i) for i in range(1, 5))
B1, B2 = ("198.51.100.9", 41001), ("198.51.100.9", 41002)
V = ("192.0.2.66", 5353)  # a victim whose address an attacker spoofs
LOCAL = bytes([192, 0, 2, 1])
TAG = b"T" * 16


def initiation(sender: int, fill: int = 1) -> bytes:
    return struct.pack("<I I", 1, sender) + bytes([fill]) * 140


def response(sender: int, receiver: int) -> bytes:
    return struct.pack("<I I I", 2, sender, receiver) + bytes(80)


def cookie(receiver: int) -> bytes:
    return struct.pack("<I I", 3, receiver) + bytes(56)


def data(receiver: int, counter: int = 0, tag: bytes = TAG, payload: int = 16) -> bytes:
    return struct.pack("<I I Q", 4, receiver, counter) + bytes(payload) + tag


def make_core(extra: str = "") -> ServerCore:
    timeout = "" if "clientTimeout" in extra else "  clientTimeout: 30"
    config = load_config_text(
        f"""
server:
  listenAddr: "0.0.0.0:59402"
  dstAddr: "127.0.0.1:59301"
{timeout}
{extra}
""",
        role="server",
    ).server
    assert config is not None
    return ServerCore(config, now=0.0)


class Shell:
    """The sockets, played: what reached WireGuard through which route, what left to whom."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.core.lobby.upstream = "lobby-socket"
        self.closed: list[Route] = []
        self.to_wireguard: list[tuple[Route, bytes]] = []

    def send(
        self, src: tuple[str, int], msg: bytes, now: float, local: bytes = LOCAL
    ) -> Route | None:
        kind = wg.message_type(msg, len(msg)) if self.core.strict else wg.DATA
        assert kind != wg.JUNK
        route = self.core.from_client(src, local, kind, msg, len(msg), now)
        if route is not None:
            if route.upstream is None:
                route.upstream = f"socket-{id(route)}"
            self.to_wireguard.append((route, msg))
        self._close()
        return route

    def wireguard(self, route: Route, msg: bytes, now: float) -> list[tuple[str, int]]:
        """Our WireGuard sends `msg` on `route`'s socket: the addresses it goes to."""
        assert route.upstream is not None, "WireGuard answers only on a socket that exists"
        kind = wg.message_type(msg, len(msg))
        targets = [e.address for e in self.core.from_wireguard(route, kind, msg, now)]
        self._close()
        return targets

    def expire(self, now: float) -> list[str]:
        lines = self.core.expire(now)
        self._close()
        return lines

    def _close(self) -> None:
        for route in self.core.take_closing():
            route.upstream = None
            self.closed.append(route)


def client_of(core: ServerCore, address: tuple[str, int]) -> Client | None:
    entry = core.addresses.get(address)
    return entry.client if entry is not None else None


def handshake(
    shell: Shell, senders: list[tuple[str, int]], ours: int, theirs: int, now: float
) -> Client:
    """A new client's handshake over all its uplinks; our WireGuard answers on the lobby."""
    for src in senders:
        assert shell.send(src, initiation(theirs), now) is shell.core.lobby
    targets = shell.wireguard(shell.core.lobby, response(ours, theirs), now)
    assert sorted(targets) == sorted(senders)
    client = client_of(shell.core, senders[0])
    assert client is not None
    return client


# ---- handshakes --------------------------------------------------------------------------------


def test_a_handshake_makes_a_client_of_every_address_that_sent_it() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1, A2, A3], ours=77, theirs=11, now=1.0)
    assert set(client.addresses) == {A1, A2, A3}
    assert 77 in client.local_indices and 11 in client.peer_indices
    assert not core.pending
    assert any("new WireGuard peer" in line for line in core.take_log())


def test_an_initiation_alone_proves_nothing() -> None:
    core = make_core()
    shell = Shell(core)
    assert shell.send(A1, initiation(11), 1.0) is core.lobby
    assert not core.addresses and list(core.pending) == [A1]
    # WireGuard sends nothing back (a forged initiation): nobody gets anything, ever.
    assert shell.wireguard(core.lobby, data(11), 1.1) == []
    assert core.stats.unroutable_from_wireguard == 1


def test_the_response_goes_only_to_exact_senders_of_the_initiation() -> None:
    core = make_core()
    shell = Shell(core)
    shell.send(A1, initiation(11), 1.0)
    shell.send(V, initiation(11, fill=9), 1.0)  # same sender index, other bytes: not a copy
    assert shell.wireguard(core.lobby, response(77, 11), 1.01) == [A1]
    assert core.stats.initiation_mismatches == 1
    assert V in core.pending and V not in core.addresses


def test_a_rekey_from_a_known_address_keeps_its_client() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    assert shell.send(A1, initiation(12), 20.0) is client  # through the client's own socket
    assert shell.send(A4, initiation(12), 20.0) is core.lobby  # a new uplink sent it too
    assert sorted(shell.wireguard(client, response(78, 12), 20.01)) == [A1, A2, A4]
    assert client_of(core, A4) is client
    assert {77, 78} <= set(client.local_indices) and len(core.clients) == 1


def test_a_cookie_reply_on_the_lobby_goes_to_the_initiators_only() -> None:
    core = make_core()
    shell = Shell(core)
    shell.send(A1, initiation(11), 1.0)
    shell.send(A2, initiation(99), 1.0)
    assert shell.wireguard(core.lobby, cookie(11), 1.01) == [A1]
    assert core.stats.cookies_to_unproven == 1
    assert not core.addresses, "a cookie reply proves nothing"


def test_what_wireguard_initiates_on_the_lobby_goes_nowhere() -> None:
    core = make_core()
    shell = Shell(core)
    shell.send(A1, initiation(11), 1.0)
    assert shell.wireguard(core.lobby, initiation(55), 1.01) == []


# ---- copies and dedup -------------------------------------------------------------------------


def test_exact_copies_are_dropped_and_each_address_measured() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1, A2, A3], ours=77, theirs=11, now=1.0)
    for counter in range(10):
        assert shell.send(A1, data(77, counter, tag=bytes([counter]) * 16), 2.0) is client
        assert shell.send(A2, data(77, counter, tag=bytes([counter]) * 16), 2.001) is None
        if counter % 2:
            assert shell.send(A3, data(77, counter, tag=bytes([counter]) * 16), 2.002) is None
    assert core.stats.duplicates_dropped == 15 and client.duplicates_dropped == 15
    core.sweep(5.0)
    q1, q2, q3 = (client.addresses[a].quality for a in (A1, A2, A3))
    # A3 carries from its first copy (counter 1): counter 0 is not charged to it.
    assert (q1.won, q2.late, q3.late, q3.lost) == (10, 10, 5, 4)


def test_with_dedup_off_copies_go_through_and_are_still_measured() -> None:
    core = make_core("  dedup: false")
    shell = Shell(core)
    client = handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    assert shell.send(A1, data(77, 0), 2.0) is client
    assert shell.send(A2, data(77, 0), 2.001) is client
    assert client.addresses[A2].quality.late == 1 and core.stats.duplicates_dropped == 0


def test_a_forged_copy_is_not_dropped_and_does_not_prove() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1], ours=77, theirs=11, now=1.0)
    assert shell.send(A1, data(77, 5), 2.0) is client
    # Same index and counter, another tag, from an address nobody proved: not a copy.
    route = shell.send(V, data(77, 5, tag=b"F" * 16), 2.001)
    assert route is not client and V not in core.addresses


def test_a_new_uplink_joins_by_sending_exact_copies() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1], ours=77, theirs=11, now=1.0)
    shell.send(A1, data(77, 1), 2.0)
    assert shell.send(A4, data(77, 1), 2.01) is None  # a copy: A4 proven, the copy dropped
    assert client_of(core, A4) is client
    assert client.addresses[A4].proven_by == "copy"
    assert sorted(shell.wireguard(client, data(11, 0), 2.02)) == [A1, A4]


def test_a_new_uplink_faster_than_the_others_is_proven_by_wireguard() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1], ours=77, theirs=11, now=1.0)
    probe = shell.send(A4, data(77, 1), 2.0)  # first to deliver: no copy to match yet
    assert isinstance(probe, ClientAddress) and probe.address == A4
    assert shell.send(A1, data(77, 1), 2.01) is client  # A4's copy went via its probe
    # WireGuard authenticated A4's datagram and answers on A4's probe: A4 is proven.
    assert sorted(shell.wireguard(probe, data(11, 0), 2.02)) == [A1, A4]
    assert client_of(core, A4) is client and client.addresses[A4].proven_by == "wireguard"
    # The probe lingers a moment (WireGuard may still use it), then closes.
    shell.expire(2.5)
    assert probe not in shell.closed
    shell.expire(2.03 + PROBE_LINGER_S + 1)
    assert probe in shell.closed


# ---- isolation -------------------------------------------------------------------------------


def test_each_client_gets_only_what_wireguard_sends_it() -> None:
    core = make_core()
    shell = Shell(core)
    one = handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    two = handshake(shell, [B1, B2], ours=88, theirs=22, now=1.0)
    assert one is not two
    assert shell.send(A1, data(77, 0), 2.0) is one
    assert shell.send(B1, data(88, 0), 2.0) is two
    assert sorted(shell.wireguard(one, data(11, 0), 2.01)) == [A1, A2]
    assert sorted(shell.wireguard(two, data(22, 0), 2.01)) == [B1, B2]
    assert sorted(shell.wireguard(two, initiation(89), 2.02)) == [B1, B2]  # WG-initiated
    assert 89 in two.local_indices and 89 not in one.local_indices


def test_a_proven_address_naming_another_clients_session_is_not_refreshed() -> None:
    core = make_core()
    shell = Shell(core)
    one = handshake(shell, [A1], ours=77, theirs=11, now=1.0)
    handshake(shell, [B1], ours=88, theirs=22, now=1.0)
    assert shell.send(A1, data(88, 0), 20.0) is one  # through its own client's socket only
    assert core.stats.wrong_session_datagrams == 1
    shell.expire(32.0)
    assert A1 not in core.addresses, "not refreshed by another client's session"


def test_two_clients_that_are_one_peer_merge() -> None:
    core = make_core()
    shell = Shell(core)
    one = handshake(shell, [A1], ours=77, theirs=11, now=1.0)
    two = handshake(shell, [A2], ours=78, theirs=12, now=1.5)
    assert shell.send(A2, data(78, 0), 1.6) is two
    # WireGuard sends, on two's socket, data for one's peer session: the same peer.
    assert sorted(shell.wireguard(two, data(11, 0), 2.0)) == [A1, A2]
    assert list(core.clients) == [one.id] and client_of(core, A2) is one
    assert two.merged_into is one
    # two's socket stays open a moment (WireGuard just used it), then closes.
    assert sorted(shell.wireguard(two, data(12, 1), 2.1)) == [A1, A2]
    shell.expire(2.0 + PROBE_LINGER_S + 1)
    assert two in shell.closed


# ---- reflection --------------------------------------------------------------------------------


def test_an_attacker_who_knows_the_index_gets_nothing_sent_to_victims() -> None:
    """An on-path observer read index 77 off the wire and spoofs 2000 victim addresses with
    transport data naming it (it cannot know the tags). Nothing reaches any victim."""
    core = make_core("  maxClients: 1024")
    shell = Shell(core)
    client = handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    victims = [("192.0.2.66", 1000 + i) for i in range(2000)]
    now = 2.0
    for i, victim in enumerate(victims):
        shell.send(victim, data(77, 10_000 + i, tag=b"F" * 16), now + i * 1e-4)
        if i % 100 == 0:  # the real client keeps talking meanwhile
            assert shell.send(A1, data(77, i), now + i * 1e-4) is client
    assert len(core.probes) <= MAX_PROBES
    assert core.stats.probes_refused > 0
    # WireGuard never answers a forged datagram, so it only sends on the client's socket:
    sent: list[tuple[str, int]] = []
    for counter in range(50):
        sent += shell.wireguard(client, data(11, counter), 3.0)
    assert set(sent) == {A1, A2}, "amplification 0: no victim got a byte"
    assert set(client.addresses) == {A1, A2}, "the real client was not evicted"
    assert len(core.pending) <= 1024


def test_the_same_right_after_a_restart() -> None:
    core = make_core()  # a fresh server: knows no session, while the tunnel goes on
    shell = Shell(core)
    victims = [("192.0.2.66", 1000 + i) for i in range(100)]
    for i, victim in enumerate(victims):
        shell.send(victim, data(77, 500 + i, tag=b"F" * 16), 1.0)
    probe = shell.send(A1, data(77, 1), 1.01)
    assert isinstance(probe, ClientAddress) or probe is None
    if probe is None:  # the attacker used up the probe rate: the next second it is back
        probe = shell.send(A1, data(77, 2), 3.0)
    assert isinstance(probe, ClientAddress)
    # WireGuard authenticated A1's datagram and answers on its probe only.
    assert shell.wireguard(probe, data(11, 0), 3.01) == [A1]
    client = client_of(core, A1)
    assert client is not None and 77 in client.local_indices
    # A2's copies now match A1's: proven by copy; victims never matched anything.
    shell.send(A1, data(77, 3), 3.1)
    assert shell.send(A2, data(77, 3), 3.11) is None and client_of(core, A2) is client
    assert sorted(shell.wireguard(client, data(11, 1), 3.2)) == [A1, A2]
    assert not any(v in core.addresses for v in victims)


def test_a_flood_of_spoofed_handshakes_churns_only_unproven_entries() -> None:
    core = make_core("  maxClients: 100\n  maxPeers: 4")
    shell = Shell(core)
    client = handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    for i in range(5000):
        shell.send(("192.0.2.66", i), initiation(100_000 + i), 2.0)
    assert len(core.pending) <= 100
    assert client_of(core, A1) is client and client_of(core, A2) is client
    assert list(core.clients) == [client.id]


def test_forged_data_from_a_proven_address_does_not_refresh_it() -> None:
    core = make_core()
    shell = Shell(core)
    handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    for t in range(5, 40, 5):
        shell.send(A2, data(77, t), float(t))  # A2 keeps talking
        shell.send(A1, data(12345, t), float(t))  # someone spoofs A1 with a wrong session
        shell.send(A1, initiation(500 + t), float(t))  # ... and with initiations
    shell.expire(40.0)
    assert A1 not in core.addresses and A2 in core.addresses


# ---- caps and expiry ---------------------------------------------------------------------------


def test_max_peers_caps_clients_and_evicts_the_stalest() -> None:
    core = make_core("  maxPeers: 2")
    shell = Shell(core)
    first = handshake(shell, [A1], ours=71, theirs=11, now=1.0)
    shell.send(A1, data(71, 0), 1.5)
    handshake(shell, [A2], ours=72, theirs=12, now=2.0)
    shell.send(A2, data(72, 0), 3.0)
    handshake(shell, [A3], ours=73, theirs=13, now=4.0)
    assert len(core.clients) == 2 and first.id not in core.clients
    assert first in shell.closed
    assert A1 not in core.addresses and 71 not in core.local_index


def test_addresses_and_clients_expire_and_their_sockets_close() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    shell.send(A1, data(77, 0), 2.0)
    assert shell.send(A1, data(77, 1), 20.0) is client
    lines = shell.expire(31.5)
    assert A2 not in core.addresses and A1 in core.addresses
    assert any("forgotten" in line for line in lines)
    lines = shell.expire(51.0)
    assert client.id not in core.clients and client in shell.closed
    assert any("expired" in line for line in lines)
    assert 77 not in core.local_index


def test_indices_expire_with_their_sessions() -> None:
    core = make_core("  clientTimeout: 1000")
    shell = Shell(core)
    client = handshake(shell, [A1], ours=77, theirs=11, now=1.0)
    shell.send(A1, initiation(12), 100.0)
    shell.wireguard(client, response(78, 12), 100.0)
    shell.send(A1, data(78, 0), INDEX_TTL_S + 50)
    shell.expire(INDEX_TTL_S + 50)
    assert 77 not in client.local_indices and 77 not in core.local_index
    assert 78 in client.local_indices


def test_a_send_failure_drops_the_address() -> None:
    core = make_core()
    shell = Shell(core)
    handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    line = core.drop(A1, 111, 2.0)
    assert line is not None and "ECONNREFUSED" in line and A1 not in core.addresses
    assert core.drop(A1, 111, 2.0) is None


# ---- relayNonWireGuard -------------------------------------------------------------------------


def test_relay_non_wireguard_keeps_one_group_for_everyone() -> None:
    core = make_core("  relayNonWireGuard: true")
    shell = Shell(core)
    everyone = core.everyone
    assert everyone is not None and not core.dedup
    for src in (A1, B1, V):
        assert shell.send(src, b"not wireguard at all", 1.0) is everyone
    assert sorted(shell.wireguard(everyone, data(1), 1.1)) == sorted([A1, B1, V])
    shell.expire(100.0)
    assert core.everyone is everyone and everyone.id in core.clients


# ---- status ------------------------------------------------------------------------------------


def test_snapshot_groups_addresses_under_clients() -> None:
    core = make_core()
    shell = Shell(core)
    handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    shell.send(V, initiation(5), 1.0)
    snap = core.snapshot(2.0)
    assert [c["addresses"] for c in snap["clients"]] == [["203.0.113.7:40001", "203.0.113.7:40002"]]
    assert snap["clients"][0]["sessions"] == ["0000004d"]
    by_address = {s["address"]: s for s in snap["sockets"]}
    assert by_address["192.0.2.66:5353"]["confirmed"] is False
    assert by_address["203.0.113.7:40001"]["client"] == snap["clients"][0]["id"]


@pytest.mark.parametrize("bad", [b"\x04\x00\x00\x00" + bytes(28)])
def test_odd_transport_data_never_raises(bad: bytes) -> None:
    core = make_core()
    shell = Shell(core)
    handshake(shell, [A1], ours=0, theirs=0, now=1.0)
    shell.send(A1, bad, 2.0)
    shell.send(V, bad, 2.0)


def _unused(*_: Any) -> None:
    return None


def test_message_shapes() -> None:
    assert wg.message_type(initiation(1), 148) == wg.INITIATION
    assert wg.message_type(response(1, 2), 92) == wg.RESPONSE
    assert wg.message_type(cookie(3), 64) == wg.COOKIE_REPLY
    assert wg.message_type(data(7, payload=0, tag=b""), 16) == wg.JUNK  # shorter than a tag
    assert wg.message_type(data(7, payload=0), 32) == wg.DATA  # a keepalive
    # A packet filling the default 1420-byte MTU: WireGuard pads only up to the MTU, so the
    # message is 16 + 1420 + 16 = 1452 bytes, not a multiple of 16: still transport data.
    assert wg.message_type(data(7, payload=1420), 1452) == wg.DATA
    assert wg.message_type(b"\x04\x01\x00\x00" + bytes(28), 32) == wg.JUNK  # reserved not zero
    assert wg.message_type(initiation(1)[:100], 100) == wg.JUNK
    assert wg.message_type(bytes(64), 64) == wg.JUNK
    assert wg.message_type(b"", 0) == wg.JUNK
    assert wg.addressed_index(wg.DATA, data(0xDEADBEEF)) == 0xDEADBEEF
    assert wg.addressed_index(wg.RESPONSE, response(5, 9)) == 9
    assert wg.local_index_of(wg.RESPONSE, response(5, 9)) == 5
    assert wg.local_index_of(wg.DATA, data(5)) is None


# ---- a multi-homed server: where replies leave from (issue 13 item 6) ---------------------------

OTHER_LOCAL = bytes([198, 51, 100, 1])  # the server's other address


def test_a_spoofed_datagram_to_the_other_address_moves_nothing() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    assert shell.send(A1, data(77, counter=1), now=2.0) is client
    entry = core.addresses[A1]
    assert entry.local_raw == LOCAL
    # An attacker who knows the session index, as A1, to the server's other address: WireGuard
    # gets it (it judges), but replies keep leaving from the address A1 really sends to.
    for counter in range(100, 110):
        spoofed = data(77, counter=counter, tag=b"S" * 16)
        assert shell.send(A1, spoofed, now=3.0, local=OTHER_LOCAL) is client
    assert entry.local_raw == LOCAL
    assert entry.last_seen == 2.0  # and it kept nothing alive
    assert core.stats.local_moves_refused == 10
    assert core.stats.local_moves == 0
    # A handshake response from there moves nothing either.
    shell.send(A1, response(12, 77), now=3.5, local=OTHER_LOCAL)
    assert entry.local_raw == LOCAL and core.stats.local_moves_refused == 11


def test_a_proven_datagram_moves_where_replies_leave_from() -> None:
    core = make_core()
    shell = Shell(core)
    client = handshake(shell, [A1, A2], ours=77, theirs=11, now=1.0)
    assert shell.send(A2, data(77, counter=5), now=2.0) is client  # the first copy, via A2
    # A1's copy of the same datagram, sent to the other address: an exact copy proves it.
    shell.send(A1, data(77, counter=5), now=2.01, local=OTHER_LOCAL)
    entry = core.addresses[A1]
    assert entry.local_raw == OTHER_LOCAL
    assert entry.last_seen == 2.01
    assert core.stats.local_moves == 1 and core.stats.local_moves_refused == 0
    assert any("now sends to 198.51.100.1 (was 192.0.2.1)" in line for line in core.take_log())
    # From there on, data to the new address is at home; the old one is now "elsewhere".
    assert shell.send(A1, data(77, counter=6), now=3.0, local=OTHER_LOCAL) is client
    assert entry.last_seen == 3.0
    shell.send(A1, data(77, counter=7, tag=b"S" * 16), now=4.0)
    assert entry.local_raw == OTHER_LOCAL and core.stats.local_moves_refused == 1
