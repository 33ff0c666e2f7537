"""How long a relay thread waits when another thread of its process runs Python code.

``python -m bench.gil_stall [--seconds S] [--busy-ms MS]``

One process, two threads, like engarde: a "pump" thread (epoll, then per datagram one
``recvfrom_into`` and 3 ``sendto``, as the client's WireGuard -> uplinks path) and a "control"
thread that every 250 ms runs pure Python for ``--busy-ms`` (a dashboard page, a burst of
netlink events...). A child process sends 2k datagrams/s to the pump. Each datagram's delay is
its kernel receive timestamp (SIOCGSTAMPNS) to the end of its 3 sends.

Variants: the GIL switch interval (5 ms, CPython's default; 0.5 ms; 0.1 ms), and the socket
calls made with the stdlib (which releases the GIL around every system call) or through
``ctypes.PyDLL`` (the GIL held across the non-blocking call). Why it matters: a thread that
releases the GIL for a system call must win it back from a busy thread, which gives it up only
at the end of its switch interval, so each of the pump's system calls can cost up to one
interval while the control plane is busy ("convoy effect"), not once per stall.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

SIOCGSTAMPNS = 0x8907
RATE = 2000
SIZE = 112
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
port, seconds = int(sys.argv[1]), float(sys.argv[2])
data = bytes(112); start = time.monotonic(); n = 0
while (now := time.monotonic()) - start < seconds:
    due = start + n / 2000
    if now < due:
        time.sleep(due - now)
    s.sendto(data, ("127.0.0.1", port)); n += 1
"""


def run(switch_s: float, held: bool, seconds: float, busy_ms: float) -> dict[str, float]:
    sys.setswitchinterval(switch_s)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # never read: unconnected sends to it get no error back
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    port = sink.getsockname()[1]
    delays: list[float] = []
    stop = threading.Event()
    buf = bytearray(2048)
    stamp = bytes(16)

    if held:
        libc = ctypes.PyDLL(None, use_errno=True)
        recv = libc.recv
        recv.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        sendto = libc.sendto
        sendto.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                           ctypes.c_void_p, ctypes.c_uint32)
        cbuf = (ctypes.c_char * 2048)()
        addr = struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port),
                           socket.inet_aton("127.0.0.1"))
        caddr = ctypes.create_string_buffer(addr, len(addr))
        rfd, tfd = rx.fileno(), tx.fileno()

        def one() -> bool:
            n = recv(rfd, cbuf, 2048, 0)
            if n < 0:
                return False
            for _ in range(3):
                sendto(tfd, cbuf, n, 0, caddr, len(addr))
            return True
    else:
        dst = ("127.0.0.1", port)

        def one() -> bool:
            try:
                n = rx.recv_into(buf)
            except BlockingIOError:
                return False
            data = memoryview(buf)[:n]
            for _ in range(3):
                tx.sendto(data, dst)
            return True

    def pump() -> None:
        ep = select.epoll()
        ep.register(rx.fileno(), select.EPOLLIN)
        while not stop.is_set():
            for _ in ep.poll(0.1):
                if one():
                    sec, nsec = struct.unpack("@qq", fcntl.ioctl(rx.fileno(), SIOCGSTAMPNS, stamp))
                    delays.append((time.time_ns() - (sec * 1_000_000_000 + nsec)) / 1e6)

    def control() -> None:
        while not stop.wait(0.25):
            end = time.perf_counter() + busy_ms / 1000
            x = 0
            while time.perf_counter() < end:
                for i in range(200):
                    x += i * i

    threads = [threading.Thread(target=pump), threading.Thread(target=control)]
    for t in threads:
        t.start()
    sender = subprocess.Popen([sys.executable, "-c", SENDER, str(rx.getsockname()[1]),
                               str(seconds)])
    sender.wait()
    stop.set()
    for t in threads:
        t.join()
    for s in (rx, tx, sink):
        s.close()
    delays.sort()
    return {"n": len(delays), "p50": statistics.median(delays),
            "p99": delays[int(0.99 * len(delays))], "max": delays[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gil_stall")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--busy-ms", type=float, default=20.0)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    print(f"2k/s, control thread busy {args.busy_ms:g} ms every 250 ms; delay in ms, "
          f"median over {args.reps} runs of {args.seconds:g} s (load: {os.getloadavg()[0]:.1f})")
    for held in (False, True):
        for switch_s in (0.005, 0.0005, 0.0001):
            runs = [run(switch_s, held, args.seconds, args.busy_ms) for _ in range(args.reps)]
            med = {k: statistics.median(r[k] for r in runs) for k in ("p50", "p99", "max")}
            calls = "ctypes.PyDLL (GIL held)" if held else "stdlib socket (GIL released)"
            print(f"{calls:30} switch {switch_s * 1000:4.1f} ms: p50 {med['p50']:6.2f}  "
                  f"p99 {med['p99']:6.2f}  max {med['max']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
