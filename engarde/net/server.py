"""run_server: the server's nursery tree (see docs/architecture.md).

    run_server
    ├─ pump             the data path's thread (engarde.net.pump), one epoll over:
    │                     the listen socket: client addresses -> core (which client? proven?
    │                       first copy?) -> that client's upstream socket (or the lobby, or the
    │                       address's probe) -> WireGuard
    │                     each upstream socket (lobby, one per client, probes): WireGuard ->
    │                       the live addresses of the client it is for (non-blocking sends)
    │                     every 0.25 s: settle copies; every 1 s: forget what went silent
    └─ dashboard        optional (webManager)

The core (ServerCore) decides; this module owns the sockets. Upstream sockets are opened in the
pump thread when the core routes a datagram through a route that has none yet (a new client, a
probe), registered in the pump's epoll there, and closed there when the core says so (a client
expired, merged or evicted; a probe no longer needed), so the core's tables and the sockets
change in one thread. At shutdown every upstream socket is closed after the pump stopped.

On a wildcard listen address the listen socket reports each datagram's destination
(IP_PKTINFO), and replies to that address leave from the same address: a multi-homed server
answers from the address the client talks to, not whatever the routing table prefers.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

import trio

from engarde.config import ServerConfig, parse_host_port
from engarde.core.peers import Client, ClientAddress, Route
from engarde.core.server import ServerCore
from engarde.core.wireguard import DATA, JUNK, message_type
from engarde.net import mmsg
from engarde.net.handover import Handover
from engarde.net.latency import NEVER, TICK_S, DelaySampler
from engarde.net.pump import Batch, Handler, Pump, run_pump
from engarde.net.ratelimit import LogLimiter
from engarde.net.ready import start_dashboard_and_report
from engarde.net.reload import Reloader, ReloadError
from engarde.net.sockets import (
    PKTINFO_ANC_BYTES,
    RECV_BYTES,
    SocketSetupError,
    destination_of,
    is_wildcard,
    open_listen_socket,
    open_upstream_socket,
    reply_ancdata,
    resolve_udp,
)

logger = logging.getLogger(__name__)

EXPIRY_PERIOD_S = 1.0
SWEEP_PERIOD_S = 0.25
PROBE_BUFFER_BYTES = 256 * 1024  # a probe carries one address's datagrams for a moment
RETIRE_AFTER_S = 3.0  # a replaced upstream socket (reload: WireGuard moved) is read this long

MAX_ANCILLARY = 256  # reply control messages kept, one per local address replies leave from

_DATA_HEADER = struct.Struct("<IQ")  # receiver index, counter: at byte 4 of transport data
_INDEX = struct.Struct("<I")  # the receiver index of what WireGuard sends, at byte 4
_NOT_RESERVED = b"\0\0\0"  # bytes 1-3 of every WireGuard message


async def run_server(
    config: ServerConfig,
    *,
    reloader: Reloader | None = None,
    handover: Handover | None = None,
    task_status: trio.TaskStatus[ServerCore] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until cancelled. Raises SocketSetupError (or HandoverError) at start-up.

    With a `handover`, the listen socket is shared with a predecessor serving the same address
    (engarde.net.handover): this process takes over from it once its relay runs.

    With a `reloader`, a reload applies new settings in the pump thread (the core's owner); a
    new dstAddr (WireGuard moved) gets every route a new upstream socket before the old one
    closes."""
    core = ServerCore(config, now=time.monotonic())
    host, _ = parse_host_port(config.listenAddr, what="server.listenAddr")
    pktinfo = is_wildcard(host)
    dst = await resolve_udp(config.dstAddr, what="server.dstAddr")
    if handover is None:
        listen = open_listen_socket(config.listenAddr, what="server.listenAddr", pktinfo=pktinfo)
    else:
        listen = await handover.open_listen_socket(
            config.listenAddr, what="server.listenAddr", pktinfo=pktinfo
        )
    with listen:
        first = open_upstream_socket(dst)  # fails early and clearly if WireGuard's side is odd
        host, port = first.getsockname()[:2]
        core.upstream_local = f"{host}:{port}"
        pump = Pump()
        sampler = DelaySampler(core.delay)
        relay = ServerRelay(core, pump, listen, dst, pktinfo, sampler)
        relay.adopt(core.everyone if core.everyone is not None else core.lobby, first)
        pump.register(listen, relay.clients_handler(sample=sampler.watch(listen, "clients")))
        pump.every(EXPIRY_PERIOD_S, relay.expire)
        pump.every(SWEEP_PERIOD_S, relay.sweep)
        pump.every(TICK_S, sampler.tick)
        if reloader is not None:

            async def apply(section: ServerConfig) -> None:
                dst = relay.dst
                if section.dstAddr != core.config.dstAddr:
                    try:
                        dst = await resolve_udp(section.dstAddr, what="server.dstAddr")
                    except SocketSetupError as exc:
                        raise ReloadError(str(exc)) from exc
                await pump.call(lambda: relay.apply_config(section, dst))

            reloader.attach(apply)
        try:
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
                    reloader,
                    handover,
                )
        finally:
            relay.close_all()
            sampler.close()


