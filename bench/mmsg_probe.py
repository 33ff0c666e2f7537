"""The client's forward loop three ways, on loopback: is recvmmsg/sendmmsg through ctypes worth it?

- ``crelay``:  bench/c/relay.c's client loop (recvfrom + one sendto per uplink per datagram,
               drain up to 64 per readiness report), uplinks SO_BINDTODEVICE'd to ``lo``;
- ``plain``:   the same loop in Python (recvfrom_into + 3 x sendto), on an epoll;
- ``batched``: Python + ctypes: one recvmmsg of up to 64 datagrams, then one sendmmsg per
               uplink over header arrays that all point at the same iovecs
               (engarde.net.mmsg: what the handlers do when a socket is busy);
- ``segmented``: the same, each uplink's batch sent as runs of equal-sized datagrams with
               UDP_SEGMENT (the kernel cuts them up after one pass through the stack).

A separate process floods the relay's listen socket with datagrams of ``--size`` bytes for
``--seconds``; the relay copies each to 3 sink sockets nobody reads (the kernel drops at the full
receiver, which costs the sender nothing extra). Figures: datagrams taken from the listen
socket per second ("drained") and the relay's CPU time per datagram taken. The flooder shares
the machine's CPUs, so the rates depend on how much CPU it leaves; CPU per datagram is the
figure to compare. Not part of ``make bench``.

Run: .venv/bin/python -m bench.mmsg_probe [--seconds 3] [--runs 3] [--size 1408 --size 112]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import time
from typing import Any

from bench.build import build_tools
from engarde.net import mmsg

LINKS = 3
SECONDS = 3.0


def _flood(port: int, size: int, stop_at: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = os.urandom(size)
    dst = ("127.0.0.1", port)
    while time.monotonic() < stop_at:
        for _ in range(256):
            with contextlib.suppress(OSError):
                sock.sendto(payload, dst)


def _sinks() -> tuple[list[socket.socket], list[tuple[str, int]]]:
    sinks = []
    for _ in range(LINKS):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sinks.append(sink)
    return sinks, [s.getsockname() for s in sinks]


def _python_relay(shape: str, listen: socket.socket, dsts: list[Any], until: float) -> int:
    outs = []
    for _ in dsts:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        out.setblocking(False)
        outs.append(out)
    epoll = select.epoll()
    epoll.register(listen.fileno(), select.EPOLLIN)
    taken = 0
    try:
        if shape == "plain":
            buf = bytearray(65536)
            view = memoryview(buf)
            recv = listen.recvfrom_into
            targets = [(o.sendto, d) for o, d in zip(outs, dsts, strict=True)]
            while time.monotonic() < until:
                epoll.poll(0.1)
                for _ in range(mmsg.SLOTS):
                    try:
                        n, _src = recv(buf)
                    except BlockingIOError:
                        break
                    taken += 1
                    data = view[:n]
                    for sendto, dst in targets:
                        with contextlib.suppress(BlockingIOError):
                            sendto(data, dst)
        else:
            receiver = mmsg.Receiver()
            iovecs = mmsg.Iovecs()
            arrays = [
                (
                    o.fileno(),
                    mmsg.Messages(
                        iovecs, name=mmsg.sockaddr_of(d), segment=shape == "segmented"
                    ),
                )
                for o, d in zip(outs, dsts, strict=True)
            ]
            fd = listen.fileno()
            point, size, address = iovecs.point, receiver.size, receiver.address
            while time.monotonic() < until:
                epoll.poll(0.1)
                try:
                    k = receiver.recv(fd, mmsg.SLOTS)
                except BlockingIOError:
                    continue
                taken += k
                for i in range(k):
                    point(i, address(i), size(i))
                for out_fd, messages in arrays:
                    messages.send_all(out_fd, k)
    finally:
        epoll.close()
        for o in outs:
            o.close()
    return taken


def measure(shape: str, size: int) -> dict[str, float]:
    sinks, dsts = _sinks()
    try:
        if shape == "crelay":
            return _measure_crelay(size, dsts)
        listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        listen.bind(("127.0.0.1", 0))
        listen.setblocking(False)
        start = time.monotonic()
        flood = multiprocessing.Process(
            target=_flood, args=(listen.getsockname()[1], size, start + SECONDS + 0.5)
        )
        flood.start()
        try:
            cpu0 = time.process_time()
            taken = _python_relay(shape, listen, dsts, start + SECONDS)
            cpu = time.process_time() - cpu0
        finally:
            flood.join()
            listen.close()
        return {
            "datagrams_per_s": taken / SECONDS,
            "cpu_us_per_datagram": 1e6 * cpu / max(1, taken),
        }
    finally:
        for s in sinks:
            s.close()


def _measure_crelay(size: int, dsts: list[Any]) -> dict[str, float]:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    argv = [build_tools().relay, "client", "--listen", f"127.0.0.1:{port}"]
    for host, p in dsts:
        argv += ["--uplink", f"lo,127.0.0.1,{host}:{p}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if "ready" not in line:
            raise RuntimeError(f"C relay did not start: {line}{proc.stderr.read()}")
        start = time.monotonic()
        flood = multiprocessing.Process(target=_flood, args=(port, size, start + SECONDS))
        flood.start()
        flood.join()
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(out.strip().splitlines()[-1])
    taken = result["rx_listen"]
    cpu = result["cpu_user_s"] + result["cpu_sys_s"]
    return {"datagrams_per_s": taken / SECONDS, "cpu_us_per_datagram": 1e6 * cpu / max(1, taken)}


def main() -> None:
    global SECONDS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, action="append")
    args = parser.parse_args()
    SECONDS = args.seconds
    if not mmsg.AVAILABLE:
        raise SystemExit("recvmmsg/sendmmsg not available from libc")
    results: dict[str, Any] = {}
    for size in args.size or [1408, 112]:
        for shape in ("crelay", "plain", "batched", "segmented"):
            runs = [measure(shape, size) for _ in range(args.runs)]
            rates = sorted(r["datagrams_per_s"] for r in runs)
            cpus = sorted(r["cpu_us_per_datagram"] for r in runs)
            mid = len(runs) // 2
            results[f"{shape}-{size}"] = {
                "median_datagrams_per_s": rates[mid],
                "median_cpu_us_per_datagram": cpus[mid],
                "cpu_us_per_datagram_min_max": [cpus[0], cpus[-1]],
            }
            print(
                f"{shape:8s} {LINKS} links {size:5d} B: {rates[mid]:9.0f} datagrams/s drained "
                f"[{rates[0]:.0f}-{rates[-1]:.0f}], {cpus[mid]:.2f} us CPU each "
                f"[{cpus[0]:.2f}-{cpus[-1]:.2f}]",
                flush=True,
            )
        crelay = results[f"crelay-{size}"]["median_cpu_us_per_datagram"]
        batched = results[f"batched-{size}"]["median_cpu_us_per_datagram"]
        segmented = results[f"segmented-{size}"]["median_cpu_us_per_datagram"]
        print(
            f"  {size} B: CPU per datagram, batched {batched / crelay:.2f} x the C relay's, "
            f"segmented {segmented / crelay:.2f} x"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
