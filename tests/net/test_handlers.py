"""The client's two handlers, driven by hand: the per-datagram decisions and the counters.

The sockets are stand-ins that replay a script of datagrams and errors, because the cases here
(a send that would block, a receive that fails) cannot be produced on demand with real sockets;
the real-socket behaviour is covered in test_relay.py and test_hostile.py.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Iterable
from typing import Any

import pytest

from engarde.config import ClientConfig
from engarde.core.client import ClientCore, Path, UplinkPlan
from engarde.net.pump import BATCH
from engarde.net.uplinks import Fanout, uplink_handler, wireguard_handler

SERVER = ("192.0.2.10", 59402)
WG = ("127.0.0.1", 51820)


class ScriptedSocket:
    """recvfrom_into replays `script` (a (bytes, source) pair, or an exception to raise), then
    raises BlockingIOError; sendto records what it was given or raises what `send_errors` says."""

    def __init__(self, script: Iterable[Any] = (), send_errors: Iterable[Any] = ()) -> None:
        self.script = list(script)
        self.reads = 0
        self.sent: list[tuple[bytes, Any]] = []
        self.send_errors = list(send_errors)

    def recvfrom_into(self, buf: bytearray) -> tuple[int, Any]:
        self.reads += 1
        if not self.script:
            raise BlockingIOError
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        data, src = item
        buf[: len(data)] = data
        return len(data), src

    def sendto(self, data: Any, dst: Any) -> int:
        if self.send_errors:
            error = self.send_errors.pop(0)
            if error is not None:
                raise error
        self.sent.append((bytes(data), dst))
        return len(data)


def core(**extra: Any) -> ClientCore:
    return ClientCore(
        ClientConfig(listenAddr="127.0.0.1:59401", dstAddr="192.0.2.10:59402", **extra)
    )


def path(c: ClientCore, i: int) -> Path:
    """The record of path i (uplink i's IPv4 address) of the client core."""
    return c.path_for(UplinkPlan(i, f"up{i}", f"192.0.2.{100 + i}", "192.0.2.10:59402"))


def transport_data(index: int, counter: int, tag: bytes = b"T" * 16, size: int = 64) -> bytes:
    """A datagram shaped like WireGuard transport data (the relay never decrypts)."""
    head = struct.pack("<B3xIQ", 4, index, counter)
    return head + bytes(size - len(head) - 16) + tag


def drain_all(handler: Any, times: int = 20) -> None:
    for _ in range(times):  # as the pump would, while epoll keeps reporting the socket
        handler()


def test_wireguard_handler_copies_to_every_uplink_and_a_full_one_delays_nothing() -> None:
    c = core()
    wg = ScriptedSocket([(b"a" * 100, WG), (b"b" * 200, WG)])
    up = [ScriptedSocket(), ScriptedSocket(send_errors=[BlockingIOError(), None]), ScriptedSocket()]
    fanout = Fanout()
    for i, sock in enumerate(up):
        fanout.add(i, (sock.sendto, SERVER, path(c, i).stats))
    drain_all(wireguard_handler(wg, c, fanout))  # type: ignore[arg-type]

    assert [len(d) for d, _ in up[0].sent] == [100, 200]
    assert [len(d) for d, _ in up[1].sent] == [200]  # the first copy would have blocked: dropped
    assert [len(d) for d, _ in up[2].sent] == [100, 200]  # ... and the link after it got both
    assert path(c, 1).stats.tx_dropped_full == 1 and path(c, 1).stats.tx_datagrams == 1
    assert path(c, 0).stats.tx_bytes == 300
    assert c.wg_peer == WG
    assert c.stats.wg_rx_datagrams == 2


def test_wireguard_handler_counts_send_errors_and_datagrams_without_an_uplink() -> None:
    c = core()
    wg = ScriptedSocket([(b"x" * 32, WG), (b"", WG)])
    dead = ScriptedSocket(send_errors=[OSError(errno.ENETUNREACH, "unreachable")])
    fanout = Fanout()
    fanout.add(0, (dead.sendto, SERVER, path(c, 0).stats))
    drain_all(wireguard_handler(wg, c, fanout))  # type: ignore[arg-type]
    assert path(c, 0).stats.tx_errors == 1
    assert path(c, 0).stats.last_tx_errno == errno.ENETUNREACH
    assert c.stats.empty_datagrams == 1

    lonely = ScriptedSocket([(b"y" * 32, WG)])
    drain_all(wireguard_handler(lonely, c, Fanout()))  # type: ignore[arg-type]
    assert c.stats.no_uplink_drops == 1


def test_uplink_handler_relays_replies_and_drops_foreign_and_early_ones() -> None:
    c = core()
    wg = ScriptedSocket()
    up = ScriptedSocket(
        [
            (b"early", SERVER),  # before WireGuard ever sent: nowhere to go
            (b"spoof", ("203.0.113.9", 59402)),
            (b"reply", SERVER),
        ]
    )
    errors: list[OSError] = []
    stats = path(c, 0).stats
    handler = uplink_handler(up, SERVER, stats, path(c, 0).quality, c, wg, errors.append)  # type: ignore[arg-type]
    handler()  # reads one: "early"
    assert stats.rx_no_peer == 1
    c.on_wireguard_source(WG)
    drain_all(handler)
    assert stats.rx_foreign == 1
    assert wg.sent == [(b"reply", WG)]
    assert stats.rx_datagrams == 2 and stats.last_rx is not None
    assert errors == []


def test_uplink_handler_reports_a_receive_error_once_and_stops_reading() -> None:
    c = core()
    c.on_wireguard_source(WG)
    failure = OSError(errno.ENETDOWN, "Network is down")
    up = ScriptedSocket([(b"one", SERVER), failure, (b"never read", SERVER)])
    errors: list[OSError] = []
    handler = uplink_handler(
        up,  # type: ignore[arg-type]
        SERVER,
        path(c, 0).stats,
        path(c, 0).quality,
        c,
        ScriptedSocket(),  # type: ignore[arg-type]
        errors.append,
    )
    for _ in range(3):
        handler()
        if errors:
            break
    assert errors == [failure]
    assert up.script == [(b"never read", SERVER)]  # the pump stops reporting it: detached


def test_a_busy_socket_is_read_in_batches_and_a_quiet_one_one_at_a_time() -> None:
    c = core()
    busy = ScriptedSocket([(b"z" * 32, WG)] * 1000)
    handler = wireguard_handler(busy, c, Fanout())  # type: ignore[arg-type]
    calls = 0
    while busy.script:
        handler()
        calls += 1
    # 4 lone reads, then 2, 4, ... up to BATCH per call: about 1000 / BATCH calls, not 1000.
    assert calls <= 4 + 6 + 1000 // BATCH + 2, calls
    reads_per_call = []
    for _ in range(10):  # now quiet: one datagram per wake-up
        busy.script.append((b"q" * 32, WG))
        before = busy.reads
        handler()
        reads_per_call.append(busy.reads - before)
    # Draining until EAGAIN would be 2 reads per call (20); reading one per call when quiet
    # probes for "more" only every few calls.
    assert sum(reads_per_call) <= 13, reads_per_call


def uplink_pair(c: ClientCore, scripts: list[list[Any]], wg: ScriptedSocket) -> list[Any]:
    handlers = []
    for i, script in enumerate(scripts):
        handlers.append(
            uplink_handler(
                ScriptedSocket(script),  # type: ignore[arg-type]
                SERVER,
                path(c, i).stats,
                path(c, i).quality,
                c,
                wg,  # type: ignore[arg-type]
                lambda exc: None,
            )
        )
    return handlers


def test_replies_reach_wireguard_once_whatever_the_number_of_uplinks() -> None:
    c = core()
    c.on_wireguard_source(WG)
    wg = ScriptedSocket()
    copies = [(transport_data(7, n), SERVER) for n in range(5)]
    for handler in uplink_pair(c, [list(copies), list(copies), list(copies)], wg):
        drain_all(handler)
    assert [d for d, _ in wg.sent] == [d for d, _ in copies]
    assert c.stats.duplicates_dropped == 10
    won_late = [(path(c, i).quality.won, path(c, i).quality.late) for i in range(3)]
    assert won_late == [(5, 0), (0, 5), (0, 5)]


def test_with_dedup_off_every_copy_reaches_wireguard_and_is_still_measured() -> None:
    c = core(dedup=False)
    c.on_wireguard_source(WG)
    wg = ScriptedSocket()
    copies = [(transport_data(7, n), SERVER) for n in range(5)]
    for handler in uplink_pair(c, [list(copies), list(copies)], wg):
        drain_all(handler)
    assert len(wg.sent) == 10 and c.stats.duplicates_dropped == 0
    assert path(c, 0).quality.won == 5 and path(c, 1).quality.late == 5


def test_only_exact_copies_of_transport_data_are_dropped() -> None:
    c = core()
    c.on_wireguard_source(WG)
    wg = ScriptedSocket()
    response = struct.pack("<B3xII", 2, 1, 2) + bytes(80)  # a handshake response, 92 bytes
    forged = transport_data(7, 0, tag=b"F" * 16)  # a real counter with another tag
    odd = b"\x04\x00\x00\x01" + bytes(60)  # reserved bytes not zero: not WireGuard data
    first = [(transport_data(7, 0), SERVER), (response, SERVER), (odd, SERVER)]
    second = [(forged, SERVER), (response, SERVER), (odd, SERVER), (transport_data(7, 0), SERVER)]
    for handler in uplink_pair(c, [first, second], wg):
        drain_all(handler)
    sent = [d for d, _ in wg.sent]
    assert sent == [transport_data(7, 0), response, odd, forged, response, odd]
    assert c.stats.duplicates_dropped == 1
    assert path(c, 1).quality.forged == 1


def test_reply_target_changes_are_counted_and_their_log_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 13 item 5: any local process can send to the client's listen address and become
    where replies go. 200 senders, one datagram each: every change counted, a handful of lines
    (one per datagram before: a local flood became a log flood on the data path)."""
    c = core()
    senders = [("127.0.0.1", 40000 + i) for i in range(200)]
    wg = ScriptedSocket([(b"x" * 40, src) for src in senders])
    fanout = Fanout()
    handler = wireguard_handler(wg, c, fanout)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="engarde.net.uplinks"):
        drain_all(handler, times=20)
    assert c.stats.wg_peer_changes == 200
    assert c.wg_peer == senders[-1]
    moved = [r for r in caplog.records if "WireGuard" in r.getMessage()]
    assert 1 <= len(moved) <= 10, [r.getMessage() for r in moved]
    assert c.snapshot(0.0)["counters"]["wg_peer_changes"] == 200
