"""engarde.net.mmsg on loopback: batches in and out, source addresses (v4, v6), IP_PKTINFO both
ways, errors as the plain calls raise them, partial sends (real where the kernel can be made to
stop early, scripted where it cannot: a full socket buffer does not happen on loopback)."""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from engarde.net import mmsg
from engarde.net.pump import Pump
from engarde.net.sockets import IP_PKTINFO, IPV6_RECVPKTINFO

pytestmark = pytest.mark.skipif(not mmsg.AVAILABLE, reason="libc without recvmmsg/sendmmsg")


def udp(family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = udp(), udp()
    yield a, b
    a.close()
    b.close()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def read_all(sock: socket.socket) -> list[tuple[bytes, Any]]:
    got = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            got.append(sock.recvfrom(70000))
        except BlockingIOError:
            if got:
                time.sleep(0.02)
                try:
                    got.append(sock.recvfrom(70000))
                except BlockingIOError:
                    return got
            else:
                time.sleep(0.01)
    return got


def test_a_batch_is_read_whole_in_order_with_sizes_and_sources(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    src, dst = pair
    payloads = [bytes([i]) * (i * 37 + 1) for i in range(10)] + [b"", b"x" * 65507]
    for p in payloads:
        src.sendto(p, dst.getsockname())
    receiver = mmsg.Receiver()
    k = receiver.recv(dst.fileno(), 4)
    assert k == 4  # the limit holds
    got = [bytes(receiver.data(i, receiver.size(i))) for i in range(4)]
    more = receiver.recv(dst.fileno(), 64)
    got += [bytes(receiver.data(i, receiver.size(i))) for i in range(more)]
    assert got == payloads, [len(g) for g in got]
    assert not any(receiver.truncated(i) for i in range(more))  # 65507 B fits a slot
    assert {receiver.source(i) for i in range(more)} == {src.getsockname()}
    with pytest.raises(BlockingIOError):
        receiver.recv(dst.fileno(), 64)


def test_sources_match_what_recvfrom_reports_v4_and_v6() -> None:
    receiver = mmsg.Receiver()
    cases = [(socket.AF_INET, "127.0.0.1")]
    if has_ipv6_loopback():
        cases.append((socket.AF_INET6, "::1"))
    for family, host in cases:
        a, b = udp(family, host), udp(family, host)
        try:
            a.sendto(b"one", b.getsockname())
            a.sendto(b"two", b.getsockname())
            time.sleep(0.01)
            _, plain = b.recvfrom(100)
            assert receiver.recv(b.fileno(), 64) == 1
            assert receiver.source(0) == plain == a.getsockname()
            assert mmsg.sockaddr_of(plain) == receiver.source_raw(0)
            assert mmsg.address_of(mmsg.sockaddr_of(plain)) == plain
        finally:
            a.close()
            b.close()


def test_v4_mapped_sources_on_a_dual_stack_socket() -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    dual = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    dual.bind(("::", 0))
    dual.setblocking(False)
    a = udp()
    try:
        a.sendto(b"v4", ("127.0.0.1", dual.getsockname()[1]))
        a.sendto(b"v4", ("127.0.0.1", dual.getsockname()[1]))
        time.sleep(0.01)
        _, plain = dual.recvfrom(100)
        receiver = mmsg.Receiver()
        assert receiver.recv(dual.fileno(), 64) == 1
        assert receiver.source(0) == plain
        assert plain[0] == "::ffff:127.0.0.1"
    finally:
        dual.close()
        a.close()


def pktinfo_socket(family: socket.AddressFamily) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        sock.bind(("::", 0))
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    return sock


def test_pktinfo_names_the_address_each_datagram_was_sent_to() -> None:
    listen = pktinfo_socket(socket.AF_INET)
    a = udp()
    try:
        port = listen.getsockname()[1]
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.1"):
            a.sendto(host.encode(), (host, port))
        time.sleep(0.01)
        receiver = mmsg.Receiver(control=True)
        k = receiver.recv(listen.fileno(), 64)
        assert k == 4
        locals_ = [receiver.local(i) for i in range(k)]
        assert locals_ == [
            socket.inet_aton(bytes(receiver.data(i, receiver.size(i))).decode()) for i in range(k)
        ]
        # A second batch: the value-result fields were reset (nothing cut short)
        a.sendto(b"again", ("127.0.0.2", port))
        time.sleep(0.01)
        assert receiver.recv(listen.fileno(), 64) == 1
        assert receiver.local(0) == socket.inet_aton("127.0.0.2")
    finally:
        listen.close()
        a.close()


def test_pktinfo_v6() -> None:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    listen = pktinfo_socket(socket.AF_INET6)
    a = udp(socket.AF_INET6, "::1")
    try:
        a.sendto(b"six", ("::1", listen.getsockname()[1]))
        time.sleep(0.01)
        receiver = mmsg.Receiver(control=True)
        assert receiver.recv(listen.fileno(), 64) == 1
        assert receiver.local(0) == socket.inet_pton(socket.AF_INET6, "::1")
        assert receiver.source(0) == a.getsockname()
    finally:
        listen.close()
        a.close()


def test_send_with_one_name_per_message_and_a_chosen_source_address() -> None:
    out = pktinfo_socket(socket.AF_INET)
    sinks = [udp(), udp()]
    try:
        data = bytearray(b"hello-0hello-1hello-2")
        base = ctypes.addressof((ctypes.c_char * len(data)).from_buffer(data))
        iovecs = mmsg.Iovecs(8)
        messages = mmsg.Messages(iovecs, names=True, control=True)
        plan = [(0, "127.0.0.2"), (1, "127.0.0.3"), (0, None)]
        for j, (sink, local) in enumerate(plan):
            iovecs.point(j, base + 7 * j, 7)
            messages.set_name(j, mmsg.sockaddr_of(sinks[sink].getsockname()))
            messages.set_control(j, socket.inet_aton(local) if local else None)
        assert messages.send_all(out.fileno(), 3) == (3, 0, 0)
        first = read_all(sinks[0])
        second = read_all(sinks[1])
        assert [(d, s[0]) for d, s in first] == [
            (b"hello-0", "127.0.0.2"),
            (b"hello-2", "127.0.0.1"),
        ]
        assert [(d, s[0]) for d, s in second] == [(b"hello-1", "127.0.0.3")]
    finally:
        out.close()
        for s in sinks:
            s.close()


def test_a_message_that_fails_alone_is_skipped_and_the_rest_still_goes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    src, dst = pair
    big = bytearray(70000)  # larger than any UDP datagram: EMSGSIZE for that message only
    base = ctypes.addressof((ctypes.c_char * len(big)).from_buffer(big))
    iovecs = mmsg.Iovecs(8)
    messages = mmsg.Messages(iovecs, name=mmsg.sockaddr_of(dst.getsockname()))
    for j, n in enumerate([10, 11, 70000, 13, 14]):
        big[0] = j
        iovecs.point(j, base, n)
    # the kernel sends 2, returns 2 (the error is lost); the next call reports EMSGSIZE; the
    # one after sends the last two
    assert messages.send_all(src.fileno(), 5) == (4, 0, 1)
    assert messages.failures == [(2, errno.EMSGSIZE)]
    assert messages.sent_bytes() == 10 + 11 + 13 + 14
    assert [len(d) for d, _ in read_all(dst)] == [10, 11, 13, 14]


def test_connection_refused_is_reported_like_the_plain_calls() -> None:
    closed = udp()
    port = closed.getsockname()[1]
    closed.close()
    sock = udp()
    try:
        sock.connect(("127.0.0.1", port))
        sock.send(b"x")  # ICMP port unreachable comes back and is kept for the next call
        time.sleep(0.05)
        receiver = mmsg.Receiver()
        with pytest.raises(ConnectionRefusedError):
            receiver.recv(sock.fileno(), 64)
        sock.send(b"x")
        time.sleep(0.05)
        data = bytearray(b"abc")
        iovecs = mmsg.Iovecs(4)
        base = ctypes.addressof((ctypes.c_char * 3).from_buffer(data))
        for j in range(3):
            iovecs.point(j, base, 3)
        messages = mmsg.Messages(iovecs)  # connected: no names
        sent, full, failed = messages.send_all(sock.fileno(), 3)
        assert (full, failed) == (0, 1) and sent == 2, messages.failures
        assert messages.failures == [(0, errno.ECONNREFUSED)]
    finally:
        sock.close()


class ScriptedSendmmsg:
    """Stands in for libc's sendmmsg: returns what `script` says (a count, or -errno)."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.calls: list[int] = []

    def __call__(self, fd: int, at: int, count: int, flags: int) -> int:
        self.calls.append(count)
        result = self.script.pop(0)
        if result < 0:
            ctypes.set_errno(-result)
            return -1
        return min(result, count)


@pytest.mark.parametrize(
    ("script", "expected", "calls"),
    [
        ([10], (10, 0, 0), [10]),
        ([4, 6], (10, 0, 0), [10, 6]),  # stopped early without a word: continued
        ([4, -errno.EAGAIN], (4, 6, 0), [10, 6]),  # full: the rest dropped, not retried
        ([-errno.EAGAIN], (0, 10, 0), [10]),
        ([4, -errno.ENOBUFS], (4, 0, 6), [10, 6]),  # as the plain calls: failed, not full
        ([3, -errno.EPERM, 6], (9, 0, 1), [10, 7, 6]),  # a firewall dropped one message
        ([1, 1, 1, 1, 1], (4, 6, 0), [10, 9, 8, 7]),  # MAX_CALLS, then the rest is dropped
    ],
)
def test_partial_sends_never_retry_into_a_stall(
    monkeypatch: pytest.MonkeyPatch,
    script: list[int],
    expected: tuple[int, int, int],
    calls: list[int],
) -> None:
    fake = ScriptedSendmmsg(script)
    monkeypatch.setattr(mmsg, "_sendmmsg", fake)
    iovecs = mmsg.Iovecs(16)
    for j in range(10):
        iovecs.point(j, 0, 100)
    messages = mmsg.Messages(iovecs)
    result = messages.send_all(3, 10)
    assert result == expected and fake.calls == calls
    assert sum(result) == 10
    if result[0] < 10:
        assert messages.sent_bytes() == 100 * result[0]


def test_without_the_symbols_the_pump_offers_no_receiver_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mmsg, "AVAILABLE", False)
    monkeypatch.setattr(mmsg, "_said_unavailable", False)
    pump = Pump()
    try:
        with caplog.at_level(logging.WARNING, logger="engarde.net.mmsg"):
            assert pump.receiver() is None
            assert pump.receiver(control=True) is None
        assert [r.getMessage() for r in caplog.records].count(
            "recvmmsg/sendmmsg not available from libc: one system call per datagram"
        ) == 1
    finally:
        pump.close()


def test_the_pump_shares_one_receiver_per_kind() -> None:
    pump = Pump()
    try:
        plain = pump.receiver()
        assert plain is not None and pump.receiver() is plain
        assert pump.receiver(control=True) is not plain
    finally:
        pump.close()


def test_reply_control_messages_stay_bounded_and_right() -> None:
    out = pktinfo_socket(socket.AF_INET)
    sink = udp()
    try:
        data = bytearray(b"bounded")
        iovecs = mmsg.Iovecs(4)
        iovecs.point(0, ctypes.addressof((ctypes.c_char * 7).from_buffer(data)), 7)
        messages = mmsg.Messages(iovecs, names=True, control=True)
        messages.set_name(0, mmsg.sockaddr_of(sink.getsockname()))
        for i in range(mmsg.MAX_CONTROLS + 50):  # a host that owns many addresses
            messages.set_control(0, (0x0A000000 + i).to_bytes(4, "big"))
        assert len(messages._controls) <= mmsg.MAX_CONTROLS
        messages.set_control(0, socket.inet_aton("127.0.0.5"))
        assert messages.send_all(out.fileno(), 1) == (1, 0, 0)
        assert [(d, s[0]) for d, s in read_all(sink)] == [(b"bounded", "127.0.0.5")]
    finally:
        out.close()
        sink.close()


# ---- UDP_SEGMENT --------------------------------------------------------------------------------


def pointed(iovecs: mmsg.Iovecs, payloads: list[bytes]) -> list[bytearray]:
    """Point iovecs 0.. at copies of `payloads` (kept alive by the caller)."""
    buffers = [bytearray(p) for p in payloads]
    for j, buf in enumerate(buffers):
        iovecs.point(j, ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf)), len(buf))
    return buffers


@pytest.mark.parametrize(
    ("sizes", "runs"),
    [
        ([100] * 5, [(0, 5, 100)]),
        ([100, 100, 40, 100], [(0, 3, 100), (3, 1, 100)]),  # a shorter one ends a run
        ([40, 100, 100], [(0, 1, 40), (1, 2, 100)]),  # a longer one starts a new run
        ([100, 40, 40], [(0, 2, 100), (2, 1, 40)]),
        ([1408] * 64, [(0, 46, 1408), (46, 18, 1408)]),  # 46 x 1408 <= 65507 < 47 x 1408
        ([10] * 64, [(0, 64, 10)]),  # UDP_MAX_SEGMENTS
        ([60000, 60000], [(0, 1, 60000), (1, 1, 60000)]),
        ([], []),
    ],
)
def test_runs_for_udp_segment(sizes: list[int], runs: list[tuple[int, int, int]]) -> None:
    iovecs = mmsg.Iovecs()
    for j, n in enumerate(sizes):
        iovecs.point(j, 0, n)
    assert iovecs.plan(len(sizes)) == runs
    for first, count, size in runs:  # what the kernel requires of a segmented message
        got = sizes[first : first + count]
        assert all(n == size for n in got[:-1]) and got[-1] <= size
        assert count <= mmsg.UDP_MAX_SEGMENTS and sum(got) <= mmsg.MAX_SEGMENTED_BYTES


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_segmented_batch_arrives_as_the_same_datagrams_in_order(family: str) -> None:
    if family == "v6" and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    af, host = (socket.AF_INET, "127.0.0.1") if family == "v4" else (socket.AF_INET6, "::1")
    src, dst = udp(af, host), udp(af, host)
    try:
        sizes = [1408] * 50 + [700] + [112] * 12 + [1]  # three runs, each ended by a shorter one
        payloads = [bytes([j]) * n for j, n in enumerate(sizes)]
        iovecs = mmsg.Iovecs()
        keep = pointed(iovecs, payloads)
        messages = mmsg.Messages(iovecs, name=mmsg.sockaddr_of(dst.getsockname()), segment=True)
        calls: list[int] = []
        real = mmsg._sendmmsg

        def counting(fd: int, at: int, count: int, flags: int) -> int:
            calls.append(count)
            return real(fd, at, count, flags)  # type: ignore[misc, no-any-return]

        mmsg._sendmmsg = counting
        try:
            assert messages.send_all(src.fileno(), len(sizes)) == (len(sizes), 0, 0)
        finally:
            mmsg._sendmmsg = real
        # one call, a message per run: 46 x 1408; 4 x 1408 + 700; 12 x 112 + 1
        assert iovecs.runs == [(0, 46, 1408), (46, 5, 1408), (51, 13, 112)]
        assert calls == [3]
        assert messages.segment and not messages.segment_refused
        assert [d for d, _ in read_all(dst)] == payloads
        del keep
    finally:
        src.close()
        dst.close()


def test_a_refused_segmentation_sends_everything_one_by_one_and_stops_segmenting(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    src, dst = pair
    # Without UDP checksums (SO_NO_CHECK) the kernel refuses to segment: EINVAL.
    src.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
    payloads = [bytes([j]) * 500 for j in range(20)]
    iovecs = mmsg.Iovecs()
    keep = pointed(iovecs, payloads)
    messages = mmsg.Messages(iovecs, name=mmsg.sockaddr_of(dst.getsockname()), segment=True)
    with caplog.at_level(logging.INFO, logger="engarde.net.mmsg"):
        assert messages.send_all(src.fileno(), 20) == (20, 0, 0)
    assert not messages.segment and messages.segment_refused == errno.EINVAL
    assert "UDP_SEGMENT refused" in caplog.text and "EINVAL" in caplog.text
    assert [d for d, _ in read_all(dst)] == payloads
    assert messages.send_all(src.fileno(), 20) == (20, 0, 0)  # no second try, no second line
    assert caplog.text.count("UDP_SEGMENT refused") == 1
    assert len(read_all(dst)) == 20
    del keep


@pytest.mark.parametrize(
    ("script", "expected", "calls"),
    [
        ([2], (10, 0, 0), [2]),  # runs of 6 and 4: two messages
        ([1, 1], (10, 0, 0), [2, 1]),
        ([1, -errno.EAGAIN], (6, 4, 0), [2, 1]),  # the second run did not fit: dropped
        ([-errno.EAGAIN], (0, 10, 0), [2]),
        ([1, -errno.ENOBUFS], (6, 0, 4), [2, 1]),
        ([-errno.EPERM, 1], (4, 0, 6), [2, 1]),  # a firewall refused the first run
        ([1, -errno.EIO, 4], (10, 0, 0), [2, 1, 4]),  # refused: the rest one by one
    ],
)
def test_segmented_partial_sends(
    monkeypatch: pytest.MonkeyPatch,
    script: list[int],
    expected: tuple[int, int, int],
    calls: list[int],
) -> None:
    fake = ScriptedSendmmsg(script)
    monkeypatch.setattr(mmsg, "_sendmmsg", fake)
    iovecs = mmsg.Iovecs(16)
    for j, n in enumerate([100] * 6 + [200] * 4):
        iovecs.point(j, 0, n)
    messages = mmsg.Messages(iovecs, name=mmsg.sockaddr_of(("127.0.0.1", 9)), segment=True)
    result = messages.send_all(3, 10)
    assert result == expected and fake.calls == calls
    assert sum(result) == 10
    if result[0] < 10:
        assert messages.sent_bytes() == {0: 0, 6: 600, 4: 800}[result[0]]
