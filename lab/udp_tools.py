"""Stdlib-only UDP tools for tests, run as ``python -m lab.udp_tools <cmd>`` from the repo root.

``echo``: a UDP echo server. With ``--dedup`` it drops a datagram whose payload it has already
seen, the way WireGuard's anti-replay window drops engarde's duplicate copies, and answers each
new datagram to its source. Prints one JSON line ``{"listening": "HOST:PORT"}`` once bound (so a
caller can wait for it and learn the port when ``--listen`` ends in ``:0``), and on SIGTERM or
SIGINT one JSON line of statistics ``{"received", "unique", "duplicates", "replied"}``, then
exits 0.

``send``: sends ``--count`` datagrams of ``--size`` bytes to ``--to`` every ``--interval-ms``;
bytes 0-7 hold the sequence number (big-endian, from 0), bytes 8-15 a random run id (so that
runs never look like duplicates of each other to a dedup echo). Counts the replies that carry
this run's id, once per sequence number, waits ``--grace-ms`` after the last send, and writes
JSON ``{"sent", "received_unique", "lost": [seq...], "duplicates", "send_errors", "foreign",
"rtt_ms": {"p50", "p99", "max"}}`` to ``--report`` (a file) or stdout. Exit code 0 even with
loss: the caller judges the report.

``wg-sink`` and ``wg-send`` stand in for WireGuard on both ends. They speak exactly WireGuard's
clear-text header shape (type as u32 LE, indices u32 LE, counter u64 LE), without any crypto:

- initiation (type 1, 148 bytes): sender index at 4, the rest random;
- response (type 2, 92 bytes): sender index at 4, receiver index (= the initiator's) at 8;
- transport data (type 4, 32 + 16k bytes): receiver index at 4, counter at 8, payload, and a
  16-byte "tag" at the very end.

``wg-sink --listen HOST:PORT [--index N] [--echo]``: the fake WireGuard server. It answers each
initiation from X with a response to X; every new initiator index opens a session (the first
gets ``--index``, default random; later ones random indices), repeated initiations from the same
initiator index reuse it. Data whose receiver index is one of its sessions is counted: copies of
an (index, counter) pair already seen (the last 1,000,000 remembered) are duplicates, the first
copy is unique and moves the session's peer address to its source (WireGuard's endpoint
roaming). With ``--echo`` each unique data datagram is answered, to the peer's current address,
by one data datagram: receiver = the initiator's index, the session's own counter (0, 1, ...),
the first 16 payload bytes of the datagram answered, zero padding to the same length and a
random tag. Anything else is counted as ``other``. Prints ``{"listening": "HOST:PORT", "index":
N}`` once bound, and on SIGTERM or SIGINT one JSON line ``{"received", "unique", "duplicates",
"handshakes", "replied", "other", "send_errors", "sessions", "index", "by_source": {"IP:PORT":
{"received", "first"}}}`` (``received`` = data for a known session = unique + duplicates;
``by_source`` counts that data per source address, ``first`` the unique copies), then exits 0.

``wg-send --to HOST:PORT [--count N] [--interval-ms MS] [--size B] [--grace-ms MS] [--report
FILE] [--index N] [--handshake-timeout-s S] [--pause-file PATH] [--progress-ms MS]``: the fake
WireGuard client. It sends initiations (sender = ``--index``, default random) every 200 ms until
a response with its index as the receiver index arrives (exit code 1 with a message on stderr
after ``--handshake-timeout-s``), then ``--count`` data datagrams of ``--size`` bytes (rounded up
to 32 + 16k, at least 48) every ``--interval-ms``: receiver = the responder's index, counter =
sequence number from 0, bytes 16-23 the sequence number again and 24-31 the send time (both u64
big-endian, monotonic ns), zero padding, and a tag derived from (responder index, own index,
sequence number), so copies of one datagram are byte-identical and different ones differ.
Replies are data with its own index as the receiver index, matched by the sequence number in
their bytes 16-23; a reply counter seen again is a duplicate. After the last send it waits up to
``--grace-ms`` for missing replies, and once all are in 100 ms more (within the grace) for late
copies. While ``--pause-file`` exists it
sends nothing (the schedule resumes where it stopped, without a burst). Progress goes to stderr
as JSON lines ``{"sent", "replies"}``: one after the handshake (with ``handshake_ms``,
``responder_index``, ``index``), one every ``--progress-ms``, one at once on SIGUSR1, one on
pausing and resuming (``"paused": true/false``, with the exact count so far) and one at the end
(``"done": true``). SIGTERM or SIGINT stop the sending early (no grace wait). Writes JSON
``{"sent", "size", "index", "responder_index", "handshake_ms", "received_unique", "duplicates",
"lost": [seq...], "rtt_ms": {"p50", "p99", "max"}, "paused_ms", "stopped", "initiations",
"handshake_responses", "unmatched", "foreign", "send_errors"}`` to ``--report`` or stdout
(``lost`` only means something against ``wg-sink --echo``). Exit code 0 even with loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Container
from types import FrameType
from typing import Any

HEADER = struct.Struct("!Q8s")  # sequence number, run id
WG_HEADER = struct.Struct("<B3xIQ")  # type 4, receiver index (run id), counter (sequence number)
WG_TRANSPORT_DATA = 4
WG_MIN_SIZE = 32  # header + the 16-byte authentication tag of an empty payload
MAX_DATAGRAM = 65535
MAX_UDP_PAYLOAD = 65507  # IPv4
DEDUP_MEMORY = 1_000_000  # payloads remembered by `echo --dedup`


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_index(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"expected a u32 index (e.g. 42 or 0x2a), got {text!r}")
    return value


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _udp_socket(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    return sock


def run_echo(listen: tuple[str, int], dedup: bool) -> int:
    sock = _udp_socket(listen[0])
    sock.bind(listen)
    host, port = sock.getsockname()[:2]
    stats = {"received": 0, "unique": 0, "duplicates": 0, "replied": 0, "send_errors": 0}
    seen: set[bytes] = set()
    order: deque[bytes] = deque()
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    _emit({"listening": f"{host}:{port}"})
    try:
        while True:
            data, src = sock.recvfrom(MAX_DATAGRAM)
            stats["received"] += 1
            if dedup:
                if data in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(data)
                order.append(data)
                if len(order) > DEDUP_MEMORY:
                    seen.discard(order.popleft())
            stats["unique"] += 1
            try:
                sock.sendto(data, src)
                stats["replied"] += 1
            except OSError:
                stats["send_errors"] += 1
    except _Stop:
        pass
    _emit(stats)
    return 0


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_send(
    to: tuple[str, int],
    count: int,
    interval_ms: float,
    size: int,
    grace_ms: float,
    report: str | None,
    wg_shape: bool = False,
) -> int:
    sock = _udp_socket(to[0])
    sock.setblocking(False)
    run_id = os.urandom(8)
    wg_index = int.from_bytes(run_id[:4], "little")
    padding = b"\0" * max(0, size - HEADER.size)

    def pack(seq: int) -> bytes:
        if wg_shape:
            return WG_HEADER.pack(WG_TRANSPORT_DATA, wg_index, seq) + padding
        return HEADER.pack(seq, run_id) + padding

    def unpack(data: bytes) -> int | None:
        """The sequence number of a reply to this run, or None."""
        if len(data) < HEADER.size:
            return None
        if wg_shape:
            kind, index, seq = WG_HEADER.unpack_from(data)
            ours = kind == WG_TRANSPORT_DATA and index == wg_index
        else:
            seq, rid = HEADER.unpack_from(data)
            ours = rid == run_id
        return seq if ours and seq < len(sent_at) else None

    sent_at: list[float] = []
    rtts: dict[int, float] = {}
    stats = {"duplicates": 0, "send_errors": 0, "foreign": 0}
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)

    def drain() -> None:
        while True:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except ConnectionRefusedError:  # ICMP port unreachable for an earlier send
                continue
            now = time.monotonic()
            seq = unpack(data)
            if seq is None:
                stats["foreign"] += 1
            elif seq in rtts:
                stats["duplicates"] += 1
            else:
                rtts[seq] = now - sent_at[seq]

    start = time.monotonic()
    interval_s = interval_ms / 1000
    for seq in range(count):
        due = start + seq * interval_s
        while (wait := due - time.monotonic()) > 0:
            if sel.select(wait):
                drain()
        sent_at.append(time.monotonic())
        try:
            sock.sendto(pack(seq), to)
        except BlockingIOError:
            stats["send_errors"] += 1
        except OSError:  # e.g. ECONNREFUSED left over from an ICMP error
            stats["send_errors"] += 1
        drain()
    deadline = time.monotonic() + grace_ms / 1000
    while len(rtts) < count and (wait := deadline - time.monotonic()) > 0:
        if sel.select(wait):
            drain()

    rtt_ms = sorted(v * 1000 for v in rtts.values())
    result = {
        "sent": count,
        "received_unique": len(rtts),
        "lost": [seq for seq in range(count) if seq not in rtts],
        "duplicates": stats["duplicates"],
        "send_errors": stats["send_errors"],
        "foreign": stats["foreign"],
        "rtt_ms": {
            "p50": _percentile(rtt_ms, 0.5),
            "p99": _percentile(rtt_ms, 0.99),
            "max": rtt_ms[-1] if rtt_ms else None,
        },
    }
    text = json.dumps(result) + "\n"
    if report:
        with open(report, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


# ---------------------------------------------------------------------------------------------
# Fake WireGuard: the clear-text message header without the crypto


WG_INITIATION = 1
WG_RESPONSE = 2
WG_INITIATION_SIZE = 148
WG_RESPONSE_SIZE = 92
WG_TAG_SIZE = 16
WG_INITIATION_HEADER = struct.Struct("<II")  # type (with the 3 reserved bytes), sender index
WG_RESPONSE_HEADER = struct.Struct("<III")  # type, sender index, receiver index
WG_PROBE = struct.Struct("!QQ")  # wg-send payload: sequence number, send time (monotonic ns)
WG_TAG_SEED = struct.Struct("<IIQ")  # responder index, own index, sequence number
WG_SEND_MIN_SIZE = WG_HEADER.size + WG_PROBE.size + WG_TAG_SIZE  # 48
WG_HANDSHAKE_RETRY_S = 0.2
WG_LATE_COPIES_S = 0.1  # once every reply is in, how long to keep counting copies
WG_DEDUP_MEMORY = 1_000_000  # (index, counter) pairs remembered by wg-sink


def _wg_type(data: bytes) -> int:
    """The message type as WireGuard reads it: a u32 LE, so non-zero reserved bytes make it
    unknown."""
    return int.from_bytes(data[:4], "little") if len(data) >= 4 else -1


def _is_wg_data(data: bytes) -> bool:
    n = len(data)
    return n >= WG_MIN_SIZE and (n - WG_MIN_SIZE) % 16 == 0 and _wg_type(data) == WG_TRANSPORT_DATA


def _random_index(taken: Container[int] = ()) -> int:
    while True:
        index = int.from_bytes(os.urandom(4), "little")
        if index not in taken:
            return index


def _addr_key(addr: tuple[Any, ...]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _WgSession:
    """One handshake's session in wg-sink: the initiator's index and where it was last seen."""

    __slots__ = ("addr", "next_counter", "peer_index")

    def __init__(self, peer_index: int, addr: tuple[Any, ...]) -> None:
        self.peer_index = peer_index
        self.addr = addr
        self.next_counter = 0


def run_wg_sink(listen: tuple[str, int], index: int | None, echo: bool) -> int:
    sock = _udp_socket(listen[0])
    sock.bind(listen)
    host, port = sock.getsockname()[:2]
    first_index = index if index is not None else _random_index()
    sessions: dict[int, _WgSession] = {}  # by our own (receiver) index
    by_initiator: dict[int, int] = {}  # initiator's sender index -> our index
    stats = {
        "received": 0,
        "unique": 0,
        "duplicates": 0,
        "handshakes": 0,
        "replied": 0,
        "other": 0,
        "send_errors": 0,
    }
    by_source: dict[str, dict[str, int]] = {}
    seen: set[tuple[int, int]] = set()
    order: deque[tuple[int, int]] = deque()
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    _emit({"listening": f"{host}:{port}", "index": first_index})

    def send(data: bytes, addr: tuple[Any, ...]) -> bool:
        try:
            sock.sendto(data, addr)
        except OSError:  # e.g. ECONNREFUSED left over from an ICMP error
            stats["send_errors"] += 1
            return False
        return True

    try:
        while True:
            data, src = sock.recvfrom(MAX_DATAGRAM)
            if _is_wg_data(data):
                _, ours, counter = WG_HEADER.unpack_from(data)
                session = sessions.get(ours)
                if session is None:
                    stats["other"] += 1
                    continue
                stats["received"] += 1
                source = by_source.get(_addr_key(src))
                if source is None:
                    source = by_source[_addr_key(src)] = {"received": 0, "first": 0}
                source["received"] += 1
                key = (ours, counter)
                if key in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(key)
                order.append(key)
                if len(order) > WG_DEDUP_MEMORY:
                    seen.discard(order.popleft())
                stats["unique"] += 1
                source["first"] += 1
                session.addr = src  # endpoint roaming, as WireGuard does for authentic data
                if echo:
                    n = len(data)
                    probe = data[WG_HEADER.size : n - WG_TAG_SIZE][: WG_PROBE.size]
                    head = WG_HEADER.pack(
                        WG_TRANSPORT_DATA, session.peer_index, session.next_counter
                    )
                    reply = b"".join(
                        (
                            head,
                            probe,
                            bytes(n - WG_MIN_SIZE - len(probe)),
                            os.urandom(WG_TAG_SIZE),
                        )
                    )
                    session.next_counter += 1
                    if send(reply, session.addr):
                        stats["replied"] += 1
            elif len(data) == WG_INITIATION_SIZE and _wg_type(data) == WG_INITIATION:
                initiator = WG_INITIATION_HEADER.unpack_from(data)[1]
                ours_or_none = by_initiator.get(initiator)
                if ours_or_none is None:
                    ours = first_index if not sessions else _random_index(sessions)
                    by_initiator[initiator] = ours
                    sessions[ours] = _WgSession(initiator, src)
                else:
                    ours = ours_or_none
                    sessions[ours].addr = src
                stats["handshakes"] += 1
                response = WG_RESPONSE_HEADER.pack(WG_RESPONSE, ours, initiator)
                send(response + os.urandom(WG_RESPONSE_SIZE - len(response)), src)
            else:
                stats["other"] += 1
    except _Stop:
        pass
    _emit({**stats, "sessions": len(sessions), "index": first_index, "by_source": by_source})
    return 0


def run_wg_send(
    to: tuple[str, int],
    count: int,
    interval_ms: float,
    size: int,
    grace_ms: float,
    report: str | None,
    index: int | None,
    handshake_timeout_s: float,
    pause_file: str | None,
    progress_ms: float,
) -> int:
    sock = _udp_socket(to[0])
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    own = index if index is not None else _random_index()
    flags = {"progress": False, "stop": False}

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        flags["progress"] = True

    def on_stop(signum: int, frame: FrameType | None) -> None:
        flags["stop"] = True

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)

    stats = {
        "initiations": 0,
        "handshake_responses": 0,
        "duplicates": 0,
        "unmatched": 0,
        "foreign": 0,
        "send_errors": 0,
    }
    responder: int | None = None
    handshake_ns = 0
    reply_counters: set[int] = set()
    rtts: dict[int, float] = {}  # sequence number -> round trip (ms)
    sent = 0

    def progress(**extra: Any) -> None:
        line = {"sent": sent, "replies": len(rtts), **extra}
        sys.stderr.write(json.dumps(line) + "\n")
        sys.stderr.flush()

    def drain() -> None:
        nonlocal responder, handshake_ns
        while True:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            except ConnectionRefusedError:  # ICMP port unreachable for an earlier send
                continue
            now_ns = time.monotonic_ns()
            kind = _wg_type(data)
            if kind == WG_RESPONSE and len(data) == WG_RESPONSE_SIZE:
                _, sender, receiver = WG_RESPONSE_HEADER.unpack_from(data)
                if receiver != own:
                    stats["foreign"] += 1
                    continue
                stats["handshake_responses"] += 1
                if responder is None:
                    responder = sender
                    handshake_ns = now_ns - started_ns
            elif _is_wg_data(data) and WG_HEADER.unpack_from(data)[1] == own:
                counter = WG_HEADER.unpack_from(data)[2]
                if counter in reply_counters:
                    stats["duplicates"] += 1
                    continue
                reply_counters.add(counter)
                if len(data) < WG_SEND_MIN_SIZE:
                    stats["unmatched"] += 1
                    continue
                seq, sent_ns = WG_PROBE.unpack_from(data, WG_HEADER.size)
                if seq >= sent or seq in rtts:
                    stats["unmatched"] += 1
                else:
                    rtts[seq] = (now_ns - sent_ns) / 1e6
            else:
                stats["foreign"] += 1

    def send(data: bytes) -> None:
        try:
            sock.sendto(data, to)
        except OSError:  # full buffer, or ECONNREFUSED left over from an ICMP error
            stats["send_errors"] += 1

    # Handshake: initiations (fresh random bytes each, like WireGuard's) every 200 ms.
    started_ns = time.monotonic_ns()
    deadline = time.monotonic() + handshake_timeout_s
    next_init = 0.0
    while responder is None:
        now = time.monotonic()
        if flags["stop"]:
            sys.stderr.write("wg-send: stopped before the handshake completed\n")
            return 1
        if now >= deadline:
            sys.stderr.write(
                f"wg-send: no handshake response (type 2, receiver index {own}) from "
                f"{_addr_key(to)} within {handshake_timeout_s:g} s "
                f"({stats['initiations']} initiations sent)\n"
            )
            return 1
        if now >= next_init:
            head = WG_INITIATION_HEADER.pack(WG_INITIATION, own)
            send(head + os.urandom(WG_INITIATION_SIZE - len(head)))
            stats["initiations"] += 1
            next_init = now + WG_HANDSHAKE_RETRY_S
        if sel.select(max(0.0, min(next_init, deadline) - time.monotonic())):
            drain()
    handshake_ms = handshake_ns / 1e6
    theirs: int = responder
    progress(handshake_ms=handshake_ms, responder_index=theirs, index=own)

    pad = bytes(size - WG_SEND_MIN_SIZE)

    def pack(seq: int) -> bytes:
        tag = hashlib.sha256(WG_TAG_SEED.pack(theirs, own, seq)).digest()[:WG_TAG_SIZE]
        return b"".join(
            (
                WG_HEADER.pack(WG_TRANSPORT_DATA, theirs, seq),
                WG_PROBE.pack(seq, time.monotonic_ns()),
                pad,
                tag,
            )
        )

    progress_s = progress_ms / 1000
    next_progress = time.monotonic() + progress_s

    def housekeeping() -> None:
        nonlocal next_progress
        now = time.monotonic()
        if flags["progress"] or now >= next_progress:
            flags["progress"] = False
            progress()
            next_progress = now + progress_s

    def wait(until: float, *, all_answered: bool = False) -> None:
        """Drain replies and keep the progress lines coming until ``until`` (or a stop, or with
        ``all_answered`` every datagram sent so far has its reply)."""
        while not flags["stop"] and (left := until - time.monotonic()) > 0:
            if all_answered and len(rtts) >= sent:
                return
            if sel.select(min(left, max(0.0, next_progress - time.monotonic()))):
                drain()
            housekeeping()

    paused_s = 0.0
    interval_s = interval_ms / 1000
    start = time.monotonic()
    for seq in range(count):
        while pause_file is not None and os.path.exists(pause_file) and not flags["stop"]:
            paused_at = time.monotonic()
            progress(paused=True)
            while os.path.exists(pause_file) and not flags["stop"]:
                wait(time.monotonic() + 0.02)
            paused_s += time.monotonic() - paused_at
            progress(paused=False)
        wait(start + paused_s + seq * interval_s)
        if flags["stop"]:
            break
        send(pack(seq))
        sent += 1
        drain()
        housekeeping()
    grace_end = time.monotonic() + grace_ms / 1000
    wait(grace_end, all_answered=True)
    wait(min(grace_end, time.monotonic() + WG_LATE_COPIES_S))  # count late duplicates too
    progress(done=True)

    rtt_ms = sorted(rtts.values())
    result = {
        "sent": sent,
        "size": size,
        "index": own,
        "responder_index": responder,
        "handshake_ms": handshake_ms,
        "received_unique": len(rtts),
        "duplicates": stats["duplicates"],
        "lost": [seq for seq in range(sent) if seq not in rtts],
        "rtt_ms": {
            "p50": _percentile(rtt_ms, 0.5),
            "p99": _percentile(rtt_ms, 0.99),
            "max": rtt_ms[-1] if rtt_ms else None,
        },
        "paused_ms": paused_s * 1000,
        "stopped": flags["stop"],
        **stats,
    }
    text = json.dumps(result) + "\n"
    if report:
        with open(report, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.udp_tools",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    echo = sub.add_parser("echo", help="UDP echo server, optionally dropping repeated payloads")
    echo.add_argument("--listen", type=parse_hostport, required=True, metavar="HOST:PORT")
    echo.add_argument("--dedup", action="store_true", help="drop payloads already seen")
    send = sub.add_parser("send", help="send numbered datagrams and report the replies")
    send.add_argument("--to", type=parse_hostport, required=True, metavar="HOST:PORT")
    send.add_argument("--count", type=int, default=100)
    send.add_argument("--interval-ms", type=float, default=10.0)
    send.add_argument(
        "--size",
        type=int,
        help="datagram size: at least 16, default 100; with --wg-shape 32 + a multiple of 16, "
        "default 128 (WireGuard pads its payload to 16 bytes)",
    )
    send.add_argument(
        "--grace-ms",
        type=float,
        default=1000.0,
        help="how long to wait for late replies after the last send",
    )
    send.add_argument("--report", help="write the JSON report here instead of stdout")
    send.add_argument(
        "--wg-shape",
        action="store_true",
        help="make each datagram look like WireGuard transport data (size at least 32)",
    )
    sink = sub.add_parser(
        "wg-sink", help="fake WireGuard server: answers handshakes, counts (and echoes) data"
    )
    sink.add_argument("--listen", type=parse_hostport, required=True, metavar="HOST:PORT")
    sink.add_argument(
        "--index",
        type=parse_index,
        help="its receiver index for the first session (default random); later sessions "
        "(other initiator indices) get random ones",
    )
    sink.add_argument(
        "--echo", action="store_true", help="answer each new data datagram to the peer"
    )
    wg_send = sub.add_parser(
        "wg-send", help="fake WireGuard client: handshake, then numbered transport data"
    )
    wg_send.add_argument("--to", type=parse_hostport, required=True, metavar="HOST:PORT")
    wg_send.add_argument("--count", type=int, default=100)
    wg_send.add_argument("--interval-ms", type=float, default=10.0)
    wg_send.add_argument(
        "--size",
        type=int,
        default=128,
        help=f"datagram size, rounded up to 32 + a multiple of 16, at least {WG_SEND_MIN_SIZE}",
    )
    wg_send.add_argument(
        "--grace-ms",
        type=float,
        default=1000.0,
        help="how long to wait for late replies after the last send",
    )
    wg_send.add_argument("--report", help="write the JSON report here instead of stdout")
    wg_send.add_argument("--index", type=parse_index, help="its sender index (default random)")
    wg_send.add_argument("--handshake-timeout-s", type=float, default=10.0)
    wg_send.add_argument(
        "--pause-file", help="while this file exists, send nothing (replies are still counted)"
    )
    wg_send.add_argument(
        "--progress-ms", type=float, default=1000.0, help="period of the stderr progress lines"
    )
    args = parser.parse_args(argv)
    if args.cmd == "echo":
        return run_echo(args.listen, args.dedup)
    if args.cmd == "wg-sink":
        return run_wg_sink(args.listen, args.index, args.echo)
    if args.cmd == "wg-send":
        if args.count < 0 or args.interval_ms < 0 or args.progress_ms <= 0:
            parser.error("--count and --interval-ms must be >= 0, --progress-ms > 0")
        size = max(WG_SEND_MIN_SIZE, args.size)
        size += -(size - WG_MIN_SIZE) % 16
        if size > MAX_UDP_PAYLOAD:
            parser.error(f"--size must be at most {MAX_UDP_PAYLOAD}")
        return run_wg_send(
            args.to,
            args.count,
            args.interval_ms,
            size,
            args.grace_ms,
            args.report,
            args.index,
            args.handshake_timeout_s,
            args.pause_file,
            args.progress_ms,
        )
    if args.size is None:
        args.size = 128 if args.wg_shape else 100
    if args.wg_shape and (args.size < WG_MIN_SIZE or (args.size - WG_MIN_SIZE) % 16):
        parser.error(f"--size with --wg-shape must be {WG_MIN_SIZE} + a multiple of 16")
    if args.size < HEADER.size:
        parser.error(f"--size must be at least {HEADER.size}")
    return run_send(
        args.to, args.count, args.interval_ms, args.size, args.grace_ms, args.report, args.wg_shape
    )


if __name__ == "__main__":
    raise SystemExit(main())
