"""Who the dashboard answers (issue 13, items 2 and 3, and the nested-JSON crash of item 5):
the Host allow-list (DNS rebinding), cross-site commands, pacing per client address after
authentication, event streams and connections capped per address."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio

from engarde.config import WebManagerConfig
from engarde.config.effective import describe
from engarde.config.models import Config
from engarde.core.client import ClientCore
from engarde.web.app import create_app
from engarde.web.connections import ConnectionLimits
from engarde.web.guard import HostCheck, LocalAddresses, PacerPool, host_name
from engarde.web.live import MAX_STREAMS_PER_ADDRESS
from engarde.web.pacing import Pacer
from engarde.web.serve import KEEP_ALIVE_S, run_dashboard
from tests.web.helpers import (
    FakeClock,
    basic,
    free_port,
    index_of,
    make_client_core,
    wanted_indices,
)

BODY = json.dumps({"interface": "eth0"})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(clock: FakeClock) -> ClientCore:
    return make_client_core(clock)


def web(**fields: Any) -> WebManagerConfig:
    return WebManagerConfig(listenAddr="127.0.0.1:9001", **fields)


async def call(
    app: Any,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: str | None = None,
    peer: str = "127.0.0.1",
) -> tuple[int, Any]:
    client = app.test_client()
    response = await client.open(
        path,
        method=method,
        headers=headers or {},
        data=body,
        scope_base={"client": (peer, 40000), "server": ("127.0.0.1", 9001)},
    )
    text = await response.get_data(as_text=True)
    return response.status_code, json.loads(text) if text.startswith("{") else text


# ---- Host allow-list -------------------------------------------------------------------------


async def test_a_rebinding_host_is_refused_and_changes_nothing(
    core: ClientCore, clock: FakeClock
) -> None:
    app = create_app(core, web(), clock=clock)
    eth0 = index_of(core, "eth0")
    evil = {"Host": "evil.example:9001", "Origin": "http://evil.example:9001"}
    status, doc = await call(app, "POST", "/api/v1/exclude", evil, BODY)
    assert (status, doc) == (421, {"error": "refused: this is not a host name of the dashboard"})
    assert eth0 in wanted_indices(core)
    for path in ("/api/v2/status", "/api/v1/get-list", "/", "/metrics", "/api/v2/events"):
        status, doc = await call(app, "GET", path, {"Host": "evil.example:9001"})
        assert status == 421, (path, doc)
    status, _ = await call(app, "GET", "/api/v1/reset-exclusions", {"Host": "evil.example"})
    assert status == 421


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:9001",
        "127.0.0.1",
        "127.1.2.3:9001",
        "localhost:9001",
        "LOCALHOST",
        "dash.localhost:9001",
        "[::1]:9001",
        "192.0.2.1:9001",  # an address of this machine (here: said so by the test)
        "router.lan:9001",  # webManager.allowedHosts
    ],
)
async def test_own_names_are_served(core: ClientCore, clock: FakeClock, host: str) -> None:
    hosts = HostCheck("127.0.0.1", local=lambda name: name == "192.0.2.1")
    app = create_app(core, web(allowedHosts=["router.lan"]), clock=clock, hosts=hosts)
    status, doc = await call(app, "GET", "/api/v1/get-list", {"Host": host})
    assert status == 200, (host, doc)


async def test_the_listen_host_and_the_connections_own_address_are_served(
    core: ClientCore, clock: FakeClock
) -> None:
    config = web()
    app = create_app(
        core, config, clock=clock, hosts=HostCheck("engarde.lan", local=lambda _: False)
    )
    assert (await call(app, "GET", "/api/v2/status", {"Host": "engarde.lan:9001"}))[0] == 200
    assert (await call(app, "GET", "/api/v2/status", {"Host": "127.0.0.1:9001"}))[0] == 200
    assert (await call(app, "GET", "/api/v2/status", {"Host": "other.lan:9001"}))[0] == 421


async def test_a_star_allows_any_host(core: ClientCore, clock: FakeClock) -> None:
    app = create_app(core, web(allowedHosts=["*"]), clock=clock)
    assert (await call(app, "GET", "/api/v2/status", {"Host": "proxy.example"}))[0] == 200


async def test_the_originals_wget_calls_keep_working(core: ClientCore, clock: FakeClock) -> None:
    """The LuCI app: wget to 127.0.0.1, GET, no Origin, no Sec-Fetch-Site."""
    app = create_app(core, web(), clock=clock)
    eth0 = index_of(core, "eth0")
    await call(app, "POST", "/api/v1/exclude", {"Host": "127.0.0.1:9001"}, BODY)
    assert eth0 not in wanted_indices(core)
    status, doc = await call(app, "GET", "/api/v1/reset-exclusions", {"Host": "127.0.0.1:9001"})
    assert (status, doc) == (200, {"status": "ok"})
    assert eth0 in wanted_indices(core)
    assert (await call(app, "GET", "/api/v1/get-list", {"Host": "127.0.0.1:9001"}))[0] == 200


# ---- cross-site commands ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://evil.example:9001"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "Cross-Site", "Origin": "http://127.0.0.1:9001"},
    ],
)
async def test_cross_site_commands_are_refused(
    core: ClientCore, clock: FakeClock, headers: dict[str, str]
) -> None:
    app = create_app(core, web(), clock=clock)
    eth0 = index_of(core, "eth0")
    headers = {"Host": "127.0.0.1:9001", **headers}
    status, doc = await call(app, "POST", "/api/v1/exclude", headers, BODY)
    assert status == 403, doc
    assert "another site" in doc["error"]
    assert eth0 in wanted_indices(core)
    assert (await call(app, "GET", "/api/v1/reset-exclusions", headers))[0] == 403
    assert (await call(app, "POST", "/api/v1/swap-exclusion", headers, BODY))[0] == 403
    # reading stays allowed (the browser does not let the other site read the answer)
    assert (await call(app, "GET", "/api/v2/status", headers))[0] == 200


async def test_an_origin_in_the_allow_list_may_send_commands(
    core: ClientCore, clock: FakeClock
) -> None:
    app = create_app(core, web(allowedHosts=["luci.lan"]), clock=clock)
    headers = {"Host": "127.0.0.1:9001", "Origin": "http://luci.lan", "Sec-Fetch-Site": "same-site"}
    assert await call(app, "POST", "/api/v1/exclude", headers, BODY) == (200, {"status": "ok"})


# ---- pacing per address, authentication first ---------------------------------------------------


async def test_a_flood_from_one_address_does_not_slow_another(
    core: ClientCore, clock: FakeClock, autojump_clock: trio.abc.Clock
) -> None:
    app = create_app(core, None, clock=clock, pacer=PacerPool(lambda: Pacer(10, 5, 0.5)))
    host = {"Host": "127.0.0.1:9001"}
    statuses: list[int] = []

    async def flood() -> None:
        statuses.append((await call(app, "GET", "/api/v2/status", host, peer="192.0.2.50"))[0])

    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(flood)
        await trio.sleep(0.001)  # the flood is in, some of it waiting
        start = trio.current_time()
        assert (await call(app, "GET", "/api/v2/status", host, peer="192.0.2.60"))[0] == 200
        assert trio.current_time() - start < 0.01, "another address had to wait"
    assert statuses.count(429) > 0, statuses


async def test_an_unauthenticated_flood_does_not_delay_the_admin(
    core: ClientCore, clock: FakeClock, autojump_clock: trio.abc.Clock
) -> None:
    """Same address even (a NAT, a local process): wrong credentials draw from their own budget."""
    config = web(username="admin", password="s3cret")
    app = create_app(core, config, clock=clock, pacer=PacerPool(lambda: Pacer(10, 5, 0.5)))
    host = {"Host": "127.0.0.1:9001"}
    guesses: list[int] = []

    async def guess(n: int) -> None:
        headers = {**host, **basic("admin", f"guess{n}")}
        guesses.append((await call(app, "GET", "/api/v2/status", headers))[0])

    async with trio.open_nursery() as nursery:
        for n in range(40):
            nursery.start_soon(guess, n)
        await trio.sleep(0.001)  # the guesses are in, some of them waiting
        start = trio.current_time()
        admin = {**host, **basic("admin", "s3cret")}
        assert (await call(app, "GET", "/api/v2/status", admin))[0] == 200
        assert trio.current_time() - start < 0.01, "the admin waited behind the guesses"
    assert set(guesses) == {401, 429}, guesses  # slowed down, then refused
    # and a refused Host is answered 421 before the credentials are looked at
    assert (await call(app, "GET", "/api/v2/status", {"Host": "evil.example"}))[0] == 421


def test_the_pacer_pool_is_bounded() -> None:
    pool = PacerPool(lambda: Pacer(1, 1, 0.0), max_keys=3)
    for n in range(10):
        assert pool.reserve((f"192.0.2.{n}", True), 0.0) == 0.0
    assert len(pool) == 3
    assert pool.reserve(("192.0.2.9", True), 0.0) is None  # kept: still paced


# ---- nested JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["[" * 50_000, '{"a":' * 12_000, "[" * 30_000 + "]" * 30_000])
async def test_a_deeply_nested_body_is_a_400(core: ClientCore, clock: FakeClock, body: str) -> None:
    app = create_app(core, web(), clock=clock)
    status, doc = await call(app, "POST", "/api/v1/exclude", {"Host": "127.0.0.1:9001"}, body)
    assert status == 400, doc
    assert "nested too deeply" in doc["error"] or "not valid JSON" in doc["error"]


# ---- config -----------------------------------------------------------------------------------


def test_allowed_hosts_config() -> None:
    config = WebManagerConfig(listenAddr="127.0.0.1:9001", allowedHosts=["Router.LAN", "[fd00::1]"])
    assert config.allowedHosts == ["router.lan", "fd00::1"]
    for bad in ("", "http://x", "x:9001", "a b", "x/y"):
        with pytest.raises(ValueError, match="without scheme or port"):
            WebManagerConfig(listenAddr="127.0.0.1:9001", allowedHosts=[bad])
    doc = Config.model_validate(
        {
            "server": {
                "listenAddr": "0.0.0.0:59402",
                "dstAddr": "127.0.0.1:51820",
                "webManager": {"listenAddr": "127.0.0.1:9001", "allowedHosts": ["vpn.lan"]},
            }
        }
    )
    assert "server.webManager.allowedHosts: vpn.lan" in describe(doc).splitlines()


def test_host_names_and_local_addresses() -> None:
    assert host_name("Evil.Example:9001") == "evil.example"
    assert host_name("[::1]:9001") == "::1"
    assert host_name("http://luci.lan:80") == "luci.lan"
    assert host_name("[::1") is None
    assert host_name("") is None
    reads: list[int] = []
    now = [0.0]

    def read() -> frozenset[str]:
        reads.append(1)
        return frozenset({"192.0.2.1", "fd00::1"})

    local = LocalAddresses(read, clock=lambda: now[0], refresh_s=5.0)
    assert local("192.0.2.1") and local("fd00:0::1") and local("127.0.0.9") and local("::1")
    assert not local("0.0.0.0") and not local("224.0.0.1") and not local("evil.example")
    for _ in range(100):
        assert not local("198.51.100.1")
    assert len(reads) == 1  # a flood of misses reads /proc at most every refresh_s
    now[0] = 6.0
    assert not local("198.51.100.1")
    assert len(reads) == 2


# ---- over hypercorn: event streams and connections per address -----------------------------------


async def _open(
    port: int, source: str, path: str = "/api/v2/events"
) -> tuple[trio.SocketStream, int]:
    """A request from ``source`` (a loopback address); returns the open stream and its status."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = b""
    with trio.fail_after(10):
        while b"\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return stream, status


