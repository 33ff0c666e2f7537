"""What recognising a duplicate costs, next to the send it saves. One process, loopback.

Per datagram, the server's hot path with dedup does, for a copy of transport data: read the
header (index, counter), slice the tag, ask the copy tracker (engarde/core/copies.py); for a
duplicate that is all, for a first copy it then sends to WireGuard. Without dedup every copy is
sent. Four timings, CPU per item (process time, so what the kernel does for the send counts):

- ``first``:  header + tag + `CopyTracker.see` for a first copy (plus its share of settling);
- ``dup``:    the same for an exact copy from another link (what dedup adds per duplicate);
- ``send``:   a non-blocking `send` of the datagram on a connected UDP socket to a socket of
              our own that drains what arrives (what a duplicate would cost WireGuard's side
              to receive is not counted: the saving is larger than shown);
- so the saving per duplicate is ``send - dup``.

Not part of ``make bench``: a micro-benchmark.
Run: .venv/bin/python -m bench.dedup_cost [--n 100000] [--size 1408] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import struct
import time

from engarde.core.copies import CopyTracker, LinkQuality

HEADER = struct.Struct("<IQ")


def datagram(counter: int, size: int) -> bytearray:
    buf = bytearray(size)
    struct.pack_into("<B3xIQ", buf, 0, 4, 0x1234, counter)
    buf[size - 16 :] = counter.to_bytes(16, "little")
    return buf


def tracker_costs(n: int, size: int) -> tuple[float, float]:
    """(first, dup) process-CPU microseconds per copy, 3 links, at a simulated 10k/s."""
    tracker = CopyTracker()
    links = [LinkQuality() for _ in range(3)]
    for link in links:
        tracker.open(link, 0.0)
    tracker.sweep(3.0)
    bufs = [datagram(c, size) for c in range(256)]
    see, header = tracker.see, HEADER.unpack_from
    first_s = dup_s = 0.0
    clock = time.process_time
    for block in range(0, n, 256):
        now = 3.0 + block * 1e-4
        t0 = clock()
        for i in range(256):
            buf = bufs[i]
            index, _ = header(buf, 4)
            see(index, block + i, buf[size - 16 : size], links[0], now)
        t1 = clock()
        for link in links[1:]:
            for i in range(256):
                buf = bufs[i]
                index, _ = header(buf, 4)
                see(index, block + i, buf[size - 16 : size], link, now + 0.001)
        t2 = clock()
        tracker.sweep(now)  # settling: charged to the first copies below
        t3 = clock()
        first_s += (t1 - t0) + (t3 - t2)
        dup_s += t2 - t1
    return first_s / n * 1e6, dup_s / (2 * n) * 1e6


def send_cost(n: int, size: int) -> float:
    """Process-CPU microseconds per non-blocking send of `size` bytes (receiver drained)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    tx.setblocking(False)
    view = memoryview(datagram(1, size))
    sink = bytearray(65536)
    send, recv = tx.send, rx.recv_into
    spent = 0.0
    clock = time.process_time
    for _ in range(0, n, 256):
        t0 = clock()
        for _ in range(256):
            with contextlib.suppress(BlockingIOError):
                send(view[:size])
        spent += clock() - t0
        try:
            while True:
                recv(sink)
        except BlockingIOError:
            pass
    rx.close()
    tx.close()
    return spent / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1408)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    firsts, dups, sends = [], [], []
    for _ in range(args.runs):
        first, dup = tracker_costs(args.n, args.size)
        firsts.append(first)
        dups.append(dup)
        sends.append(send_cost(args.n, args.size))
    result = {
        "size": args.size,
        "first_us": round(statistics.median(firsts), 3),
        "dup_us": round(statistics.median(dups), 3),
        "send_us": round(statistics.median(sends), 3),
        "saved_per_duplicate_us": round(statistics.median(sends) - statistics.median(dups), 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
