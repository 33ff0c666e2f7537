"""Serving the app with hypercorn, with a cap on open connections per client address and in all.

hypercorn accepts every connection it is offered and keeps it until its keep-alive or read
timeouts: an address that opens hundreds of idle connections holds hundreds of the process's
file descriptors (the relay needs them too: EMFILE on a datagram socket ends a link), and the
request pacer never sees a connection that sends nothing. So `serve` runs hypercorn's own
per-connection server (hypercorn.trio.tcp_server.TCPServer, as hypercorn.trio.serve does) behind
an accept loop that first asks `ConnectionLimits`: beyond `PER_ADDRESS` connections from one
address or `TOTAL` in all, a new connection gets a short 503 JSON answer and is closed at once.

This follows hypercorn.trio.run.worker_serve (plain TCP only: no TLS, no QUIC, which engarde
never configures), and keeps its graceful shutdown: the shutdown trigger stops accepting, and
connections in flight get ``config.graceful_timeout``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app

PER_ADDRESS = 16  # open connections from one client address
TOTAL = 128  # open connections in all
REFUSAL_TIMEOUT_S = 0.5  # to write the 503 to a refused connection and close it

_BODY = b'{"error": "too many connections, close some and retry"}'
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


class ConnectionLimits:
    """Open connections per client address and in all (the accept loop's bookkeeping)."""

    def __init__(self, per_address: int = PER_ADDRESS, total: int = TOTAL) -> None:
        self.per_address = per_address
        self.total = total
        self.open = 0
        self.by_address: dict[str, int] = {}
        self.refused = 0

    def admit(self, address: str) -> bool:
        if self.open >= self.total or self.by_address.get(address, 0) >= self.per_address:
            self.refused += 1
            return False
        self.open += 1
        self.by_address[address] = self.by_address.get(address, 0) + 1
        return True

    def release(self, address: str) -> None:
        self.open -= 1
        left = self.by_address.get(address, 1) - 1
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)


class _CountedStream:
    """The connection as hypercorn's TCPServer uses it; closing it gives its place back at
    once (TCPServer itself may linger until its keep-alive timer ends)."""

    def __init__(self, stream: trio.SocketStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release
        self.socket = stream.socket

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self.release()


async def _refuse(stream: trio.SocketStream) -> None:
    """Answer 503 and close; the request is read (and dropped) for a moment first so that the
    kernel does not reset the connection (and lose the answer) over unread data."""
    with trio.move_on_after(REFUSAL_TIMEOUT_S), contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(REFUSAL)
        await stream.send_eof()
        received = 0
        while received < 65536:
            chunk = await stream.receive_some(16384)
            if not chunk:
                break
            received += len(chunk)
    await stream.aclose()


async def serve(
    app: Any,
    config: HypercornConfig,
    limits: ConnectionLimits,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like hypercorn.trio.serve, with `limits` checked for every accepted connection."""
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            address = str(stream.socket.getpeername()[0])
        except OSError:
            await stream.aclose()
            return
        if not limits.admit(address):
            await _refuse(stream)
            return
        counted = _CountedStream(stream, functools.partial(limits.release, address))
        try:
            state = ConnectionState(lifespan_state.copy())
            await TCPServer(asgi, config, context, state, counted).run()  # type: ignore[arg-type]
        finally:
            counted.release()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(
                        functools.partial(
                            trio.serve_listeners, handle, listeners, handler_nursery=server_nursery
                        )
                    )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, others = error.split((ShutdownError, KeyboardInterrupt))
                if others is not None:
                    raise others from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
