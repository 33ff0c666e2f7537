"""Sampling the relay's added delay in the pump thread, cheaply.

Each hot socket gets a `Sample`. A handler, right after a receive, runs one line::

    if now >= sample.due: sample.mark(now)

so at most one datagram per socket every `PERIOD_S` costs anything: an `ioctl(SIOCGSTAMPNS)`
that returns the kernel's receive timestamp (CLOCK_REALTIME) of the datagram just read, compared
with the realtime clock now. A first ioctl when the socket is watched turns receive timestamps
on for it (SOCK_TIMESTAMP: the kernel stamps, `recvmsg` gets no extra control message, so the
server's IP_PKTINFO parsing is unaffected; SO_TIMESTAMPNS would add one).

A sample above STALL_S (engarde.core.latency) is explained, at most once per EXPLAIN_EVERY_S:

- a GC pass that overlapped the wait (`gc.callbacks`, timed in whichever thread ran it);
- otherwise what the trio thread (the control plane) is executing when the pump gets the GIL
  back: the innermost frame and the innermost engarde frame (`sys._current_frames`); "idle when
  the pump resumed" means it had finished (or never held the GIL: see the split);
- the schedstat of our threads (/proc/self/task/*/schedstat, read every TICK_S by a pump timer,
  ~50 us, and again at the stall) splits the wait into `cpu_wait` (one of our threads runnable
  but not running: other processes had the CPUs, the machine was busy) and
  `blocked` (the rest, less the pump's own running time: waiting for a GIL that a running
  control plane held). Both are estimates over the window since the last tick, clipped to the
  stall; `blocked` is the part the relay's own design answers for.

Handlers built without a sampler get `NEVER`, whose `due` is infinite: the line costs a compare.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any

from engarde.core.latency import DelayRecorder, Stall

logger = logging.getLogger(__name__)

SIOCGSTAMPNS = 0x8907  # <asm-generic/sockios.h>: struct timespec of the last datagram read
_TIMESPEC = struct.Struct("@qq")
_EMPTY = bytes(_TIMESPEC.size)
PERIOD_S = 0.01  # per socket: at most one sampled datagram this often
TICK_S = 0.02  # the pump reads its schedstat this often (the baseline of the split)
EXPLAIN_EVERY_S = 0.1  # at saturation every sample is "slow": explain at most this often
GC_KEPT = 32
GC_SHARE = 0.25  # a GC pass this big a part of a stall names it (a 0.3 ms gen0 pass does not)
RELIST_EVERY = 50  # ticks: our threads are listed again once a second


class Sample:
    """One hot socket's sampling state. Used only in the pump thread."""

    __slots__ = ("_fd", "_last_ns", "_sampler", "due", "what")

    def __init__(self, sampler: DelaySampler, sock: socket.socket, what: str) -> None:
        self._sampler = sampler
        self._fd = sock.fileno()
        self._last_ns = 0
        self.what = what
        self.due = 0.0
        # Timestamps on from now (SOCK_TIMESTAMP); nothing read yet, so ENOENT is the answer.
        with contextlib.suppress(OSError):
            fcntl.ioctl(self._fd, SIOCGSTAMPNS, _EMPTY)

    def mark(self, now: float) -> None:
        """The datagram just read: its kernel receive time against now."""
        self.due = now + PERIOD_S
        try:
            raw = fcntl.ioctl(self._fd, SIOCGSTAMPNS, _EMPTY)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: not stamped yet (timestamps just turned on)
                self.due = float("inf")  # this socket cannot tell: stop asking
            return
        sec, nsec = _TIMESPEC.unpack(raw)
        stamp_ns = sec * 1_000_000_000 + nsec
        if stamp_ns == self._last_ns:  # no new datagram since the last mark
            return
        self._last_ns = stamp_ns
        self._sampler.record((time.time_ns() - stamp_ns) / 1e9, self.what, now)


class _Never:
    """The sample of a handler nobody samples."""

    __slots__ = ()
    due = float("inf")

    def mark(self, now: float) -> None:
        pass


NEVER: Any = _Never()


