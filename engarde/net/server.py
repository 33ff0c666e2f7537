"""run_server: the server's nursery tree (see docs/architecture.md).

    run_server
    ├─ pump             the data path's thread (engarde.net.pump), one epoll over both sockets:
    │                     listen socket -> core (who is alive) -> upstream socket (WireGuard)
    │                     upstream socket -> every client address alive (non-blocking sends)
    │                     once a second: forget silent client addresses
    └─ dashboard        optional (webManager)

The client table (ServerCore) is written only in the pump thread; the dashboard reads snapshots.

On a wildcard listen address the listen socket reports each datagram's destination
(IP_PKTINFO), and replies to that client leave from the same address: a multi-homed server
answers from the address the client talks to, not whatever the routing table prefers.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import trio

from engarde.config import ServerConfig, parse_host_port
from engarde.core.server import ClientAddress, ServerCore
from engarde.core.wireguard import DATA, JUNK, message_type
from engarde.net.pump import Batch, Handler, Pump, run_pump
from engarde.net.ratelimit import LogLimiter
from engarde.net.ready import start_dashboard_and_report
from engarde.net.sockets import (
    PKTINFO_ANC_BYTES,
    RECV_BYTES,
    destination_of,
    is_wildcard,
    open_listen_socket,
    open_upstream_socket,
    reply_ancdata,
    resolve_udp,
)

logger = logging.getLogger(__name__)

EXPIRY_PERIOD_S = 1.0


async def run_server(
    config: ServerConfig, *, task_status: trio.TaskStatus[ServerCore] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the server until cancelled. Raises SocketSetupError at start-up."""
    core = ServerCore(config, now=time.monotonic())
    host, _ = parse_host_port(config.listenAddr, what="server.listenAddr")
    pktinfo = is_wildcard(host)
    dst = await resolve_udp(config.dstAddr, what="server.dstAddr")
    listen = open_listen_socket(config.listenAddr, what="server.listenAddr", pktinfo=pktinfo)
    with listen:
        upstream = open_upstream_socket(dst)
        with upstream:
            host, port = upstream.getsockname()[:2]
            core.upstream_local = f"{host}:{port}"
            pump = Pump()
            pump.register(listen, clients_handler(listen, upstream, core, pktinfo))
            pump.register(upstream, wireguard_handler(upstream, listen, core, pktinfo))
            pump.every(EXPIRY_PERIOD_S, expiry_handler(core))
            async with trio.open_nursery() as nursery:
                await nursery.start(run_pump, pump)
                await start_dashboard_and_report(
                    nursery,
                    core,
                    config,
                    logger,
                    f"server listening on {config.listenAddr}, "
                    f"relaying to WireGuard at {config.dstAddr}",
                    task_status,
                )


def clients_handler(
    listen: socket.socket, upstream: socket.socket, core: ServerCore, pktinfo: bool
) -> Handler:
    """Client copies -> WireGuard, up to a batch per call, in the pump thread."""
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    buffers = [buf]
    recvmsg = listen.recvmsg_into
    recvfrom = listen.recvfrom_into
    send_up = upstream.send
    clients = core.clients
    stats = core.stats
    strict = core.strict
    log = LogLimiter(logger, per_s=5.0)
    monotonic = time.monotonic

    batch = Batch()

    def drain() -> None:
        local: bytes | None = None
        now = monotonic()
        for _ in range(batch.limit):
            try:
                if pktinfo:
                    n, anc, _flags, src = recvmsg(buffers, PKTINFO_ANC_BYTES)
                else:
                    n, src = recvfrom(buf)
            except BlockingIOError:
                batch.drained()
                break
            except OSError:  # nothing known raises here; count it rather than stop the relay
                stats.recv_errors += 1
                continue
            kind = message_type(view, n) if strict else DATA
            if kind == JUNK:  # checked first: a flood of junk costs as little as possible
                if n == 0:
                    stats.empty_datagrams += 1
                else:
                    stats.junk_datagrams += 1
                continue
            if pktinfo:
                local = destination_of(anc)
            entry = clients.get(src)
            if entry is None:
                entry = core.seen(src, local, kind, view, now)
                if entry is None:
                    continue
            else:
                core.touch(entry, local, now)
            entry.rx_datagrams += 1
            entry.rx_bytes += n
            stats.clients_rx_datagrams += 1
            stats.clients_rx_bytes += n
            try:
                send_up(view[:n])
                stats.wg_tx_datagrams += 1
                stats.wg_tx_bytes += n
            except BlockingIOError:
                stats.wg_tx_dropped_full += 1
            except OSError:  # ECONNREFUSED: WireGuard is not listening (yet)
                stats.wg_tx_errors += 1
        else:
            batch.filled()
        if core.has_log:
            _log_core(core, log, now)

    return drain


def _log_core(core: ServerCore, log: LogLimiter, now: float) -> None:
    for line in core.take_log():
        log.info(now, line)


def wireguard_handler(
    upstream: socket.socket, listen: socket.socket, core: ServerCore, pktinfo: bool
) -> Handler:
    """WireGuard's replies -> every client address alive, up to a batch per call, in the pump
    thread. A send that would block is dropped
    and counted for that address; a send that fails drops the address (it comes back with its
    next datagram), without affecting the others."""
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    recv = upstream.recv_into
    sendto = listen.sendto
    sendmsg = listen.sendmsg
    clients = core.clients
    pending = core.pending
    stats = core.stats
    strict = core.strict
    ancillary: dict[bytes, list[tuple[int, int, bytes]]] = {}
    failed: list[tuple[ClientAddress, int | None]] = []
    monotonic = time.monotonic

    batch = Batch()

    def drain() -> None:
        cutoff = core.alive_cutoff(monotonic())
        for _ in range(batch.limit):
            try:
                n = recv(buf)
            except BlockingIOError:
                batch.drained()
                break
            except OSError:  # ECONNREFUSED from an earlier send while WireGuard was down
                stats.recv_errors += 1
                continue
            if n == 0:
                stats.empty_datagrams += 1
                continue
            stats.wg_rx_datagrams += 1
            stats.wg_rx_bytes += n
            data = view[:n]
            kind = message_type(view, n) if strict else DATA
            if kind != DATA:
                core.learn_local(kind, view)
            targets = (clients, pending) if kind != DATA and pending else (clients,)
            for table in targets:
                for entry in table.values():
                    if entry.last_seen < cutoff:
                        continue
                    try:
                        if pktinfo and entry.local_raw is not None:
                            anc = ancillary.get(entry.local_raw)
                            if anc is None:
                                anc = ancillary[entry.local_raw] = reply_ancdata(entry.local_raw)
                            sendmsg([data], anc, 0, entry.address)
                        else:
                            sendto(data, entry.address)
                        entry.tx_datagrams += 1
                        entry.tx_bytes += n
                    except BlockingIOError:
                        entry.tx_dropped_full += 1
                    except OSError as exc:
                        entry.tx_errors += 1
                        failed.append((entry, exc.errno))
            if failed:
                for entry, err in failed:
                    line = core.drop(entry.address, err)
                    if line:
                        logger.warning("%s", line)
                failed.clear()
        else:
            batch.filled()

    return drain


def expiry_handler(core: ServerCore) -> Callable[[], None]:
    """Once a second, in the pump thread: forget silent client addresses."""

    def expire() -> None:
        for line in core.expire(time.monotonic()):
            logger.info("%s", line)

    return expire
