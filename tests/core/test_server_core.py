"""ServerCore: client addresses, WireGuard-proven admission, expiry, caps, dropping addresses."""

from __future__ import annotations

import struct

from engarde.config import load_config_text
from engarde.core import wireguard as wg
from engarde.core.server import ServerCore

A = ("203.0.113.7", 40001)
B = ("198.51.100.9", 40002)
C = ("192.0.2.44", 40003)
LOCAL = bytes([192, 0, 2, 1])


def initiation(sender: int) -> bytes:
    return struct.pack("<I I", 1, sender) + bytes(140)


def response(sender: int, receiver: int) -> bytes:
    return struct.pack("<I I I", 2, sender, receiver) + bytes(80)


def data(receiver: int, counter: int = 0, payload: int = 16) -> bytes:
    return struct.pack("<I I Q", 4, receiver, counter) + bytes(payload)


def make_core(extra: str = "") -> ServerCore:
    config = load_config_text(
        f"""
server:
  listenAddr: "0.0.0.0:59402"
  dstAddr: "127.0.0.1:59301"
  clientTimeout: 30
{extra}
""",
        role="server",
    ).server
    assert config is not None
    return ServerCore(config, now=0.0)


def feed(core: ServerCore, src: tuple[str, int], msg: bytes, now: float) -> None:
    """What the shell does with a datagram from a client."""
    kind = wg.message_type(msg, len(msg)) if core.strict else wg.DATA
    assert kind != wg.JUNK
    entry = core.clients.get(src)
    if entry is None:
        core.seen(src, LOCAL, kind, msg, now)
    else:
        core.touch(entry, LOCAL, now)


def alive(core: ServerCore, now: float) -> list[tuple[str, int]]:
    cutoff = core.alive_cutoff(now)
    return [e.address for e in core.clients.values() if e.last_seen >= cutoff]


def test_message_shapes() -> None:
    assert wg.message_type(initiation(1), 148) == wg.INITIATION
    assert wg.message_type(response(1, 2), 92) == wg.RESPONSE
    assert wg.message_type(data(7), 32) == wg.DATA
    assert wg.message_type(data(7, payload=32), 64) == wg.DATA
    assert wg.message_type(data(7, payload=5), 37) == wg.JUNK  # not 16-byte aligned
    assert wg.message_type(b"\x04\x01\x00\x00" + bytes(28), 32) == wg.JUNK  # reserved not zero
    assert wg.message_type(initiation(1)[:100], 100) == wg.JUNK
    assert wg.message_type(bytes(64), 64) == wg.JUNK
    assert wg.message_type(b"", 0) == wg.JUNK
    assert wg.addressed_index(wg.DATA, data(0xDEADBEEF)) == 0xDEADBEEF
    assert wg.addressed_index(wg.RESPONSE, response(5, 9)) == 9
    assert wg.local_index_of(wg.RESPONSE, response(5, 9)) == 5
    assert wg.local_index_of(wg.DATA, data(5)) is None


def test_initiation_alone_leaves_the_address_pending() -> None:
    core = make_core()
    feed(core, A, initiation(11), now=1.0)
    assert list(core.pending) == [A] and not core.clients
    assert core.take_log() == [
        "client 203.0.113.7:40001 seen (sent to 192.0.2.1), awaiting a WireGuard session"
    ]


def test_data_for_our_session_confirms() -> None:
    core = make_core()
    feed(core, A, initiation(11), now=1.0)
    core.learn_local(wg.RESPONSE, response(77, 11))  # our WireGuard answered: index 77
    feed(core, B, data(12345), now=2.0)  # a spoofer guessing an index: dropped, not admitted
    assert list(core.clients) == [] and list(core.pending) == [A]
    assert core.stats.unproven_datagrams == 1
    feed(core, A, data(77), now=3.0)
    assert list(core.clients) == [A]
    assert core.clients[A].confirmed
    assert list(core.pending) == []
    assert "client 203.0.113.7:40001 now carrying the tunnel (sent to 192.0.2.1)" in (
        core.take_log()
    )


