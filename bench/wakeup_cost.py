"""What one trio wake-up costs a relay loop, measured in one process on loopback.

Each iteration sends one datagram to a UDP socket of our own and receives it, three ways:

- ``plain``:      sendto + recvfrom_into, no await (the per-datagram cost of the syscalls);
- ``checkpoint``: the same plus ``await trio.lowlevel.checkpoint()`` (one scheduler pass);
- ``wait``:       the same plus ``await trio.lowlevel.wait_readable(sock)`` before the receive
                  (what a relay loop pays each time it finds its socket drained: epoll
                  registration, a scheduler pass with epoll_wait, unregistration);
- ``epoll``:      the same plus ``epoll.poll()`` on an epoll where the socket stays registered
                  (what engarde's pump pays per readiness report, engarde/net/pump.py).

The differences to ``plain`` are the cost of a checkpoint and of a wait_readable when the
socket is already readable (the cheapest case: no sleep, no other task). Not part of
``make bench``. Run: .venv/bin/python -m bench.wakeup_cost [--n 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import statistics
import time

import trio


async def _loop(kind: str, n: int) -> float:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    dst = sock.getsockname()
    buf = bytearray(2048)
    payload = b"x" * 112
    sendto, recv = sock.sendto, sock.recvfrom_into
    t0 = time.perf_counter()
    if kind == "plain":
        for _ in range(n):
            sendto(payload, dst)
            recv(buf)
    elif kind == "checkpoint":
        for _ in range(n):
            sendto(payload, dst)
            await trio.lowlevel.checkpoint()
            recv(buf)
    elif kind == "epoll":
        epoll = select.epoll()
        epoll.register(sock.fileno(), select.EPOLLIN)
        poll = epoll.poll
        for _ in range(n):
            sendto(payload, dst)
            poll()
            recv(buf)
        epoll.close()
    else:
        for _ in range(n):
            sendto(payload, dst)
            await trio.lowlevel.wait_readable(sock)
            recv(buf)
    elapsed = time.perf_counter() - t0
    sock.close()
    return elapsed / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    results: dict[str, float] = {}
    for kind in ("plain", "checkpoint", "wait", "epoll"):
        per = [trio.run(_loop, kind, args.n) for _ in range(args.runs)]
        results[kind] = statistics.median(per)
        print(f"{kind:10} {results[kind]:6.2f} us per iteration (median of {args.runs})")
    extra = {k: round(results[k] - results["plain"], 2) for k in ("checkpoint", "wait", "epoll")}
    print(
        f"added per checkpoint {extra['checkpoint']} us, per wait_readable {extra['wait']} us, "
        f"per epoll.poll {extra['epoll']} us"
    )
    print(json.dumps({"us_per_iteration": results, "added_us": extra}))


if __name__ == "__main__":
    main()
