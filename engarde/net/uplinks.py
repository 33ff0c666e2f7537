"""The link supervisor and the per-uplink tasks of the client.

The supervisor owns the running uplinks: it diffs `core.wanted()` against them whenever the core
says something changed (a wake-up on a channel of capacity 1, so bursts of netlink events
coalesce), cancels the ones no longer wanted or whose plan changed (new address), and starts the
missing ones. A link whose socket cannot be made, or whose socket fails, is retried with backoff.

Each uplink task owns its socket: it hands it to the pump (engarde.net.pump), which registers it
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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from engarde.core.client import ClientCore, UplinkPlan
from engarde.core.stats import LinkStats
from engarde.net.pump import Batch, Handler, Pump
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

# (bound sendto, destination, the link's counters): what the WireGuard-side loop needs per copy.
Target = tuple[Callable[[Any, Any], int], tuple[str, int], LinkStats]


class Fanout:
    """The uplinks every datagram from WireGuard is copied to. Used only in the pump thread."""

    def __init__(self) -> None:
        self._by_index: dict[int, Target] = {}
        self.targets: tuple[Target, ...] = ()

    def add(self, index: int, target: Target) -> None:
        self._by_index[index] = target
        self.targets = tuple(self._by_index.values())

    def remove(self, index: int, target: Target) -> None:
        """Remove `target` if it is still the one registered for `index`.

        On an address change the new uplink task registers its socket before the cancelled
        old task gets to clean up: the old task must not remove the new socket.
        """
        if self._by_index.get(index) is target:
            del self._by_index[index]
            self.targets = tuple(self._by_index.values())


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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start, stop and retry uplink tasks so that they match `core.wanted()`. Runs forever."""
    running: dict[int, _Running] = {}
    retries: dict[int, _Retry] = {}
    uplink = _Uplink(core, pump, fanout, wg_sock)

    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            for line in core.take_transitions():  # one line per interface that changed
                logger.info("%s", line)
            now = time.monotonic()
            wanted = core.wanted()
            for index, link in list(running.items()):
                if link.ended:
                    del running[index]
                    # A link that ran a while before failing starts its backoff afresh.
                    last = retries.get(index)
                    backoff = RETRY_FIRST_S
                    if last is not None and now - link.started_at < RETRY_MAX_S:
                        backoff = min(RETRY_MAX_S, last.backoff_s * 2)
                    retries[index] = _Retry(link.plan, now + backoff, backoff)
                elif wanted.get(index) != link.plan:
                    link.scope.cancel()
                    del running[index]
            for index, retry in list(retries.items()):
                if wanted.get(index) != retry.plan:
                    del retries[index]  # gone, or a new plan (new address): try that at once
            for index, plan in wanted.items():
                pending = retries.get(index)
                if index in running or (pending is not None and pending.at > now):
                    continue
                link = running[index] = _Running(plan, trio.CancelScope(), now)
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


async def _run_uplink_task(
    uplink: _Uplink, plan: UplinkPlan, entry: _Running, poke: Callable[[], None]
) -> None:
    try:
        with entry.scope:
            await run_uplink(uplink, plan)
    finally:
        if not entry.scope.cancel_called:
            entry.ended = True
            poke()


async def run_uplink(uplink: _Uplink, plan: UplinkPlan) -> None:
    """One uplink: make its socket, carry copies until cancelled or the socket fails.

    Returns (after logging a WARNING and telling the core) when the socket cannot be made or
    fails; the supervisor retries later. Cancellation is the normal way out.
    """
    core, pump, fanout = uplink.core, uplink.pump, uplink.fanout
    try:
        dst = await resolve_udp(plan.dst, what=f"dstAddr for {plan.name}")
        sock = open_uplink_socket(plan.name, plan.source_ip, core.port_hint(plan))
    except SocketSetupError as exc:
        news = core.link_failed(plan.index, exc.errno_name or str(exc), time.monotonic())
        logger.log(logging.WARNING if news else logging.DEBUG, "%s; will retry", exc)
        return
    stats = core.stats_for(plan.index)
    target: Target = (sock.sendto, dst, stats)
    port = sock.getsockname()[1]
    token = trio.lowlevel.current_trio_token()
    failure = trio.Event()
    failed: list[OSError] = []

    def detach() -> None:  # in the pump thread
        pump.unregister(sock)
        fanout.remove(plan.index, target)

    def on_error(exc: OSError) -> None:  # in the pump thread, from the handler
        detach()
        failed.append(exc)
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(failure.set)

    handler = uplink_handler(sock, dst, stats, core, uplink.wg_sock, on_error)

    def attach() -> None:  # in the pump thread
        pump.register(sock, handler)
        fanout.add(plan.index, target)

    try:
        core.link_opened(plan, port, f"{dst[0]}:{dst[1]}", time.monotonic())
        logger.debug("%s: socket %s:%d -> %s:%d", plan.name, plan.source_ip, port, *dst)
        await pump.call(attach)
        await failure.wait()
        error = failed[0]
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        news = core.link_failed(plan.index, name, time.monotonic())
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
            core.link_closed(plan.index, port)


def uplink_handler(
    sock: socket.socket,
    server: tuple[str, int],
    stats: LinkStats,
    core: ClientCore,
    wg_sock: socket.socket,
    on_error: Callable[[OSError], None],
) -> Handler:
    """Server -> WireGuard for one uplink: drains up to a batch per call, in the pump thread.

    Uplinks send from IPv4 addresses only, so a source is an (ip, port) pair comparable with
    `server` as it is. A receive error other than "nothing more" ends the uplink: `on_error`.
    """
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    recv = sock.recvfrom_into
    send_to_wg = wg_sock.sendto
    relay = core.stats
    check_source = core.config.dropForeignSources
    monotonic = time.monotonic

    batch = Batch()

    def drain() -> None:
        accepted = 0
        for _ in range(batch.limit):
            try:
                n, src = recv(buf)
            except BlockingIOError:
                batch.drained()
                break
            except OSError as exc:
                on_error(exc)
                break
            if check_source and src != server:
                stats.rx_foreign += 1
                continue
            if n == 0:
                relay.empty_datagrams += 1
                continue
            accepted += 1
            stats.rx_datagrams += 1
            stats.rx_bytes += n
            peer = core.wg_peer
            if peer is None:
                stats.rx_no_peer += 1
                continue
            try:
                send_to_wg(view[:n], peer)
                relay.wg_tx_datagrams += 1
                relay.wg_tx_bytes += n
            except BlockingIOError:
                stats.rx_dropped_full += 1
            except OSError:
                relay.wg_tx_errors += 1
        else:
            batch.filled()
        if accepted:
            stats.last_rx = monotonic()  # once per batch, not per datagram

    return drain


def wireguard_handler(wg_sock: socket.socket, core: ClientCore, fanout: Fanout) -> Handler:
    """WireGuard -> every uplink, up to a batch per call, in the pump thread. A copy that cannot
    be queued at once is dropped and counted for that link: a stalled link never delays the
    others."""
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    recv = wg_sock.recvfrom_into
    relay = core.stats

    batch = Batch()

    def drain() -> None:
        for _ in range(batch.limit):
            try:
                n, src = recv(buf)
            except BlockingIOError:
                batch.drained()
                return
            except OSError:  # nothing known raises here; count it rather than stop the relay
                relay.recv_errors += 1
                continue
            if src != core.wg_peer:
                logger.info("%s", core.on_wireguard_source(src))
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

    return drain
