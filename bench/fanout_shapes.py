"""Fan-out shapes, measured in one process on loopback: inline non-blocking sends from the pump
thread (what engarde does: engarde.net.pump + engarde.net.uplinks.wireguard_handler), the same
handler driven by a trio task (wait_readable between batches), and one bounded memory-channel
outbox per link drained by its own trio task.

A separate process floods the relay's listen socket with 1400-byte datagrams; the relay copies each
to 3 sink sockets on 127.0.0.1 (nobody reads them: the kernel drops at the full receiver, which
costs the sender nothing extra). The figure is datagrams taken from the listen socket per second.

Run: .venv/bin/python -m bench.fanout_shapes [--seconds 3] [--links 3] [--size 1400]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import time
from typing import Any

import trio

from engarde.config import ClientConfig
from engarde.core.client import ClientCore, UplinkPlan
from engarde.net.pump import BATCH, Pump, run_pump
from engarde.net.uplinks import Fanout, wireguard_handler


def _flood(port: int, size: int, stop_at: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = os.urandom(size)
    dst = ("127.0.0.1", port)
    while time.monotonic() < stop_at:
        for _ in range(256):
            with contextlib.suppress(OSError):
                sock.sendto(payload, dst)


def _sockets(links: int) -> tuple[socket.socket, list[socket.socket], list[tuple[str, int]]]:
    listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listen.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    listen.bind(("127.0.0.1", 0))
    listen.setblocking(False)
    sinks, outs = [], []
    for _ in range(links):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sinks.append(sink)
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        out.setblocking(False)
        outs.append(out)
    return listen, outs, [s.getsockname() for s in sinks]


def _core() -> ClientCore:
    return ClientCore(ClientConfig(listenAddr="127.0.0.1:1", dstAddr="127.0.0.1:2"))


def _fanout(core: ClientCore, outs: list[socket.socket], dsts: list[Any]) -> Fanout:
    fanout = Fanout()
    for i, (out, dst) in enumerate(zip(outs, dsts, strict=True)):
        plan = UplinkPlan(i, f"up{i}", f"127.0.0.{i + 1}", "127.0.0.1:2")
        fanout.add(plan.key, (out.sendto, dst, core.path_for(plan).stats))
    return fanout


async def _pump(listen: socket.socket, outs: list[socket.socket], dsts: list[Any]) -> ClientCore:
    core = _core()
    pump = Pump()
    pump.register(listen, wireguard_handler(listen, core, _fanout(core, outs, dsts)))
    async with trio.open_nursery() as nursery:
        await nursery.start(run_pump, pump)
        await trio.sleep(SECONDS)
        nursery.cancel_scope.cancel()
    return core


async def _inline(listen: socket.socket, outs: list[socket.socket], dsts: list[Any]) -> ClientCore:
    core = _core()
    handler = wireguard_handler(listen, core, _fanout(core, outs, dsts))
    with trio.move_on_after(SECONDS):
        while True:
            handler()
            await trio.lowlevel.wait_readable(listen)
    return core


async def _channels(
    listen: socket.socket, outs: list[socket.socket], dsts: list[Any]
) -> ClientCore:
    core = _core()
    stats = core.stats
    channels = [trio.open_memory_channel[list[bytes]](64) for _ in outs]

    async def link_task(
        rx: trio.MemoryReceiveChannel[list[bytes]], out: socket.socket, dst: Any
    ) -> None:
        sendto = out.sendto
        while True:
            batch = await rx.receive()
            while True:
                for data in batch:
                    with contextlib.suppress(BlockingIOError):
                        sendto(data, dst)
                try:
                    batch = rx.receive_nowait()
                except trio.WouldBlock:
                    break

    async def receive_loop() -> None:
        buf = bytearray(65536)
        recv = listen.recvfrom_into
        senders = [tx for tx, _ in channels]
        while True:
            batch: list[bytes] = []
            for _ in range(BATCH):
                try:
                    n, _src = recv(buf)
                except BlockingIOError:
                    break
                batch.append(bytes(buf[:n]))  # must outlive the receive buffer
            if batch:
                stats.wg_rx_datagrams += len(batch)
                for tx in senders:
                    try:
                        tx.send_nowait(batch)
                    except trio.WouldBlock:
                        stats.no_uplink_drops += len(batch)
            if len(batch) == BATCH:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(listen)

    async with trio.open_nursery() as nursery:
        for (_, rx), out, dst in zip(channels, outs, dsts, strict=True):
            nursery.start_soon(link_task, rx, out, dst)
        nursery.start_soon(receive_loop)
        await trio.sleep(SECONDS)
        nursery.cancel_scope.cancel()
    return core


SECONDS = 3.0


def measure(shape: str, links: int, size: int) -> dict[str, float]:
    listen, outs, dsts = _sockets(links)
    stop_at = time.monotonic() + SECONDS + 1.0
    flood = multiprocessing.Process(target=_flood, args=(listen.getsockname()[1], size, stop_at))
    flood.start()
    try:
        cpu0 = time.process_time()
        runner = {"pump": _pump, "inline": _inline, "channels": _channels}[shape]
        core = trio.run(runner, listen, outs, dsts)
        cpu = time.process_time() - cpu0
    finally:
        flood.join()
        for s in [listen, *outs]:
            s.close()
    n = core.stats.wg_rx_datagrams
    return {
        "datagrams_per_s": n / SECONDS,
        "cpu_us_per_datagram": 1e6 * cpu / max(1, n),
    }


def main() -> None:
    global SECONDS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--links", type=int, default=3)
    parser.add_argument("--size", type=int, default=1400)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    SECONDS = args.seconds
    results: dict[str, Any] = {}
    for shape in ("pump", "inline", "channels"):
        runs = [measure(shape, args.links, args.size) for _ in range(args.runs)]
        rates = sorted(r["datagrams_per_s"] for r in runs)
        cpus = sorted(r["cpu_us_per_datagram"] for r in runs)
        results[shape] = {
            "median_datagrams_per_s": rates[len(rates) // 2],
            "min": rates[0],
            "max": rates[-1],
            "median_cpu_us_per_datagram": cpus[len(cpus) // 2],
        }
        print(
            f"{shape:9s} {args.links} links {args.size} B: "
            f"{rates[len(rates) // 2]:9.0f} datagrams/s in "
            f"[{rates[0]:.0f}-{rates[-1]:.0f}], {cpus[len(cpus) // 2]:.2f} us CPU each"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
