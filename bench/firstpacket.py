"""``python -m bench.firstpacket --ifname IF --port P [--timeout-s S]``: when did the first UDP
datagram to port P arrive on interface IF?

The hotplug scenario's stopwatch, run in the server namespace on the ``sv{i}`` end of the uplink
under test, started before the event. An AF_PACKET socket bound to that one interface sees what
arrives on it whether or not anything listens, without tcpdump and without polling counters. The
arrival time is the kernel's receive timestamp of the packet (SO_TIMESTAMPNS, CLOCK_REALTIME),
converted to CLOCK_MONOTONIC with the offset between the two clocks read right after: all
namespaces share CLOCK_MONOTONIC, so the bench subtracts the monotonic time it took just before
causing the event. The time this process read after ``recvmsg`` returned is printed too
(``woke_ns``; it adds this process's wake-up latency).

Prints ``firstpacket: ready`` on stderr once bound, then one JSON line on stdout and exits: the
arrival time, the udpgen sequence number and send time found in the payload, or
``"timeout": true``. Exit code 2 on a usage error (unknown interface).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = 35  # also SCM_TIMESTAMPNS
IPPROTO_UDP = 17


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.firstpacket")
    p.add_argument("--ifname", required=True)
    p.add_argument("--port", type=int, required=True, help="UDP destination port to wait for")
    p.add_argument("--timeout-s", type=float, default=10.0)
    args = p.parse_args(argv)

    # Protocol 0 receives nothing until bind() names the interface and the protocol: a socket
    # created with ETH_P_IP would queue packets from every interface in between.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    try:
        sock.bind((args.ifname, ETH_P_IP))
    except OSError as exc:
        print(f"firstpacket: cannot bind to {args.ifname}: {exc}", file=sys.stderr)
        return 2
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.settimeout(args.timeout_s)
    print("firstpacket: ready", file=sys.stderr, flush=True)

    deadline = time.monotonic() + args.timeout_s
    result: dict[str, object] = {"ifname": args.ifname, "timeout": True}
    while time.monotonic() < deadline:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            data, ancdata, _flags, addr = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        except TimeoutError:
            break
        woke_ns = time.monotonic_ns()
        offset_ns = time.time_ns() - time.monotonic_ns()
        if addr[2] == PACKET_OUTGOING or len(data) < 28 or data[9] != IPPROTO_UDP:
            continue
        ihl = (data[0] & 0x0F) * 4
        if len(data) < ihl + 8 or struct.unpack_from("!H", data, ihl + 2)[0] != args.port:
            continue
        kernel_ns = None
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, nsec = struct.unpack("qq", value[:16])
                kernel_ns = sec * 1_000_000_000 + nsec - offset_ns
        payload = data[ihl + 8:]
        seq = sent_ns = None
        if len(payload) >= 24 and payload[0] == 4:
            seq, sent_ns = struct.unpack_from("<QQ", payload, 8)
        result = {"ifname": args.ifname, "timeout": False,
                  "first_ns": kernel_ns if kernel_ns is not None else woke_ns,
                  "kernel_stamp": kernel_ns is not None, "woke_ns": woke_ns,
                  "src": socket.inet_ntoa(data[12:16]), "seq": seq, "sent_ns": sent_ns}
        break
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
