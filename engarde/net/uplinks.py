"""The link supervisor and the per-path tasks of the client.

A path is one source address of one usable interface (core/client.py): one socket. The
supervisor owns the running paths: it diffs `core.wanted()` against them whenever the core says
something changed (a wake-up on a channel of capacity 1, so bursts of netlink events coalesce),
cancels the ones no longer wanted or whose plan changed (new destination), and starts the
missing ones. A path whose socket cannot be made, or whose socket fails, is retried with backoff.

Each path task owns its socket: it hands it to the pump (engarde.net.pump), which registers it
in the `Fanout` (the tuple every datagram from WireGuard is copied through) and reads the server's
replies from it (server -> WireGuard). On the way out - cancelled, or told by the pump that the
socket failed - the task has the pump let go of the socket, then closes it.

The two handlers at the bottom are the client's data path; they run in the pump thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from engarde.core.addr import format_address
from engarde.core.client import ClientCore, PathKey, UplinkPlan
from engarde.core.copies import LinkQuality
from engarde.core.stats import LinkStats
from engarde.net import mmsg
from engarde.net.latency import NEVER, DelaySampler
from engarde.net.pump import Batch, Handler, Pump
from engarde.net.ratelimit import LogLimiter
from engarde.net.sockets import (
    RECV_BYTES,
    SocketSetupError,
    describe_os_error,
    open_uplink_socket,
    resolve_udp,
)

logger = logging.getLogger(__name__)

RETRY_FIRST_S = 0.05  # then doubling: 0.1, 0.2, ... up to RETRY_MAX_S
RETRY_MAX_S = 10.0
RETIRE_LINGER_S = 1.0  # a replaced socket (new destination) is still read this long
PEER_LOG_PER_S = 0.2  # "WireGuard moved" lines: a burst of 5, then one every 5 s at most
PEER_LOG_BURST = 5.0

# (bound sendto, destination, the path's counters): what the WireGuard-side loop needs per copy.
Target = tuple[Callable[[Any, Any], int], tuple[Any, ...], LinkStats]
# (socket fd, header array towards the destination): the same copies, a batch per system call.
BatchOut = tuple[int, "mmsg.Messages"]


class Fanout:
    """The paths every datagram from WireGuard is copied to. Used only in the pump thread.

    A path may also bring a batched sender (its socket's fd and an `mmsg.Messages` array
    towards its destination, built on the Fanout's one `iovecs`): a busy WireGuard socket's
    batch is then pointed at once and sent with one sendmmsg per path."""

    def __init__(self) -> None:
        self._by_key: dict[PathKey, tuple[Target, BatchOut | None]] = {}
        self.targets: tuple[Target, ...] = ()
        self.batched: tuple[tuple[Target, BatchOut | None], ...] = ()
        self.iovecs = mmsg.Iovecs() if mmsg.AVAILABLE else None

    def add(self, key: PathKey, target: Target, out: BatchOut | None = None) -> None:
        self._by_key[key] = (target, out)
        self._changed()

    def remove(self, key: PathKey, target: Target) -> bool:
        """Remove `target` if it is still the one registered for `key` (True if it was).

        On a plan change the new path task registers its socket before the cancelled old task
        gets to clean up: the old task must not remove the new socket.
        """
        found = self._by_key.get(key)
        if found is not None and found[0] is target:
            del self._by_key[key]
            self._changed()
            return True
        return False

    def batch_out(self, sock: socket.socket, dst: tuple[Any, ...]) -> BatchOut | None:
        """A batched sender from `sock` to `dst` on this Fanout's iovecs (None without mmsg)."""
        if self.iovecs is None:
            return None
        return sock.fileno(), mmsg.Messages(
            self.iovecs, name=mmsg.sockaddr_of(dst), segment=True
        )

    def _changed(self) -> None:
        self.batched = tuple(self._by_key.values())
        self.targets = tuple(target for target, _ in self.batched)


def wake_channel() -> tuple[Callable[[], None], trio.MemoryReceiveChannel[None]]:
    """A coalescing wake-up: any number of pokes before the receiver runs count as one."""
    send, receive = trio.open_memory_channel[None](1)

    def poke() -> None:
        with contextlib.suppress(trio.WouldBlock):
            send.send_nowait(None)

    return poke, receive


@dataclass
class _Running:
    plan: UplinkPlan
    scope: trio.CancelScope
    started_at: float
    ended: bool = False
    replaces: _Running | None = None  # same path, old plan: retired once this one attached
    dst: tuple[Any, ...] | None = None  # the address its socket sends to, once resolved


def _moved(core: ClientCore, link: _Running) -> bool:
    """The path's host name now resolves elsewhere (the resolver told the core)."""
    if link.dst is None:
        return False
    now_at = core.destination(link.plan)
    return now_at is not None and now_at != link.dst


@dataclass
class _Retry:
    plan: UplinkPlan
    at: float
    backoff_s: float


async def run_link_supervisor(
    core: ClientCore,
    pump: Pump,
    fanout: Fanout,
    wg_sock: socket.socket,
    wakeups: trio.MemoryReceiveChannel[None],
    poke: Callable[[], None],
    *,
    sampler: DelaySampler | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start, stop and retry path tasks so that they match `core.wanted()`. Runs forever."""
    running: dict[PathKey, _Running] = {}
    retries: dict[PathKey, _Retry] = {}
    uplink = _Uplink(core, pump, fanout, wg_sock, sampler)

    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            for line in core.take_transitions():  # one line per interface that changed
                logger.info("%s", line)
            now = time.monotonic()
            wanted = core.wanted()
            for key, link in list(running.items()):
                if link.ended:
                    del running[key]
                    # A path that ran a while before failing starts its backoff afresh.
                    last = retries.get(key)
                    backoff = RETRY_FIRST_S
                    if last is not None and now - link.started_at < RETRY_MAX_S:
                        backoff = min(RETRY_MAX_S, last.backoff_s * 2)
                    retries[key] = _Retry(link.plan, now + backoff, backoff)
                elif wanted.get(key) != link.plan or _moved(core, link):
                    del running[key]
                    plan = wanted.get(key)
                    if plan is None:
                        link.scope.cancel()
                    else:  # same path, new destination: the new socket first, then the old goes
                        successor = running[key] = _Running(plan, trio.CancelScope(), now)
                        successor.replaces = link
                        nursery.start_soon(_run_uplink_task, uplink, plan, successor, poke)
            for key, retry in list(retries.items()):
                if wanted.get(key) != retry.plan:
                    del retries[key]  # gone, or a new plan (new destination): try that at once
            for key, plan in wanted.items():
                pending = retries.get(key)
                if key in running or (pending is not None and pending.at > now):
                    continue
                link = running[key] = _Running(plan, trio.CancelScope(), now)
                nursery.start_soon(_run_uplink_task, uplink, plan, link, poke)
            next_retry = min((r.at for r in retries.values() if r.at > now), default=None)
            timeout = float("inf") if next_retry is None else next_retry - now
            with trio.move_on_after(timeout):
                await wakeups.receive()


@dataclass
class _Uplink:
    """What every uplink task needs besides its plan."""

    core: ClientCore
    pump: Pump
    fanout: Fanout
    wg_sock: socket.socket
    sampler: DelaySampler | None = None


async def _run_uplink_task(
    uplink: _Uplink, plan: UplinkPlan, entry: _Running, poke: Callable[[], None]
) -> None:
    def retire_predecessor(linger_s: float = 0.0) -> None:
        """The old socket of this path is out of the fan-out (this one took its place); it
        is still read for `linger_s`, so that replies already on their way are not lost."""
        old = entry.replaces
        if old is not None:
            entry.replaces = None
            if linger_s:
                old.scope.deadline = min(old.scope.deadline, trio.current_time() + linger_s)
            else:
                old.scope.cancel()

    def resolved(dst: tuple[Any, ...]) -> None:
        entry.dst = dst

    try:
        with entry.scope:
            await run_uplink(
                uplink,
                plan,
                on_attached=lambda: retire_predecessor(RETIRE_LINGER_S),
                on_resolved=resolved,
            )
    finally:
        retire_predecessor()  # failed before attaching: the old plan's socket goes anyway
        if not entry.scope.cancel_called:
            entry.ended = True
            poke()


async def run_uplink(
    uplink: _Uplink,
    plan: UplinkPlan,
    on_attached: Callable[[], None] = lambda: None,
    on_resolved: Callable[[tuple[Any, ...]], None] = lambda dst: None,
) -> None:
    """One path: make its socket, carry copies until cancelled or the socket fails.
    `on_attached` runs once the socket carries copies (the pump took it); `on_resolved` gets
    the address it sends to. A host name the core knows an address for (the resolver task, or
    another path) is not resolved again here: every path of a name sends to one address.

    Returns (after logging a WARNING and telling the core) when the socket cannot be made or
    fails; the supervisor retries later. Cancellation is the normal way out.
    """
    core, pump, fanout = uplink.core, uplink.pump, uplink.fanout
    try:
        dst = core.destination(plan)
        if dst is None:
            found = await resolve_udp(plan.dst, what=f"dstAddr for {plan.name}", family=plan.family)
            dst = core.adopt_destination(plan, found)
        on_resolved(dst)
        sock = open_uplink_socket(plan.name, plan.source_ip, core.port_hint(plan))
    except SocketSetupError as exc:
        news = core.link_failed(plan, exc.errno_name or str(exc), time.monotonic())
        logger.log(logging.WARNING if news else logging.DEBUG, "%s; will retry", exc)
        return
    path = core.path_for(plan)
    stats, quality = path.stats, path.quality
    target: Target = (sock.sendto, dst, stats)
    port = sock.getsockname()[1]
    token = trio.lowlevel.current_trio_token()
    failure = trio.Event()
    failed: list[OSError] = []

    def detach() -> None:  # in the pump thread
        pump.unregister(sock)
        if fanout.remove(plan.key, target):
            core.link_stopped(quality, time.monotonic())

    def on_error(exc: OSError) -> None:  # in the pump thread, from the handler
        detach()
        failed.append(exc)
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(failure.set)

    sample = NEVER if uplink.sampler is None else uplink.sampler.watch(sock, plan.name)
    handler = uplink_handler(
        sock, dst, stats, quality, core, uplink.wg_sock, on_error, pump.receiver(), sample=sample
    )
    out = fanout.batch_out(sock, dst)

    def attach() -> None:  # in the pump thread
        pump.register(sock, handler)
        fanout.add(plan.key, target, out)
        core.link_carrying(quality, time.monotonic())

    try:
        shown_dst = format_address(dst)
        core.link_opened(plan, port, shown_dst, time.monotonic())
        logger.debug(
            "%s: socket %s -> %s", plan.name, format_address((plan.source_ip, port)), shown_dst
        )
        await pump.call(attach)
        on_attached()
        await failure.wait()
        error = failed[0]
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        news = core.link_failed(plan, name, time.monotonic())
        logger.log(
            logging.WARNING if news else logging.DEBUG,
            "%s: uplink socket failed: %s; will retry",
            plan.name,
            describe_os_error(error),
        )
    finally:
        try:
            await pump.call(detach)  # shielded: the pump lets go of the socket before it closes
        finally:
            sock.close()
            core.link_closed(plan, port, time.monotonic())


_DATA_HEADER = struct.Struct("<IQ")  # receiver index, counter: at byte 4 of transport data
_NOT_RESERVED = b"\0\0\0"


def uplink_handler(
    sock: socket.socket,
    server: tuple[Any, ...],
    stats: LinkStats,
    quality: LinkQuality,
    core: ClientCore,
    wg_sock: socket.socket,
    on_error: Callable[[OSError], None],
    receiver: mmsg.Receiver | None = None,
    sample: Any = NEVER,
) -> Handler:
    """Server -> WireGuard for one uplink: drains up to a batch per call, in the pump thread.

    `server` is the address exactly as the socket reports sources (an (ip, port) pair, or the
    IPv6 4-tuple), so a source compares with it as it is. A receive error other than "nothing
    more" ends the path: `on_error`. Every transport-data copy goes through the core's copy
    tracker (per-path quality); an exact copy of one already handed to WireGuard is dropped
    unless `dedup: false` (read per batch: a reload may change it).

    With a `receiver` (the pump's shared recvmmsg slots), a busy socket (Batch limit > 1) is
    read with one recvmmsg and what goes on to WireGuard leaves with one sendmmsg; `accept`
    decides per datagram on both paths, so the counters are the same either way.
    """
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    recv = sock.recvfrom_into
    send_to_wg = wg_sock.sendto
    relay = core.stats
    see = core.tracker.see
    header = _DATA_HEADER.unpack_from
    monotonic = time.monotonic
    server_raw = mmsg.sockaddr_of(server) if receiver is not None else b""
    iovecs = mmsg.Iovecs() if receiver is not None else None
    to_wg: list[Any] = [None, None]  # WireGuard's address and the header array towards it

    batch = Batch()

    def accept(data: bytearray | memoryview, n: int, now: float, dedup: bool) -> bool:
        """One datagram from the server (source already checked): counted; True if it goes
        on to WireGuard (not empty, not a duplicate)."""
        if n == 0:
            relay.empty_datagrams += 1
            return False
        stats.rx_datagrams += 1
        stats.rx_bytes += n
        # Transport data (type 4, reserved bytes zero, at least 32 bytes): one of N copies.
        if data[0] == 4 and n >= 32 and not (data[1] or data[2] or data[3]):
            index, counter = header(data, 4)
            if not see(index, counter, bytes(data[n - 16 : n]), quality, now) and dedup:
                relay.duplicates_dropped += 1
                return False
        if core.wg_peer is None:
            stats.rx_no_peer += 1
            return False
        return True

    def drain() -> None:
        now = monotonic()
        if receiver is not None and batch.limit > 1:
            drain_batch(now)
            return
        accepted = False
        check_source = core.drop_foreign
        dedup = core.dedup
        for _ in range(batch.limit):
            try:
                n, src = recv(buf)
            except BlockingIOError:
                batch.drained()
                break
            except OSError as exc:
                on_error(exc)
                break
            if now >= sample.due:  # the relay's added delay, sampled (net/latency.py)
                sample.mark(now)
            if check_source and src != server:
                stats.rx_foreign += 1
                continue
            if not accept(buf, n, now, dedup):
                accepted = accepted or n > 0
                continue
            accepted = True
            try:
                send_to_wg(view[:n], core.wg_peer)  # type: ignore[arg-type]
                relay.wg_tx_datagrams += 1
                relay.wg_tx_bytes += n
            except BlockingIOError:
                stats.rx_dropped_full += 1
            except OSError:
                relay.wg_tx_errors += 1
        else:
            batch.filled()
        if accepted:
            stats.last_rx = now  # once per batch, not per datagram

    def drain_batch(now: float) -> None:
        assert receiver is not None and iovecs is not None
        limit = batch.limit
        try:
            k = receiver.recv(sock.fileno(), limit)
        except BlockingIOError:
            batch.drained()
            return
        except OSError as exc:
            on_error(exc)
            return
        if now >= sample.due:  # the batch's last datagram (net/latency.py)
            sample.mark(now)
        check_source = core.drop_foreign
        dedup = core.dedup
        point, size, data_of, address = iovecs.point, receiver.size, receiver.data, receiver.address
        going = 0
        total = 0
        accepted = False
        for i in range(k):
            n = size(i)
            if check_source and receiver.source_raw(i) != server_raw:
                stats.rx_foreign += 1
                continue
            accepted = accepted or n > 0
            if accept(data_of(i, n), n, now, dedup):
                point(going, address(i), n)
                going += 1
                total += n
        if going:
            peer = core.wg_peer
            if peer is not None and peer != to_wg[0]:
                to_wg[0], to_wg[1] = peer, mmsg.Messages(
                    iovecs, name=mmsg.sockaddr_of(peer), segment=True
                )
            messages = to_wg[1]
            sent, full, failed = messages.send_all(wg_sock.fileno(), going)
            relay.wg_tx_datagrams += sent
            if sent < going:
                total = messages.sent_bytes()
                stats.rx_dropped_full += full
                relay.wg_tx_errors += failed
            relay.wg_tx_bytes += total
        batch.read(k)
        if accepted:
            stats.last_rx = now

    return drain


def wireguard_handler(
    wg_sock: socket.socket,
    core: ClientCore,
    fanout: Fanout,
    receiver: mmsg.Receiver | None = None,
    sample: Any = NEVER,
) -> Handler:
    """WireGuard -> every uplink, up to a batch per call, in the pump thread. A copy that cannot
    be queued at once is dropped and counted for that link: a stalled link never delays the
    others.

    With a `receiver` and a busy socket (Batch limit > 1): one recvmmsg, the batch pointed at
    once in the Fanout's iovecs, then one sendmmsg per path (the same iovecs for every path),
    counters per batch. A path whose sendmmsg stops early gets the rest counted as dropped
    (full) or failed, for that path only."""
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    recv = wg_sock.recvfrom_into
    relay = core.stats
    peer_log = LogLimiter(logger, per_s=PEER_LOG_PER_S, burst=PEER_LOG_BURST)
    peer_raw: list[Any] = [None, b""]  # WireGuard's address, and as raw sockaddr bytes
    monotonic = time.monotonic

    batch = Batch()

    def note_source(src: tuple[Any, ...]) -> None:
        if src != core.wg_peer:  # any local sender can do this: counted, log rate-limited
            peer_log.info(time.monotonic(), core.on_wireguard_source(src))

    def drain() -> None:
        now = monotonic()
        if receiver is not None and fanout.iovecs is not None and batch.limit > 1:
            drain_batch(now)
            return
        for _ in range(batch.limit):
            try:
                n, src = recv(buf)
            except BlockingIOError:
                batch.drained()
                return
            except OSError:  # nothing known raises here; count it rather than stop the relay
                relay.recv_errors += 1
                continue
            if now >= sample.due:  # the relay's added delay, sampled (net/latency.py)
                sample.mark(now)
            note_source(src)
            if n == 0:
                relay.empty_datagrams += 1
                continue
            relay.wg_rx_datagrams += 1
            relay.wg_rx_bytes += n
            targets = fanout.targets
            if not targets:
                relay.no_uplink_drops += 1
                continue
            data = view[:n]
            for sendto, dst, stats in targets:
                try:
                    sendto(data, dst)
                    stats.tx_datagrams += 1
                    stats.tx_bytes += n
                except BlockingIOError:
                    stats.tx_dropped_full += 1
                except OSError as exc:
                    stats.tx_errors += 1
                    stats.last_tx_errno = exc.errno
        batch.filled()

    def drain_batch(now: float) -> None:
        assert receiver is not None and fanout.iovecs is not None
        limit = batch.limit
        try:
            k = receiver.recv(wg_sock.fileno(), limit)
        except BlockingIOError:
            batch.drained()
            return
        except OSError:
            relay.recv_errors += 1
            return
        if now >= sample.due:  # the batch's last datagram (net/latency.py)
            sample.mark(now)
        iovecs = fanout.iovecs
        point, size, address = iovecs.point, receiver.size, receiver.address
        source_raw = receiver.source_raw
        going = 0
        total = 0
        for i in range(k):
            n = size(i)
            if source_raw(i) != peer_raw[1] or core.wg_peer != peer_raw[0]:
                note_source(receiver.source(i))
                peer_raw[0] = core.wg_peer
                peer_raw[1] = receiver.source_raw(i)
            if n == 0:
                relay.empty_datagrams += 1
                continue
            point(going, address(i), n)
            going += 1
            total += n
        batch.read(k)
        if not going:
            return
        relay.wg_rx_datagrams += going
        relay.wg_rx_bytes += total
        batched = fanout.batched
        if not batched:
            relay.no_uplink_drops += going
            return
        for (sendto, dst, stats), out in batched:
            if out is None:  # no batched sender for this path: one sendto per copy
                _send_each(receiver, iovecs, going, sendto, dst, stats)
                continue
            messages = out[1]
            sent, full, failed = messages.send_all(out[0], going)
            stats.tx_datagrams += sent
            if sent == going:
                stats.tx_bytes += total
                continue
            stats.tx_bytes += messages.sent_bytes()
            stats.tx_dropped_full += full
            if failed:
                stats.tx_errors += failed
                failures = messages.failures
                stats.last_tx_errno = failures[-1][1] if failures else messages.last_errno

    return drain


def _send_each(
    receiver: mmsg.Receiver,
    iovecs: mmsg.Iovecs,
    count: int,
    sendto: Callable[[Any, Any], int],
    dst: tuple[Any, ...],
    stats: LinkStats,
) -> None:
    """The pointed batch, one sendto per datagram (a path without a batched sender)."""
    base, q = receiver.base, iovecs.q
    for j in range(count):
        start, n = q[2 * j] - base, q[2 * j + 1]
        try:
            sendto(receiver.view[start : start + n], dst)
            stats.tx_datagrams += 1
            stats.tx_bytes += n
        except BlockingIOError:
            stats.tx_dropped_full += 1
        except OSError as exc:
            stats.tx_errors += 1
            stats.last_tx_errno = exc.errno