class DelaySampler:
    """Feeds `recorder` from the pump thread. Build it in the trio thread (it remembers that
    thread as the control plane's); `tick` runs as a pump timer; `close` when done."""

    def __init__(self, recorder: DelayRecorder) -> None:
        self.recorder = recorder
        self._control_ident = threading.get_ident()
        self._gc_started = 0.0
        self._gc_running = -1  # the generation being collected, -1 if none
        self._gc_passes: deque[tuple[float, float, int]] = deque(maxlen=GC_KEPT)
        self._sched_fd = -1
        self._sched_tid = 0
        self._sched_last: tuple[float, int, int] | None = None  # see _schedstat
        self._task_fds: dict[int, int] = {}
        self._ticks = 0
        self._explained_at = -1e9
        self._explained_s = 0.0
        gc.callbacks.append(self._on_gc)

    def watch(self, sock: socket.socket, what: str) -> Sample:
        return Sample(self, sock, what)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._sched_fd >= 0:
            os.close(self._sched_fd)
            self._sched_fd = -1
        for fd in self._task_fds.values():
            os.close(fd)
        self._task_fds.clear()

    # ---- pump thread -------------------------------------------------------------------------

    def tick(self) -> None:
        """Pump timer: the schedstat baseline for the next stall's split."""
        self._ticks += 1
        if self._ticks % RELIST_EVERY == 1:
            self._relist_threads()
        self._sched_last = self._schedstat()

    def record(self, delay_s: float, what: str, now: float) -> None:
        if not self.recorder.add(delay_s):
            return
        if now - self._explained_at < EXPLAIN_EVERY_S and delay_s < 2 * self._explained_s:
            return  # explained one like it a moment ago (at saturation every sample is slow)
        self._explained_at = now
        self._explained_s = delay_s
        cpu_wait, blocked = self._split(delay_s)
        self.recorder.add_stall(
            Stall(now, delay_s, what, self._doing(now, delay_s), cpu_wait, blocked)
        )

    def _split(self, delay_s: float) -> tuple[float | None, float | None]:
        before, after = self._sched_last, self._schedstat()
        if before is None or after is None:
            return None, None
        self._sched_last = after
        running = (after[1] - before[1]) / 1e9
        # Waiting for a CPU: the pump itself, or any other thread of ours (the control plane,
        # the log writer) while it held the GIL the pump waited for: a busy machine.
        waiting = (after[2] - before[2]) / 1e9  # < 0 if a thread ended meanwhile
        cpu_wait = min(delay_s, max(0.0, waiting))
        running = min(delay_s - cpu_wait, running)
        return cpu_wait, max(0.0, delay_s - cpu_wait - running)

    def _schedstat(self) -> tuple[float, int, int] | None:
        """(monotonic, the pump's ns on a CPU, ns all our threads waited for one)."""
        tid = threading.get_native_id()
        if tid != self._sched_tid:  # first use in this thread (tests may run it elsewhere)
            if self._sched_fd >= 0:
                os.close(self._sched_fd)
                self._sched_fd = -1
            self._sched_tid = tid
            self._sched_last = None
            self._sched_fd = _open_schedstat(tid)
        pump = _read_schedstat(self._sched_fd)
        if pump is None:
            return None
        waited = 0
        for fd in self._task_fds.values():
            reading = _read_schedstat(fd)
            if reading is not None:
                waited += reading[1]
        return time.monotonic(), pump[0], waited

    def _relist_threads(self) -> None:
        """Keep a schedstat fd open per thread of ours (threads come and go: trio's workers)."""
        try:
            tids = {int(t) for t in os.listdir("/proc/self/task")}
        except OSError:
            tids = set()
        for tid in set(self._task_fds) - tids:
            os.close(self._task_fds.pop(tid))
        for tid in tids - set(self._task_fds):
            fd = _open_schedstat(tid)
            if fd >= 0:
                self._task_fds[tid] = fd

    def _doing(self, now: float, delay_s: float) -> str:
        start = now - delay_s
        passes = [p for p in list(self._gc_passes) if p[1] >= start - 0.001]
        if self._gc_running >= 0:
            return f"gc gen{self._gc_running} (running)"
        longest = max(passes, key=lambda p: p[1] - p[0], default=None)
        if longest is not None and longest[1] - longest[0] >= GC_SHARE * delay_s:
            return f"gc gen{longest[2]} ({(longest[1] - longest[0]) * 1000:.1f} ms)"
        frame = sys._current_frames().get(self._control_ident)
        if frame is None:
            return "unknown (control plane thread gone)"
        inner = _where(frame)
        own: Any = frame
        while own is not None and "/engarde/" not in own.f_code.co_filename:
            own = own.f_back
        if "_io_epoll" in inner:
            return "trio thread idle when the pump resumed"
        if own is None or own is frame:
            return f"trio thread in {inner}"
        return f"trio thread in {inner}, from {_where(own)}"

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.monotonic()
            self._gc_running = info["generation"]
        else:
            self._gc_passes.append((self._gc_started, time.monotonic(), info["generation"]))
            self._gc_running = -1


def _open_schedstat(tid: int) -> int:
    try:
        return os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _read_schedstat(fd: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable waiting for one) of a thread, or None."""
    if fd < 0:
        return None
    try:
        fields = os.pread(fd, 128, 0).split()
        return int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def _where(frame: Any) -> str:
    path = frame.f_code.co_filename
    short = path[path.rfind("/site-packages/") + 15 :] if "/site-packages/" in path else path
    if "/engarde/" in short:
        short = "engarde/" + short.rsplit("/engarde/", 1)[1]
    return f"{frame.f_code.co_name} ({short}:{frame.f_lineno})"
