"""Run inside the server namespace (as root): handshake-initiation-shaped datagrams to the
engarde server, each from a source address and port never used before (a raw socket writes the
IP header itself), at RATE a second for SECONDS. What issue 13 measured against the dashboard.
Usage: initiation_flood.py DST_IP DST_PORT SOURCE_PREFIX RATE SECONDS (prefix e.g. 10.150).
Prints one JSON line: datagrams sent, distinct sources, seconds it took."""

from __future__ import annotations

import json
import os
import struct
import sys
import time

from rawudp import packet, raw_socket


def main() -> None:
    dst, dport, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rate, seconds = float(sys.argv[4]), float(sys.argv[5])
    raw = raw_socket()
    body = os.urandom(140)
    sent = 0
    started = time.monotonic()
    total = int(rate * seconds)
    while sent < total:
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
        for _ in range(32):
            host = sent % 64516  # 254 x 254 addresses, then the next source port
            src = f"{prefix}.{host // 254 + 1}.{host % 254 + 1}"
            sport = 1024 + sent // 64516
            payload = struct.pack("<II", 1, sent) + body  # 148 bytes, a new sender index
            raw.sendto(packet(src, sport, dst, dport, payload), (dst, 0))
            sent += 1
    print(json.dumps({"sent": sent, "sources": sent, "seconds": time.monotonic() - started}))


main()
