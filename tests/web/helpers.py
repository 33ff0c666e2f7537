"""Building real cores for the web tests, and a small HTTP/1.1 client (h11) for a served app.

No mocks: the cores are engarde's own, fed interface facts the way the netlink watcher feeds them
(`on_resync`), and `settle` plays the link supervisor's part (open a socket for each wanted
uplink, close the ones no longer wanted) by calling the core's supervisor callbacks.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from engarde.config import ClientConfig, ServerConfig
from engarde.core import wireguard as wg
from engarde.core.client import ClientCore, Path, UplinkPlan
from engarde.core.copies import WINDOW_S
from engarde.core.links import AddrInfo, LinkInfo
from engarde.core.server import ServerCore

DST = "198.51.100.32:59402"
SESSION = 0x1234  # the WireGuard session (receiver index) of the client core's tracked copies


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
    """A client core that knows LINKS, with a socket open on every wanted uplink (eth0, eth1),
    and the server's copies of 20 datagrams tracked: eth0 first with 18, eth1 4 ms behind it,
    and 2 that only eth1 delivered (eth1 saved 2, eth0 lost 2)."""
    core = ClientCore(client_config(**overrides), now=clock())
    links = [LinkInfo(i, name, up, carrier, lo) for i, name, up, carrier, lo, _ in LINKS]
    addrs = [AddrInfo(i, a) for i, *_, addresses in LINKS for a in addresses]
    core.on_resync(links, addrs, clock())
    settle(core, clock())
    track_copies(core, clock())
    return core


def track_copies(core: ClientCore, now: float, first: int = 0) -> None:
    """Feed the tracker copies of 20 datagrams (counters first..first+19) as the pump does."""
    eth0 = path_of(core, index_of(core, "eth0")).quality
    eth1 = path_of(core, index_of(core, "eth1")).quality
    for quality in (eth0, eth1):
        core.link_carrying(quality, now)
    for counter in range(first, first + 20):
        tag = counter.to_bytes(16, "little")
        if counter < first + 18:
            core.tracker.see(SESSION, counter, tag, eth0, now)
        core.tracker.see(SESSION, counter, tag, eth1, now + 0.004)
    core.sweep(now + 2 * WINDOW_S)  # settle them all: lost and saved are counted then


def settle(core: ClientCore, now: float) -> None:
    """Do what the link supervisor does after a wake-up: open wanted paths, close the rest."""
    wanted = core.wanted()
    for index, up in list(core.uplinks.items()):
        for source, path in up.paths.items():
            if path.socket_open and (index, source) not in wanted and path.local_port is not None:
                plan = UplinkPlan(index, up.name, source, path.dst, path.family)
                core.link_closed(plan, path.local_port, now)
    for (index, _), plan in wanted.items():
        if not core.path_for(plan).socket_open:
            core.link_opened(plan, 40000 + index, plan.dst, now)


def wanted_indices(core: ClientCore) -> set[int]:
    """The interfaces that have at least one wanted path."""
    return {index for index, _ in core.wanted()}


def path_of(core: ClientCore, index: int) -> Path:
    """The (first) wanted path of an interface: one per interface with the default config."""
    plans = [plan for (i, _), plan in core.wanted().items() if i == index]
    assert plans, f"interface {index} has no wanted path"
    return core.path_for(plans[0])


def index_of(core: ClientCore, name: str) -> int:
    iface = core.table.by_name(name)
    assert iface is not None, name
    return iface.index


A7, A9 = ("203.0.113.7", 40001), ("203.0.113.9", 40002)  # two uplinks of client #1
B1 = ("198.51.100.9", 41001)  # client #2's only uplink
V = ("192.0.2.66", 5353)  # sent a handshake nobody answered: pending


def make_server_core(clock: FakeClock) -> ServerCore:
    """A server core driven as the shell drives it (from_client / from_wireguard):

    * client #1 (sessions 0x4d ours, 0x0b theirs) with A7 and A9: A7 first for 18 datagrams,
      A9 4 ms behind, 2 delivered by A9 only (A9 saved 2, A7 lost 2); A7 last heard at the start,
      A9 2.5 s later; 4 replies (512 B) sent to A9, one dropped (buffer full);
    * client #2 (sessions 0x58 / 0x16) with B1, 1 s after the start;
    * V pending: its handshake initiation was never answered (1 s after the start).
    """
    config = ServerConfig.model_validate(
        {"description": "hub", "listenAddr": "0.0.0.0:59402", "dstAddr": "127.0.0.1:59301"}
    )
    t0 = clock()
    core = ServerCore(config, now=t0)
    local = socket.inet_aton("192.0.2.1")
    handshake(core, {A7: None, A9: local}, ours=0x4D, theirs=0x0B, now=t0)
    for counter in range(20):
        tag = counter.to_bytes(16, "little")
        if counter < 18:
            core.from_client(A7, None, wg.DATA, *sized(data(0x4D, counter, tag)), t0)
        core.from_client(A9, local, wg.DATA, *sized(data(0x4D, counter, tag)), t0 + 0.004)
    handshake(core, {B1: local}, ours=0x58, theirs=0x16, now=t0 + 1.0)
    core.from_client(B1, local, wg.DATA, *sized(data(0x58, 0)), t0 + 1.0)
    core.from_client(V, local, wg.INITIATION, *sized(initiation(0x99)), t0 + 1.0)
    clock.advance(2.5)
    core.sweep(clock())  # settles the copies of t0: lost and saved are counted then
    core.from_client(A9, local, wg.DATA, *sized(data(0x4D, 20)), clock())
    entry = core.addresses[A9]
    entry.tx_datagrams, entry.tx_bytes, entry.tx_dropped_full = 4, 512, 1
    assert [a.client is not None for a in (core.addresses[A7], entry)] == [True, True]
    return core


def handshake(
    core: ServerCore,
    senders: dict[tuple[str, int], bytes | None],
    ours: int,
    theirs: int,
    now: float,
) -> None:
    """The senders' WireGuard initiates (a copy from each uplink); ours answers on the lobby."""
    for src, local in senders.items():
        core.from_client(src, local, wg.INITIATION, *sized(initiation(theirs)), now)
    reply = struct.pack("<III", wg.RESPONSE, ours, theirs) + bytes(80)
    targets = core.from_wireguard(core.lobby, wg.RESPONSE, reply, now)
    assert {t.address for t in targets} == set(senders)


def initiation(sender: int) -> bytes:
    return struct.pack("<II", wg.INITIATION, sender) + bytes(140)


def data(receiver: int, counter: int, tag: bytes = bytes(16)) -> bytes:
    return struct.pack("<IIQ", wg.DATA, receiver, counter) + bytes(16) + tag


def sized(message: bytes) -> tuple[bytes, int]:
    return message, len(message)


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
