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
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from types import FrameType
from typing import Any

HEADER = struct.Struct("!Q8s")  # sequence number, run id
WG_HEADER = struct.Struct("<B3xIQ")  # type 4, receiver index (run id), counter (sequence number)
WG_TRANSPORT_DATA = 4
WG_MIN_SIZE = 32  # header + the 16-byte authentication tag of an empty payload
MAX_DATAGRAM = 65535
DEDUP_MEMORY = 1_000_000  # payloads remembered by `echo --dedup`


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


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
    args = parser.parse_args(argv)
    if args.cmd == "echo":
        return run_echo(args.listen, args.dedup)
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
