"""Run inside the server namespace (as root): spray the engarde server's port with datagrams
from thousands of spoofed source addresses (a raw socket writes the IP header itself), plus empty
and oversize ones. Usage: spoof_flood.py DST_IP DST_PORT SOURCE_PREFIX (e.g. 10.150.201)."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
import time

from rawudp import packet, raw_socket


def main() -> None:
    dst, dport, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = random.Random(7)
    raw = raw_socket()
    kinds = {"junk": 0, "initiation": 0, "data": 0, "empty": 0}
    sources = set()
    rate = float(os.environ.get("FLOOD_RATE", "20000"))  # datagrams/s
    # Built beforehand, so that the flood costs the (shared, small) test machine little CPU.
    pool: list[tuple[str, tuple[str, int], bytes]] = []
    for _ in range(int(os.environ.get("FLOOD_POOL", "20000"))):
        src = f"{prefix}.{rng.randrange(1, 255)}"
        sport = rng.randrange(1024, 65535)
        kind = rng.choice(["junk", "junk", "initiation", "data", "empty"])
        if kind == "junk":
            payload = os.urandom(rng.randrange(1, 1400))
        elif kind == "initiation":
            payload = struct.pack("<II", 1, rng.getrandbits(32)) + os.urandom(140)
        elif kind == "data":
            payload = struct.pack("<IIQ", 4, rng.getrandbits(32), 0) + os.urandom(64)
        else:
            payload = b""
        pool.append((kind, (src, sport), packet(src, sport, dst, dport, payload)))
    sent = 0
    started = time.monotonic()
    deadline = started + float(os.environ.get("FLOOD_SECONDS", "4"))
    while time.monotonic() < deadline:
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
        for _ in range(100):
            kind, source, data = pool[sent % len(pool)]
            sent += 1
            sources.add(source)
            raw.sendto(data, (dst, 0))
            kinds[kind] += 1
    # Oversize: the largest UDP payload there is, from an ordinary socket.
    big = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        big.sendto(os.urandom(65507), (dst, dport))
    print(json.dumps({**kinds, "oversize": 5, "sources": len(sources)}))


main()
