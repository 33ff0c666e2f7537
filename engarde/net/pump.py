"""The pump: the data path's own thread, one level-triggered epoll over the hot sockets.

Why a thread: at moderate load every datagram is a wake-up, and a trio wake-up costs ~13 us of
CPU (an epoll_ctl pair and a scheduler pass, `python -m bench.wakeup_cost`) on top of the
~20 us of work per datagram. The pump keeps its sockets registered once in its own epoll and
blocks in `epoll_wait` with the GIL released: a wake-up is one system call. Trio keeps the
control plane (netlink, link supervisor, dashboard, signals) and talks to the pump only through
`call` / `call_soon`.

Ownership: everything the handlers touch (the fan-out, the server's client table, the relay
counters) is written only in the pump thread. Trio code that must change it (register an uplink,
close its socket) sends a function to run there with `await pump.call(fn)`. Readers on the trio
side (dashboard snapshots) read plain attributes and copy containers in one C-level step.

Handlers drain at most a batch per readiness report and return; epoll is level-triggered, so a
socket with more to read is reported again on the next pass and every socket gets its turn.
Before the pump thread starts and after it has stopped, `call` runs the function in the caller's
thread: the pump's state then has no other user.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from engarde.net import mmsg

logger = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[], None]

BATCH = 64  # at most this many datagrams per handler call: every socket gets its turn


class Batch:
    """How many datagrams a handler reads per call, adapted to the load.

    Draining until EAGAIN costs a failed `recv` plus a raised BlockingIOError (~2 us from
    Python, measured) per wake-up, which at moderate load is every datagram. epoll is
    level-triggered, so reading less is safe: a socket with more waiting is reported again
    (~1 us). So a quiet socket reads one datagram per call; one that had data every time for a
    few calls in a row reads 2, 4, ... up to BATCH; seeing EAGAIN starts over at one.
    """

    __slots__ = ("_streak", "limit")

    def __init__(self) -> None:
        self.limit = 1
        self._streak = 0

    def drained(self) -> None:
        """The handler saw EAGAIN: the socket is empty."""
        self.limit = 1
        self._streak = 0

    def read(self, got: int) -> None:
        """A batched read (one recvmmsg for up to `limit`) returned `got` datagrams.

        Full: read more next time. One: the socket is about as quiet as one datagram per
        wake-up, back to the plain calls. In between: keep the limit; the call cost the same
        whatever it returned, and dropping to one datagram per call would make a socket that is
        busy but not saturated swing between the batched and the plain path."""
        if got >= self.limit:
            self.filled()
        elif got <= 1:
            self.drained()

    def filled(self) -> None:
        """The handler read `limit` datagrams without seeing EAGAIN."""
        if self.limit > 1:
            self.limit = min(BATCH, self.limit * 2)
        else:
            self._streak += 1
            if self._streak >= 4:
                self.limit = 2


class Pump:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()  # orders `running` against queued calls
        self._running = False
        self._stopping = False
        self._timers: list[list[Any]] = []  # [due, period, fn]
        self._next_due = float("inf")
        self._receivers: dict[bool, mmsg.Receiver] = {}

    # ---- any thread ------------------------------------------------------------------------

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the pump thread soon (or now, here, if the pump is not running)."""
        with self._lock:
            if self._running:
                self._calls.append(fn)
                os.eventfd_write(self._wake, 1)
                return
        fn()

    def stop(self) -> None:
        self._stopping = True
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    # ---- trio side ---------------------------------------------------------------------------

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the pump thread and return its result (or raise its exception).

        Quick by contract, so it is shielded: a cancelled caller still waits for it (an uplink
        task closing its socket in a `finally` must know the pump let go of it first).
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome: list[Any] = []

        def job() -> None:
            try:
                outcome.append((True, fn()))
            except BaseException as exc:  # handed to the caller
                outcome.append((False, exc))
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        with self._lock:
            queued = self._running
            if queued:
                self._calls.append(job)
                os.eventfd_write(self._wake, 1)
        if queued:
            with trio.CancelScope(shield=True):
                await done.wait()
        else:
            job()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    # ---- pump thread (or any thread while the pump is not running) ---------------------------

    def register(self, sock: socket.socket, handler: Handler) -> None:
        """`handler()` runs whenever `sock` is readable; it must not block."""
        fd = sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = handler

    def unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._handlers.pop(fd, None) is not None and not self._epoll.closed:
            self._epoll.unregister(fd)

    def receiver(self, control: bool = False) -> mmsg.Receiver | None:
        """The receive slots the handlers of this pump share for recvmmsg (they run one at a
        time and are done with a batch when they return); with `control`, slots for
        IP_PKTINFO too. None when libc has no recvmmsg (logged once): plain calls only."""
        if not mmsg.AVAILABLE:
            mmsg.log_unavailable_once()
            return None
        found = self._receivers.get(control)
        if found is None:
            found = self._receivers[control] = mmsg.Receiver(control=control)
        return found

    def every(self, period_s: float, fn: Callable[[], None]) -> None:
        """Run `fn` in the pump thread every `period_s` seconds."""
        due = time.monotonic() + period_s
        self._timers.append([due, period_s, fn])
        self._next_due = min(self._next_due, due)

    def start(self) -> None:
        """From now on `call` queues for the pump thread (which `run` is about to become)."""
        with self._lock:
            self._running = True

    def run(self) -> None:
        """The pump thread's body: until `stop()`. An exception in a handler ends it."""
        self.start()
        try:
            self._loop()
        finally:
            self._run_leftovers()

    def _run_leftovers(self) -> None:
        """Calls queued before we stopped: their callers wait for them. `_running` turns false
        only with the queue empty, so no call is stranded between the two."""
        while True:
            with self._lock:
                if not self._calls:
                    self._running = False
                    return
                leftover = list(self._calls)
                self._calls.clear()
            for fn in leftover:
                try:
                    fn()
                except Exception:
                    logger.exception("error in a call run while the pump stopped")

    def close(self) -> None:
        if self._wake < 0:
            return
        self._epoll.close()
        os.close(self._wake)
        self._wake = -1

    def _loop(self) -> None:
        poll = self._epoll.poll
        handlers = self._handlers
        wake = self._wake
        calls = self._calls
        monotonic = time.monotonic
        timeout = -1.0
        while not self._stopping:
            if self._timers:
                now = monotonic()
                if now >= self._next_due:
                    self._run_timers(now)
                timeout = self._next_due - now
            for fd, _events in poll(timeout):
                handler = handlers.get(fd)
                if handler is not None:
                    handler()
                elif fd == wake:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(wake)
                    while calls:
                        calls.popleft()()

    def _run_timers(self, now: float) -> None:
        for timer in self._timers:
            if timer[0] <= now:
                timer[0] = now + timer[1]
                timer[2]()
        self._next_due = min(t[0] for t in self._timers)


async def run_pump(
    pump: Pump, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the pump thread inside the nursery: cancelling this task stops the thread (and
    waits for it); an exception in the pump thread is raised here."""

    async def stop_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            pump.stop()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_cancelled)
            pump.start()  # calls made from here on queue for the thread, none runs inline
            task_status.started()
            await trio.to_thread.run_sync(pump.run)
            nursery.cancel_scope.cancel()
    finally:
        pump._run_leftovers()  # no-op if the thread ran; if it never started, nobody waits forever
        pump.close()
