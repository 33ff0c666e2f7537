"""Run inside the server namespace (as root): an attacker who knows a client's address and
its WireGuard session index (an on-path observer) sends transport data as that client to
another address of the (multi-homed) server, hoping to move where the replies leave from.
Counters and tags are random: it cannot know them.

Usage: spoof_as_client.py CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT INDEX [COUNT]
Prints one JSON line: {"sent": n}.
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
    src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    index = int(sys.argv[5])
    count = int(sys.argv[6]) if len(sys.argv) > 6 else 50
    rng = random.Random(13)
    raw = raw_socket()
    for _ in range(count):
        payload = struct.pack("<IIQ", 4, index, rng.getrandbits(64)) + os.urandom(64)
        raw.sendto(packet(src, sport, dst, dport, payload), (dst, 0))
        time.sleep(0.005)
    print(json.dumps({"sent": count}))


main()