Ancillary = list[tuple[int, int, bytes]]


def remember_ancillary(cache: dict[bytes, Ancillary], local_raw: bytes) -> Ancillary:
    """The IP_PKTINFO control message that makes a reply leave from `local_raw`, kept in
    `cache`. Bounded: a host that owns many addresses (a routed prefix, AnyIP) can be sent to
    at any of them, so past MAX_ANCILLARY entries the oldest is forgotten (it is cheap to
    build again)."""
    if len(cache) >= MAX_ANCILLARY:
        del cache[next(iter(cache))]
    anc = cache[local_raw] = reply_ancdata(local_raw)
    return anc


class ServerRelay:
    """The server's sockets and handlers; everything here runs in the pump thread (or before
    it starts / after it stopped)."""

    def __init__(
        self,
        core: ServerCore,
        pump: Pump,
        listen: socket.socket,
        dst: tuple[Any, ...],
        pktinfo: bool,
        sampler: DelaySampler | None = None,
    ) -> None:
        self.core = core
        self.sampler = sampler
        self.pump = pump
        self.listen = listen
        self.dst = dst
        self.pktinfo = pktinfo
        self.log = LogLimiter(logger, per_s=5.0)
        self._open: dict[int, Route] = {}  # id(route) -> route, for close_all
        self._retired: list[tuple[socket.socket, float]] = []  # replaced upstream sockets
        self._ancillary: dict[bytes, Ancillary] = {}

    # ---- routes' sockets ------------------------------------------------------------------------

    def adopt(self, route: Route, sock: socket.socket) -> None:
        """`sock` is `route`'s upstream socket from now on: WireGuard's answers on it are read by
        a handler bound to the route."""
        route.upstream = sock
        sample = NEVER if self.sampler is None else self.sampler.watch(sock, "wireguard")
        self.pump.register(sock, self.wireguard_handler(route, sock, sample))
        self._open[id(route)] = route

    def open_route(self, route: Route) -> socket.socket | None:
        """Open and register `route`'s socket (a new client, a probe). None if it cannot be
        opened (counted; the datagram is dropped and the route tried again with the next)."""
        small = isinstance(route, ClientAddress)
        try:
            sock = open_upstream_socket(
                self.dst, buffer_bytes=PROBE_BUFFER_BYTES if small else None
            )
        except SocketSetupError as exc:
            self.core.route_failed(route)
            self.log.warning(time.monotonic(), f"cannot open an upstream socket: {exc}")
            return None
        self.adopt(route, sock)
        return sock

    def close_route(self, route: Route) -> None:
        sock = route.upstream
        route.upstream = None
        self._open.pop(id(route), None)
        if sock is not None:
            self.pump.unregister(sock)
            sock.close()

    def close_all(self) -> None:
        """Shutdown, after the pump stopped: close every upstream socket."""
        for route in list(self._open.values()):
            self.close_route(route)
        self._close_retired(float("inf"))

    def _close_retired(self, now: float) -> None:
        """Replaced upstream sockets close RETIRE_AFTER_S after their successor opened:
        WireGuard answers the old one until a datagram reaches it through the new one."""
        keep = []
        for sock, since in self._retired:
            if now - since >= RETIRE_AFTER_S:
                self.pump.unregister(sock)
                sock.close()
            else:
                keep.append((sock, since))
        self._retired = keep

    def after(self, now: float) -> None:
        """What the core asked for meanwhile: close sockets, log."""
        core = self.core
        for route in core.take_closing():
            self.close_route(route)
        for line in core.take_log():
            self.log.info(now, line)

    def apply_config(self, config: ServerConfig, dst: tuple[Any, ...]) -> None:
        """A reload, in the pump thread: the core's settings; a new WireGuard address gets every
        route a new upstream socket (opened first; the old one is still read for RETIRE_AFTER_S,
        as WireGuard answers it until a datagram reaches it through the new one; probes just
        close: the next datagram opens them again)."""
        now = time.monotonic()
        self.core.apply_config(config, now)
        if dst != self.dst:
            self.dst = dst
            for route in list(self._open.values()):
                if isinstance(route, ClientAddress):
                    self.close_route(route)
                    continue
                old = route.upstream
                try:
                    sock = open_upstream_socket(dst)
                except SocketSetupError as exc:
                    self.log.warning(now, f"reload: keeping the old upstream socket: {exc}")
                    continue
                self.adopt(route, sock)
                if old is not None:  # still read (its handler is the route's) a moment longer
                    self._retired.append((old, now))
            logger.info("WireGuard now at %s: %d upstream sockets moved", config.dstAddr,
                        len(self._open))  # fmt: skip
        self.after(now)

    # ---- timers ----------------------------------------------------------------------------------

    def expire(self) -> None:
        now = time.monotonic()
        for line in self.core.expire(now):
            logger.info("%s", line)
        if self._retired:
            self._close_retired(now)
        self.after(now)

    def sweep(self) -> None:
        self.core.sweep(time.monotonic())

    # ---- client addresses -> WireGuard ----------------------------------------------------------

    def clients_handler(self, sample: Any = NEVER) -> Handler:
        """Client copies -> WireGuard, up to a batch per call.

        The hot path, taken inline: a proven address sending transport data of its own client's
        sessions (the tracker says whether it is a first copy). Everything else asks the core.
        `route_of` decides per datagram for both ways of reading: one datagram per system call,
        or (a busy socket, Batch limit > 1) one recvmmsg, then one sendmmsg per upstream socket.
        """
        core = self.core
        listen = self.listen
        pktinfo = self.pktinfo
        buf = bytearray(RECV_BYTES)
        view = memoryview(buf)
        buffers = [buf]
        recvmsg = listen.recvmsg_into
        recvfrom = listen.recvfrom_into
        addresses = core.addresses
        move_to_end = addresses.move_to_end
        stats = core.stats
        strict = core.strict
        header = _DATA_HEADER.unpack_from
        from_client = core.from_client
        open_route = self.open_route
        monotonic = time.monotonic
        log_lines, closing = core.pending_work
        slots = self.pump.receiver(control=pktinfo)
        iovecs = mmsg.Iovecs() if slots is not None else None
        # connected sockets, one per client; runs of equal-sized datagrams as one UDP_SEGMENT
        to_wg = mmsg.Messages(iovecs, segment=True) if iovecs is not None else None

        batch = Batch()
        local: bytes | None = None  # where the last datagram was sent to (IP_PKTINFO)
        last_cmsg = b""  # ... and the control message it came from: mostly the same
        # Copies of one datagram arrive together when the client's uplinks are alike: a call
        # reads as many as the last client has addresses, so they cost one wake-up, not one
        # each (an EAGAIN, ~2 us, when fewer came, against ~4 us a wake-up).
        copies = 1

        def route_of(
            src: Any, local: bytes | None, data: memoryview, n: int, now: float, dedup: bool
        ) -> Route | None:
            """Where one datagram from a client address goes: a route to WireGuard, or None
            (dropped here, counted). Counts everything the dashboard shows for it."""
            nonlocal copies
            route: Route | None = None
            entry = addresses.get(src)
            if entry is not None and n:
                # The hot path: a proven address sending transport data of its own client's
                # sessions (with relayNonWireGuard: anything from an address seen before).
                client: Client = entry.client  # type: ignore[assignment]
                if not strict:
                    route = client
                elif n >= 32 and data[0] == 4 and not (data[1] or data[2] or data[3]):
                    index, counter = header(data, 4)
                    if index in client.local_indices and local == entry.local_raw:
                        route = client  # (sent elsewhere: the core decides, see _move_local)
                if route is not None:
                    entry.last_seen = now
                    entry.local_raw = local
                    move_to_end(src)
                    client.last_seen = now
                    copies = len(client.addresses)
                    entry.rx_datagrams += 1
                    entry.rx_bytes += n
                    stats.clients_rx_datagrams += 1
                    stats.clients_rx_bytes += n
                    if (
                        strict
                        and not client.tracker.see(
                            index, counter, bytes(data[n - 16 : n]), entry.quality, now
                        )
                        and dedup
                    ):
                        client.duplicates_dropped += 1
                        stats.duplicates_dropped += 1
                        return None
                    return route
            kind = message_type(data, n) if strict else (DATA if n else JUNK)
            if kind == JUNK:  # before any other work: a junk flood costs little
                if n == 0:
                    stats.empty_datagrams += 1
                else:
                    stats.junk_datagrams += 1
                return None
            return from_client(src, local, kind, data, n, now)

        def drain() -> None:
            nonlocal local, last_cmsg
            now = monotonic()
            dedup = core.dedup  # per batch: a reload may change it
            if slots is not None and batch.limit > 1:
                drain_batch(now, dedup)
                return
            for _ in range(max(batch.limit, copies)):
                try:
                    if pktinfo:
                        n, anc, _flags, src = recvmsg(buffers, PKTINFO_ANC_BYTES)
                        cmsg = anc[0][2] if anc else b""
                        if cmsg != last_cmsg:
                            local = destination_of(anc)
                            last_cmsg = cmsg
                    else:
                        n, src = recvfrom(buf)
                except BlockingIOError:
                    batch.drained()
                    break
                except OSError:  # nothing known raises here; count it rather than stop
                    stats.recv_errors += 1
                    continue
                if now >= sample.due:  # the relay's added delay, sampled (net/latency.py)
                    sample.mark(now)
                route = route_of(src, local, view, n, now, dedup)
                if route is None:
                    continue
                sock = route.upstream
                if sock is None:
                    sock = open_route(route)
                    if sock is None:
                        continue
                try:
                    sock.send(view[:n])
                    stats.wg_tx_datagrams += 1
                    stats.wg_tx_bytes += n
                except BlockingIOError:
                    stats.wg_tx_dropped_full += 1
                except OSError:  # ECONNREFUSED: WireGuard is not listening (yet)
                    stats.wg_tx_errors += 1
            else:
                batch.filled()
            if log_lines or closing:
                self.after(now)

        def drain_batch(now: float, dedup: bool) -> None:
            """One recvmmsg; each datagram routed as above; one sendmmsg per upstream socket
            (each socket's datagrams in the order they came)."""
            assert slots is not None and iovecs is not None and to_wg is not None
            limit = batch.limit
            try:
                k = slots.recv(listen.fileno(), limit)
            except BlockingIOError:
                batch.drained()
                return
            except OSError:
                stats.recv_errors += 1
                return
            if now >= sample.due:  # the batch's last datagram (net/latency.py)
                sample.mark(now)
            going: dict[socket.socket, list[int]] = {}
            size, data_of, source, local_of = slots.size, slots.data, slots.source, slots.local
            for i in range(k):
                n = size(i)
                data = data_of(i, n)
                if strict and (n < 32 or data[0] != 4) and message_type(data, n) == JUNK:
                    # Dropped by route_of too, whoever sent it; here before its source is even
                    # looked at, so a flood of junk from many sources costs little.
                    if n == 0:
                        stats.empty_datagrams += 1
                    else:
                        stats.junk_datagrams += 1
                    continue
                route = route_of(source(i), local_of(i) if pktinfo else None, data, n, now, dedup)
                if route is None:
                    continue
                sock = route.upstream
                if sock is None:
                    sock = open_route(route)
                    if sock is None:
                        continue
                queued = going.get(sock)
                if queued is None:
                    going[sock] = [i]
                else:
                    queued.append(i)
            batch.read(k)
            point, address = iovecs.point, slots.address
            for sock, queued in going.items():
                total = 0
                for j, i in enumerate(queued):
                    n = size(i)
                    point(j, address(i), n)
                    total += n
                count = len(queued)
                sent, full, failed = to_wg.send_all(sock.fileno(), count)
                stats.wg_tx_datagrams += sent
                stats.wg_tx_bytes += total if sent == count else to_wg.sent_bytes()
                stats.wg_tx_dropped_full += full
                stats.wg_tx_errors += failed
            if log_lines or closing:
                self.after(now)

        return drain

    # ---- WireGuard -> client addresses ----------------------------------------------------------

    def wireguard_handler(
        self, route: Route, upstream: socket.socket, sample: Any = NEVER
    ) -> Handler:
        """What WireGuard sends on `route`'s socket -> the live addresses of the client it is
        for, up to a batch per call. A send that would block is dropped and counted for that
        address; a send that fails drops the address (it proves itself again with its next
        datagram), without affecting the others.

        `targets_of` decides per datagram for both ways of reading: one datagram per system
        call, or (a busy socket) one recvmmsg and one sendmmsg for every copy of the batch
        (each message with its own destination and, on a wildcard address, IP_PKTINFO)."""
        core = self.core
        buf = bytearray(RECV_BYTES)
        view = memoryview(buf)
        recv = upstream.recv_into
        sendto = self.listen.sendto
        sendmsg = self.listen.sendmsg
        pktinfo = self.pktinfo
        ancillary = self._ancillary
        stats = core.stats
        strict = core.strict
        from_wireguard = core.from_wireguard
        fast = route if isinstance(route, Client) else None
        monotonic = time.monotonic
        log_lines, closing = core.pending_work
        receiver = _INDEX.unpack_from
        failed: list[tuple[ClientAddress, int | None]] = []
        slots = self.pump.receiver()
        iovecs = mmsg.Iovecs(4 * mmsg.SLOTS) if slots is not None else None
        out = mmsg.Messages(iovecs, names=True, control=pktinfo) if iovecs is not None else None
        queued: list[tuple[ClientAddress, int]] = []  # what each message of `out` carries

        batch = Batch()

        def targets_of(data: memoryview, n: int, now: float) -> Iterable[ClientAddress]:
            """Where one datagram from WireGuard goes (before the liveness cut-off)."""
            kind = message_type(data, n) if strict else DATA
            if (
                fast is not None
                and kind == DATA
                and (not strict or receiver(data, 4)[0] in fast.peer_indices)
            ):
                return fast.addresses.values()  # the hot path: a known session
            return from_wireguard(route, kind, data, now)

        def drain() -> None:
            now = monotonic()
            cutoff = now - core.timeout_s
            if slots is not None and batch.limit > 1:
                drain_batch(now, cutoff)
                return
            for _ in range(batch.limit):
                try:
                    n = recv(buf)
                except BlockingIOError:
                    batch.drained()
                    break
                except OSError:  # ECONNREFUSED from an earlier send while WireGuard was down
                    stats.recv_errors += 1
                    continue
                if now >= sample.due:  # the relay's added delay, sampled (net/latency.py)
                    sample.mark(now)
                if n == 0:
                    stats.empty_datagrams += 1
                    continue
                stats.wg_rx_datagrams += 1
                stats.wg_rx_bytes += n
                data = view[:n]
                for entry in targets_of(data, n, now):
                    if entry.last_seen < cutoff:
                        continue
                    try:
                        if pktinfo and entry.local_raw is not None:
                            anc = ancillary.get(entry.local_raw)
                            if anc is None:
                                anc = remember_ancillary(ancillary, entry.local_raw)
                            sendmsg([data], anc, 0, entry.address)
                        else:
                            sendto(data, entry.address)
                        entry.tx_datagrams += 1
                        entry.tx_bytes += n
                    except BlockingIOError:
                        entry.tx_dropped_full += 1
                    except OSError as exc:
                        entry.tx_errors += 1
                        entry.last_tx_errno = exc.errno
                        failed.append((entry, exc.errno))
                if failed:
                    drop_failed(now)
            else:
                batch.filled()
            if log_lines or closing:
                self.after(now)

        def drop_failed(now: float) -> None:
            for entry, err in failed:
                line = core.drop(entry.address, err, now)
                if line:
                    self.log.warning(now, line)
            failed.clear()

        def drain_batch(now: float, cutoff: float) -> None:
            assert slots is not None and iovecs is not None and out is not None
            limit = batch.limit
            try:
                k = slots.recv(upstream.fileno(), limit)
            except BlockingIOError:
                batch.drained()
                return
            except OSError:
                stats.recv_errors += 1
                return
            if now >= sample.due:  # the batch's last datagram (net/latency.py)
                sample.mark(now)
            size, data_of, address = slots.size, slots.data, slots.address
            point, set_name, set_control = iovecs.point, out.set_name, out.set_control
            sockaddr_of = mmsg.sockaddr_of
            room = iovecs.slots
            m = 0
            for i in range(k):
                n = size(i)
                if n == 0:
                    stats.empty_datagrams += 1
                    continue
                stats.wg_rx_datagrams += 1
                stats.wg_rx_bytes += n
                for entry in targets_of(data_of(i, n), n, now):
                    if entry.last_seen < cutoff:
                        continue
                    if m == room:
                        flush(m)
                        m = 0
                    point(m, address(i), n)
                    set_name(m, sockaddr_of(entry.address))
                    if pktinfo:
                        set_control(m, entry.local_raw)
                    queued.append((entry, n))
                    m += 1
            if m:
                flush(m)
            if failed:
                drop_failed(now)
            batch.read(k)
            if log_lines or closing:
                self.after(now)

        def flush(count: int) -> None:
            """One sendmmsg of the queued copies; counters per address, as the plain path."""
            assert out is not None
            sent, _full, bad = out.send_all(self.listen.fileno(), count)
            if sent == count:
                for entry, n in queued:
                    entry.tx_datagrams += 1
                    entry.tx_bytes += n
            else:
                errors = dict(out.failures)
                tried = out.tried
                rest_errno = out.last_errno if bad > len(errors) else 0  # ENOBUFS: the rest
                for j, (entry, n) in enumerate(queued):
                    err = errors.get(j) if j < tried else rest_errno
                    if err is None:
                        entry.tx_datagrams += 1
                        entry.tx_bytes += n
                    elif err == 0:
                        entry.tx_dropped_full += 1
                    else:
                        entry.tx_errors += 1
                        entry.last_tx_errno = err
                        failed.append((entry, err))
            queued.clear()

        return drain
