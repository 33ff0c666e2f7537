"""A burst through the real handlers on loopback, read with recvmmsg and sent with sendmmsg.

A burst queued before the handler runs makes its Batch climb past one, so the batched path
takes over; the tests check that it did, and that every datagram arrives once per uplink (or
client address) and in order, with counters that add up. The handlers are called as the pump
calls them (while the socket has something to read)."""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engarde.config import ClientConfig, ServerConfig
from engarde.core.client import ClientCore, UplinkPlan
from engarde.core.server import ServerCore
from engarde.net import mmsg
from engarde.net.pump import Pump
from engarde.net.server import ServerRelay
from engarde.net.uplinks import Fanout, uplink_handler, wireguard_handler

pytestmark = pytest.mark.skipif(not mmsg.AVAILABLE, reason="libc without recvmmsg/sendmmsg")

BURST = 400


def udp(connect: Any = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    if connect is not None:
        sock.connect(connect)
    sock.setblocking(False)
    return sock


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    made: list[socket.socket] = []

    def make(connect: Any = None) -> socket.socket:
        made.append(udp(connect))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The datagram count of every recvmmsg the handlers make."""
    seen: list[int] = []
    real = mmsg.Receiver.recv

    def counting(self: mmsg.Receiver, fd: int, limit: int) -> int:
        got = real(self, fd, limit)
        seen.append(got)
        return got

    monkeypatch.setattr(mmsg.Receiver, "recv", counting)
    return seen


def transport(index: int, counter: int, size: int = 120) -> bytes:
    head = struct.pack("<B3xIQ", 4, index, counter)
    tag = counter.to_bytes(16, "little")  # per counter, as WireGuard's tag would be
    return head + bytes(size - len(head) - 16) + tag


def counter_of(data: bytes) -> int:
    return int(struct.unpack_from("<Q", data, 8)[0])


def drive(handlers: dict[int, Callable[[], None]], done: Callable[[], bool], what: str) -> None:
    """Call each handler whose socket is readable, as the pump does, until `done()`."""
    poll = select.epoll()
    for fd in handlers:
        poll.register(fd, select.EPOLLIN)
    deadline = time.monotonic() + 20
    try:
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            for fd, _ in poll.poll(0.05):
                handlers[fd]()
    finally:
        poll.close()


def read_all(sock: socket.socket, expect: int) -> list[tuple[bytes, Any]]:
    got: list[tuple[bytes, Any]] = []
    deadline = time.monotonic() + 10
    while len(got) < expect and time.monotonic() < deadline:
        try:
            got.append(sock.recvfrom(65536))
        except BlockingIOError:
            time.sleep(0.005)
    time.sleep(0.05)
    try:  # nothing more than expected
        while True:
            got.append(sock.recvfrom(65536))
    except BlockingIOError:
        pass
    return got


def test_client_forward_burst_reaches_every_uplink_once_and_in_order(
    sockets: Callable[..., socket.socket], batches: list[int]
) -> None:
    core = ClientCore(ClientConfig(listenAddr="127.0.0.1:1", dstAddr="127.0.0.1:2"))
    listen, wg = sockets(), sockets()
    sinks = [sockets() for _ in range(3)]
    fanout = Fanout()
    stats = []
    for i, sink in enumerate(sinks):
        up = sockets()
        plan = UplinkPlan(i, f"up{i}", f"127.0.0.{i + 1}", "127.0.0.1:2")
        path = core.path_for(plan)
        stats.append(path.stats)
        dst = sink.getsockname()
        fanout.add(plan.key, (up.sendto, dst, path.stats), fanout.batch_out(up, dst))
    pump = Pump()
    try:
        handler = wireguard_handler(listen, core, fanout, pump.receiver())
        for c in range(BURST):
            wg.sendto(transport(7, c, 60 + c % 700), listen.getsockname())
        drive({listen.fileno(): handler}, lambda: core.stats.wg_rx_datagrams >= BURST, "reads")
    finally:
        pump.close()
    assert max(batches) > 8, f"the batched path was not taken: {batches}"
    for i, sink in enumerate(sinks):
        got = read_all(sink, BURST)
        assert [counter_of(d) for d, _ in got] == list(range(BURST)), f"uplink {i}"
        assert [len(d) for d, _ in got] == [60 + c % 700 for c in range(BURST)]
        assert stats[i].tx_datagrams == BURST and stats[i].tx_dropped_full == 0
        assert stats[i].tx_bytes == sum(60 + c % 700 for c in range(BURST))
    assert core.stats.wg_rx_datagrams == BURST
    assert core.wg_peer == wg.getsockname()


def test_client_replies_burst_reaches_wireguard_once_in_order_duplicates_dropped(
    sockets: Callable[..., socket.socket], batches: list[int]
) -> None:
    core = ClientCore(ClientConfig(listenAddr="127.0.0.1:1", dstAddr="127.0.0.1:2"))
    server, wg, wg_side = sockets(), sockets(), sockets()
    core.on_wireguard_source(wg.getsockname())
    ups, handlers, paths = [], {}, []
    pump = Pump()
    try:
        for i in range(2):
            up = sockets()
            plan = UplinkPlan(i, f"up{i}", f"127.0.0.{i + 1}", "127.0.0.1:2")
            path = core.path_for(plan)
            core.link_carrying(path.quality, time.monotonic())
            paths.append(path)
            ups.append(up)
            handlers[up.fileno()] = uplink_handler(
                up, server.getsockname(), path.stats, path.quality, core, wg_side,
                lambda exc: pytest.fail(f"receive error {exc}"), pump.receiver(),
            )  # fmt: skip
        stranger = sockets()
        for c in range(BURST):  # the same copies over both uplinks, and a foreign one
            for up in ups:
                server.sendto(transport(9, c), up.getsockname())
            if c % 50 == 0:
                stranger.sendto(transport(9, 10**6 + c), ups[0].getsockname())
        total = 2 * BURST
        drive(
            handlers,
            lambda: sum(p.stats.rx_datagrams for p in paths) >= total,
            "both uplinks read",
        )
    finally:
        pump.close()
    assert max(batches) > 8, f"the batched path was not taken: {batches}"
    got = read_all(wg, BURST)
    # Each once, from whichever uplink was first; in order, as each uplink's copies are: a
    # batch only ever adds counters beyond what either uplink delivered before.
    assert [counter_of(d) for d, _ in got] == list(range(BURST))
    assert all(src == wg_side.getsockname() for _, src in got)
    assert core.stats.duplicates_dropped == BURST
    assert core.stats.wg_tx_datagrams == BURST
    assert paths[0].stats.rx_foreign == BURST // 50
    assert [p.stats.rx_datagrams for p in paths] == [BURST, BURST]


def handshake(
    listen: socket.socket, clients: list[socket.socket], wg: socket.socket, drive_all: Any
) -> tuple[int, int]:
    """Initiation from every client address -> lobby -> WireGuard stand-in answers."""
    peer_index, our_index = 0x1111, 0x2222
    initiation = struct.pack("<B3xI", 1, peer_index) + bytes(140)
    for c in clients:
        c.sendto(initiation, listen.getsockname())
    got: list[tuple[bytes, Any]] = []

    def initiation_arrived() -> bool:
        with contextlib.suppress(BlockingIOError):
            got.append(wg.recvfrom(65536))
        return bool(got)

    drive_all(initiation_arrived, "the initiation")
    response = struct.pack("<B3xII", 2, our_index, peer_index) + bytes(80)
    wg.sendto(response, got[0][1])
    answered: list[int] = []

    def response_arrived() -> bool:
        for c in clients:
            try:
                c.recvfrom(65536)
                answered.append(1)
            except BlockingIOError:
                pass
        return len(answered) >= len(clients)

    drive_all(response_arrived, "the response at every client address")
    return peer_index, our_index


def test_server_burst_both_ways_once_per_address_and_in_order(
    sockets: Callable[..., socket.socket], batches: list[int]
) -> None:
    wg = sockets()
    host, port = wg.getsockname()
    listen = sockets()
    config = ServerConfig(
        listenAddr=f"127.0.0.1:{listen.getsockname()[1]}", dstAddr=f"{host}:{port}"
    )
    core = ServerCore(config, now=time.monotonic())
    pump = Pump()
    relay = ServerRelay(core, pump, listen, (host, port), pktinfo=False)
    lobby = udp((host, port))
    relay.adopt(core.lobby, lobby)
    pump.register(listen, relay.clients_handler())
    clients = [sockets(), sockets()]

    def drive_all(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            for fd, _ in pump._epoll.poll(0.02):
                handler = pump._handlers.get(fd)
                if handler is not None:
                    handler()

    try:
        peer_index, our_index = handshake(listen, clients, wg, drive_all)
        (client,) = core.clients.values()
        assert len(client.addresses) == 2
        # clients -> WireGuard: every counter once (the copies deduplicated), in order
        for c in range(BURST):
            for sock in clients:
                sock.sendto(transport(our_index, c), listen.getsockname())
        drive_all(
            lambda: (
                core.stats.duplicates_dropped >= BURST and core.stats.wg_tx_datagrams >= BURST + 2
            ),
            "the copies",
        )
        got = [(d, src) for d, src in read_all(wg, BURST + 1) if d[0] == 4]  # not the initiation
        assert [counter_of(d) for d, _ in got] == list(range(BURST))
        assert core.stats.duplicates_dropped == BURST
        assert core.stats.wg_tx_datagrams == BURST + 2  # and the two copies of the initiation
        # WireGuard -> every client address, once each, in order
        upstream = got[0][1]
        for c in range(BURST):
            wg.sendto(transport(peer_index, c, 200), upstream)
        drive_all(lambda: core.stats.wg_rx_datagrams >= BURST + 1, "the replies")
        for sock in clients:
            replies = read_all(sock, BURST)
            assert [counter_of(d) for d, _ in replies] == list(range(BURST))
        sent = [a.tx_datagrams for a in client.addresses.values()]
        assert sent == [BURST + 1, BURST + 1]  # the response, then the burst
        assert all(a.tx_dropped_full == 0 and a.tx_errors == 0 for a in client.addresses.values())
    finally:
        pump.close()
        relay.close_all()
    assert max(batches) > 8, f"the batched path was not taken: {batches}"
