"""Building real cores for the web tests, and a small HTTP/1.1 client (h11) for a served app.

No mocks: the cores are engarde's own, fed interface facts the way the netlink watcher feeds them
(`on_resync`), and `settle` plays the link supervisor's part (open a socket for each wanted
uplink, close the ones no longer wanted) by calling the core's supervisor callbacks.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from engarde.config import ClientConfig, ServerConfig
from engarde.core import wireguard as wg
from engarde.core.client import ClientCore
from engarde.core.links import AddrInfo, LinkInfo
from engarde.core.server import ServerCore

DST = "198.51.100.32:59402"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# index, name, admin_up, carrier, loopback, addresses
LINKS: list[tuple[int, str, bool, bool, bool, list[str]]] = [
    (1, "lo", True, True, True, ["127.0.0.1"]),
    (2, "eth0", True, True, False, ["192.0.2.2"]),
    (3, "eth1", True, True, False, ["198.51.100.7"]),
    (4, "wwan0", True, False, False, []),
    (5, "wg0", True, True, False, ["10.9.0.2"]),
]


def client_config(**overrides: Any) -> ClientConfig:
    settings: dict[str, Any] = {
        "description": "studio",
        "listenAddr": "127.0.0.1:59401",
        "dstAddr": DST,
        "excludedInterfaces": ["wg*"],
        "interfaceLabels": {"eth0": "Fiber"},
    }
    settings.update(overrides)
    return ClientConfig.model_validate(settings)


def make_client_core(clock: FakeClock, **overrides: Any) -> ClientCore:
    """A client core that knows LINKS, with a socket open on every wanted uplink (eth0, eth1)."""
    core = ClientCore(client_config(**overrides), now=clock())
    links = [LinkInfo(i, name, up, carrier, lo) for i, name, up, carrier, lo, _ in LINKS]
    addrs = [AddrInfo(i, a) for i, *_, addresses in LINKS for a in addresses]
    core.on_resync(links, addrs, clock())
    settle(core, clock())
    return core


def settle(core: ClientCore, now: float) -> None:
    """Do what the link supervisor does after a wake-up: open wanted uplinks, close the rest."""
    wanted = core.wanted()
    for index, up in list(core.uplinks.items()):
        if up.socket_open and index not in wanted and up.local_port is not None:
            core.link_closed(index, up.local_port)
    for index, plan in wanted.items():
        if not core.uplinks[index].socket_open:
            core.link_opened(plan, 40000 + index, plan.dst, now)


def index_of(core: ClientCore, name: str) -> int:
    iface = core.table.by_name(name)
    assert iface is not None, name
    return iface.index


def make_server_core(clock: FakeClock) -> ServerCore:
    config = ServerConfig.model_validate(
        {"description": "hub", "listenAddr": "0.0.0.0:59402", "dstAddr": "127.0.0.1:59301"}
    )
    core = ServerCore(config, now=clock())
    # WireGuard transport data (type 4, receiver index 7, counter 0): confirms a client address
    # while our WireGuard has not handed out any session index yet.
    data = bytes([wg.DATA, 0, 0, 0]) + (7).to_bytes(4, "little") + bytes(8 + 16)
    entry = core.seen(("203.0.113.7", 40001), None, wg.DATA, data, clock())
    entry.rx_datagrams, entry.rx_bytes = 10, 1480
    clock.advance(2.5)
    entry2 = core.seen(
        ("203.0.113.9", 40002), socket.inet_aton("192.0.2.1"), wg.DATA, data, clock()
    )
    entry2.tx_datagrams, entry2.tx_bytes, entry2.tx_dropped_full = 4, 512, 1
    assert entry.confirmed and entry2.confirmed
    return core


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---- a real HTTP client for a served dashboard ---------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on its own connection (closed afterwards)."""
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        hdrs = [("Host", f"127.0.0.1:{port}"), ("Connection", "close")]
        hdrs += [("Content-Length", str(len(body)))] if method != "GET" else []
        hdrs += list((headers or {}).items())
        data = conn.send(h11.Request(method=method, target=path, headers=hdrs))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        reply: Reply | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                reply = Reply(event.status_code, _headers(event.headers), b"")
            elif isinstance(event, h11.Data):
                assert reply is not None
                reply.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                assert reply is not None
                return reply


@dataclass
class EventStream:
    """GET /api/v2/events, read event by event."""

    port: int
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    ended: bool = False
    _buffer: str = ""

    async def open(self) -> AsyncGenerator[tuple[str, Any], None]:
        conn = h11.Connection(h11.CLIENT)
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            hdrs = [("Host", f"127.0.0.1:{self.port}"), ("Accept", "text/event-stream")]
            hdrs += list(self.headers.items())
            await stream.send_all(
                conn.send(h11.Request(method="GET", target="/api/v2/events", headers=hdrs))
                + conn.send(h11.EndOfMessage())
            )
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await stream.receive_some(65536)
                    conn.receive_data(chunk)
                elif isinstance(event, h11.Response):
                    self.status = event.status_code
                    self.response_headers = _headers(event.headers)
                elif isinstance(event, h11.Data):
                    self._buffer += bytes(event.data).decode()
                    while "\n\n" in self._buffer:
                        block, self._buffer = self._buffer.split("\n\n", 1)
                        parsed = _parse_sse(block)
                        if parsed is not None:
                            yield parsed
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    self.ended = True
                    return


def _parse_sse(block: str) -> tuple[str, Any] | None:
    name, data = "message", []
    for line in block.split("\n"):
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
    if not data:
        return None
    return name, json.loads("\n".join(data))


def _headers(raw: Any) -> dict[str, str]:
    return {bytes(k).decode().lower(): bytes(v).decode() for k, v in raw}