def test_before_any_handshake_any_data_confirms() -> None:
    """Right after a restart, sessions set up before it continue: don't cut them off."""
    core = make_core()
    feed(core, A, data(99), now=1.0)
    assert list(core.clients) == [A]


def test_non_wireguard_mode_admits_everything_as_client() -> None:
    core = make_core("  relayNonWireGuard: true")
    assert not core.strict
    feed(core, A, b"hello", now=1.0)
    assert list(core.clients) == [A]


def test_touch_keeps_least_recently_seen_order_and_alive_set() -> None:
    core = make_core()
    feed(core, A, data(1), now=1.0)
    feed(core, B, data(1), now=2.0)
    feed(core, A, data(1), now=20.0)
    assert alive(core, now=32.5) == [A]  # B silent since 2.0, timeout 30
    assert list(core.clients) == [B, A]


def test_expire_forgets_silent_addresses_with_a_line_each() -> None:
    core = make_core()
    feed(core, A, data(1), now=1.0)
    feed(core, B, data(1), now=5.0)
    feed(core, C, initiation(3), now=1.0)
    core.learn_local(wg.RESPONSE, response(8, 3))
    assert core.expire(now=31.5) == ["client 203.0.113.7:40001 expired (silent for 30 s)"]
    assert list(core.clients) == [B]
    assert not core.pending  # pending ones go silently
    assert core.stats.clients_expired == 1


def test_zero_timeout_means_thirty_seconds() -> None:
    zero = load_config_text(
        'server: {listenAddr: "0.0.0.0:1", dstAddr: "127.0.0.1:2", clientTimeout: 0}',
        role="server",
    ).server
    assert zero is not None and zero.client_timeout_s == 30


def test_spoofed_flood_churns_pending_only() -> None:
    core = make_core("  maxClients: 100")
    feed(core, A, initiation(1), now=0.0)
    core.learn_local(wg.RESPONSE, response(42, 1))
    feed(core, A, data(42), now=0.5)
    for i in range(5000):
        feed(core, ("192.0.2.1", 1024 + i), initiation(i), now=1.0 + i / 1000)
    assert list(core.clients) == [A]
    assert len(core.pending) == 100
    assert core.stats.clients_evicted == 4900


def test_cap_on_clients_evicts_the_stalest() -> None:
    core = make_core("  maxClients: 2\n  relayNonWireGuard: true")
    feed(core, A, b"x", now=1.0)
    feed(core, B, b"x", now=2.0)
    feed(core, A, b"x", now=3.0)  # A is now fresher than B
    feed(core, C, b"x", now=4.0)
    assert list(core.clients) == [A, C]
    assert core.stats.clients_evicted == 1
    assert "client table full (2): evicted 198.51.100.9:40002" in core.take_log()


def test_drop_forgets_one_address_only() -> None:
    core = make_core()
    feed(core, A, data(1), now=1.0)
    feed(core, B, data(1), now=1.0)
    line = core.drop(A, 101)
    assert line is not None and "203.0.113.7:40001 dropped" in line and "ENETUNREACH" in line
    assert list(core.clients) == [B]
    assert core.drop(A, 101) is None


def test_snapshot_has_the_original_fields() -> None:
    core = make_core()
    feed(core, A, data(1), now=1.0)
    feed(core, B, initiation(1), now=1.0)
    snap = core.snapshot(now=3.7)
    assert snap["type"] == "server"
    assert snap["listenAddress"] == "0.0.0.0:59402"
    assert snap["dstAddress"] == "127.0.0.1:59301"
    first, second = snap["sockets"]
    assert (first["address"], first["last"], first["confirmed"]) == ("203.0.113.7:40001", 2, True)
    assert first["localAddress"] == "192.0.2.1"
    assert (second["address"], second["confirmed"]) == ("198.51.100.9:40002", False)
