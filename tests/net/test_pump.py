"""The pump thread, on loopback sockets: handlers, calls from trio, timers, stop, errors."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import trio

from engarde.net.pump import BATCH, Batch, Pump, run_pump


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield rx, tx
    rx.close()
    tx.close()


async def test_handler_runs_in_the_pump_thread_and_reads_everything(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    got: list[bytes] = []
    threads: set[int] = set()
    pump = Pump()
    token = trio.lowlevel.current_trio_token()
    all_in = trio.Event()

    def handler() -> None:
        threads.add(threading.get_ident())
        while True:
            try:
                got.append(rx.recv(100))
            except BlockingIOError:
                break
        if len(got) == 300:
            token.run_sync_soon(all_in.set)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_pump, pump)
        await pump.call(lambda: pump.register(rx, handler))
        for i in range(300):
            tx.send(b"%d" % i)
        with trio.fail_after(10):
            await all_in.wait()
        assert await pump.call(threading.get_ident) in threads
        nursery.cancel_scope.cancel()
    assert got == [b"%d" % i for i in range(300)]
    assert threading.get_ident() not in threads


async def test_call_returns_and_raises_and_runs_inline_when_stopped() -> None:
    pump = Pump()
    assert await pump.call(lambda: 41 + 1) == 42  # not started: runs here
    async with trio.open_nursery() as nursery:
        await nursery.start(run_pump, pump)
        assert await pump.call(lambda: "in the pump") == "in the pump"
        with pytest.raises(ZeroDivisionError):
            await pump.call(lambda: 1 // 0)
        nursery.cancel_scope.cancel()
    assert await pump.call(threading.get_ident) == threading.get_ident()  # stopped: here again


async def test_timer_fires_repeatedly() -> None:
    pump = Pump()
    ticks: list[int] = []
    token = trio.lowlevel.current_trio_token()
    fifth = trio.Event()

    def tick() -> None:
        ticks.append(1)
        if len(ticks) == 5:
            token.run_sync_soon(fifth.set)

    pump.every(0.02, tick)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_pump, pump)
        with trio.fail_after(10):
            await fifth.wait()
        nursery.cancel_scope.cancel()
    assert len(ticks) >= 5


async def test_an_exception_in_a_handler_reaches_the_nursery(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    pump = Pump()

    def handler() -> None:
        raise RuntimeError("bug in a handler")

    pump.register(rx, handler)
    caught: list[BaseException] = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(run_pump, pump)
                tx.send(b"x")
                await trio.sleep_forever()
    except* RuntimeError as group:
        caught.extend(leaves(group))
    assert [str(e) for e in caught] == ["bug in a handler"]


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def test_batch_reads_one_when_quiet_and_grows_when_busy() -> None:
    batch = Batch()
    assert batch.limit == 1
    for _ in range(3):
        batch.filled()
    assert batch.limit == 1  # a few lone datagrams are not "busy"
    batch.filled()
    assert batch.limit == 2
    for _ in range(10):
        batch.filled()
    assert batch.limit == BATCH
    batch.drained()
    assert batch.limit == 1


def test_a_batched_read_keeps_its_limit_unless_full_or_down_to_one() -> None:
    batch = Batch()
    for _ in range(6):
        batch.filled()
    assert batch.limit == 8
    batch.read(8)
    assert batch.limit == 16  # full: more
    batch.read(5)
    assert batch.limit == 16  # short but busy: stays batched
    batch.read(1)
    assert batch.limit == 1  # as quiet as one per wake-up: the plain calls again