async def test_event_streams_are_capped_per_address(clock: FakeClock) -> None:
    port = free_port()
    config = WebManagerConfig(listenAddr=f"127.0.0.1:{port}")
    async with trio.open_nursery() as nursery:
        await nursery.start(run_dashboard, make_client_core(clock), config)
        held = []
        for _ in range(MAX_STREAMS_PER_ADDRESS):
            stream, status = await _open(port, "127.0.0.1")
            assert status == 200
            held.append(stream)
        stream, status = await _open(port, "127.0.0.1")
        held.append(stream)
        assert status == 503, "one address holds more than its share of event streams"
        stream, status = await _open(port, "127.0.0.2")  # another address: still served
        held.append(stream)
        assert status == 200
        for s in held:
            await s.aclose()
        nursery.cancel_scope.cancel()


async def _until(condition: Callable[[], bool]) -> None:
    """Poll (the accept loop has no event to wait for)."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.02)


async def test_connections_are_capped_per_address_and_in_all(clock: FakeClock) -> None:
    port = free_port()
    config = WebManagerConfig(listenAddr=f"127.0.0.1:{port}")
    limits = ConnectionLimits(per_address=3, total=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_dashboard(
                make_client_core(clock), config, limits=limits, task_status=task_status
            )
        )
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        with trio.fail_after(10):
            await _until(lambda: limits.open >= 3)  # accepted, hypercorn waits for a request
        stream, status = await _open(port, "127.0.0.1", "/api/v1/get-list")
        assert status == 503, f"a 4th connection from one address was served ({limits.by_address})"
        await stream.aclose()
        stream, status = await _open(port, "127.0.0.2", "/api/v1/get-list")
        assert status == 200  # another address
        more = [await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.3")]
        with trio.fail_after(10):
            await _until(lambda: limits.open >= 5)
        refused, status = await _open(port, "127.0.0.4", "/api/v1/get-list")
        assert status == 503, f"more than the total was served ({limits.by_address})"
        await refused.aclose()
        await stream.aclose()
        await idle.pop().aclose()
        await more.pop().aclose()
        # hypercorn closes a connection the peer closed once its keep-alive timer ends
        with trio.move_on_after(KEEP_ALIVE_S + 20):
            await _until(lambda: limits.open <= 3)
        assert limits.open <= 3, limits.by_address
        stream, status = await _open(port, "127.0.0.1", "/api/v1/get-list")
        assert status == 200, "a closed connection's place was not given back"
        await stream.aclose()
        for s in idle:
            await s.aclose()
        assert limits.refused == 2
        nursery.cancel_scope.cancel()
