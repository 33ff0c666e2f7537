"""The web API against real cores: the original's v1 shapes, v2, auth, errors, exclusions taking
effect, /metrics, the event stream, and serving (port taken, prompt shutdown)."""

from __future__ import annotations

import ast
import json
import socket
import struct
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from engarde import __version__
from engarde.config import WebManagerConfig
from engarde.core.client import ClientCore
from engarde.core.copies import LAG_BOUNDS_S
from engarde.web.app import create_app, dashboard_of
from engarde.web.guard import HostCheck
from engarde.web.live import STREAM_PENDING_SHOWN, cap_server_status
from engarde.web.serve import DashboardError, run_dashboard
from tests.web.helpers import (
    DST,
    EventStream,
    FakeClock,
    basic,
    free_port,
    http,
    index_of,
    make_client_core,
    make_server_core,
    path_of,
    settle,
    track_copies,
    wanted_indices,
)

WEB = Path(__file__).resolve().parents[2] / "engarde" / "web"
AUTH = WebManagerConfig(listenAddr="127.0.0.1:9001", username="admin", password="s3cret")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(clock: FakeClock) -> ClientCore:
    return make_client_core(clock)


async def get_json(app: Any, path: str, **kwargs: Any) -> tuple[int, Any]:
    response = await app.test_client().get(path, **kwargs)
    return response.status_code, json.loads(await response.get_data(as_text=True))


async def post(app: Any, path: str, body: bytes | str, **kwargs: Any) -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else body
    response = await app.test_client().post(path, data=data, **kwargs)
    return response.status_code, json.loads(await response.get_data(as_text=True))


def iface_body(name: str) -> str:
    return json.dumps({"interface": name})


# ---- v1: the original's shapes ----------------------------------------------------------------


async def test_v1_client_get_list_has_exactly_the_original_shape(
    core: ClientCore, clock: FakeClock
) -> None:
    path_of(core, index_of(core, "eth0")).stats.last_rx = clock() - 3.7
    app = create_app(core, None, clock=clock)
    response = await app.test_client().get("/api/v1/get-list")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert "no-cache" in response.headers["Cache-Control"]
    assert response.headers["Pragma"] == "no-cache"
    doc = json.loads(await response.get_data(as_text=True))
    assert list(doc) == ["type", "version", "description", "listenAddress", "interfaces"]
    assert doc["type"] == "client"
    assert doc["version"] == __version__
    assert doc["description"] == "studio"
    assert doc["listenAddress"] == "127.0.0.1:59401"
    by_name = {i["name"]: i for i in doc["interfaces"]}
    # The kernel's order (ifindex), as the original lists them, not the names' (wg0 < wwan0);
    # loopback never listed.
    assert list(by_name) == ["eth0", "eth1", "wwan0", "wg0"]
    assert by_name["eth0"] == {
        "name": "eth0",
        "label": "Fiber",
        "status": "active",
        "senderAddress": "192.0.2.2",
        "dstAddress": DST,
        "last": 3,
    }
    assert by_name["eth1"] == {  # no label: the key is omitted; nothing received: null
        "name": "eth1",
        "status": "active",
        "senderAddress": "198.51.100.7",
        "dstAddress": DST,
        "last": None,
    }
    assert by_name["wwan0"] == {
        "name": "wwan0",
        "status": "idle",
        "senderAddress": "",
        "dstAddress": DST,
        "last": None,
    }
    assert by_name["wg0"] == {
        "name": "wg0",
        "status": "excluded",
        "senderAddress": "10.9.0.2",
        "dstAddress": "",
        "last": None,
    }


async def test_v1_server_get_list_has_exactly_the_original_shape(clock: FakeClock) -> None:
    core = make_server_core(clock)
    clock.advance(1.2)
    status, doc = await get_json(create_app(core, None, clock=clock), "/api/v1/get-list")
    assert status == 200
    assert doc == {
        "type": "server",
        "version": __version__,
        "description": "hub",
        "listenAddress": "0.0.0.0:59402",
        "dstAddress": "127.0.0.1:59301",
        "sockets": [  # proven addresses first, each kind most recently seen first
            {"address": "203.0.113.9:40002", "last": 1},
            {"address": "198.51.100.9:41001", "last": 2},
            {"address": "203.0.113.7:40001", "last": 3},
            {"address": "192.0.2.66:5353", "last": 2},
        ],
    }


# ---- exclusions ---------------------------------------------------------------------------------


async def test_exclude_and_include_take_effect_at_once(core: ClientCore, clock: FakeClock) -> None:
    wakeups: list[None] = []
    core.on_change = lambda: wakeups.append(None)
    app = create_app(core, None, clock=clock)
    eth1 = index_of(core, "eth1")
    assert eth1 in wanted_indices(core)

    assert await post(app, "/api/v1/exclude", iface_body("eth1")) == (200, {"status": "ok"})
    assert eth1 not in wanted_indices(core)  # the supervisor stops the uplink on this wake-up
    assert wakeups
    settle(core, clock())
    _, doc = await get_json(app, "/api/v1/get-list")
    assert {i["name"]: i["status"] for i in doc["interfaces"]}["eth1"] == "excluded"
    assert await post(app, "/api/v1/exclude", iface_body("eth1")) == (
        200,
        {"status": "already-excluded"},
    )

    assert await post(app, "/api/v1/include", iface_body("eth1")) == (200, {"status": "ok"})
    assert eth1 in wanted_indices(core)
    settle(core, clock())
    _, doc = await get_json(app, "/api/v1/get-list")
    assert {i["name"]: i["status"] for i in doc["interfaces"]}["eth1"] == "active"
    assert await post(app, "/api/v1/include", iface_body("eth1")) == (
        200,
        {"status": "already-included"},
    )


async def test_swap_and_reset_exclusions(core: ClientCore, clock: FakeClock) -> None:
    app = create_app(core, None, clock=clock)
    eth0, wg0 = index_of(core, "eth0"), index_of(core, "wg0")
    assert await post(app, "/api/v1/swap-exclusion", iface_body("eth0")) == (200, {"status": "ok"})
    assert await post(app, "/api/v1/swap-exclusion", iface_body("wg0")) == (200, {"status": "ok"})
    assert eth0 not in wanted_indices(core)
    assert wg0 in wanted_indices(core)  # excluded in the config, included at runtime
    status, doc = await get_json(app, "/api/v1/reset-exclusions")  # GET works, as in the original
    assert (status, doc) == (200, {"status": "ok"})
    assert eth0 in wanted_indices(core)
    assert wg0 not in wanted_indices(core)
    await post(app, "/api/v1/swap-exclusion", iface_body("eth0"))
    assert await post(app, "/api/v1/reset-exclusions", b"") == (200, {"status": "ok"})
    assert eth0 in wanted_indices(core)


async def test_excluding_a_link_without_carrier_shows_it_excluded(
    core: ClientCore, clock: FakeClock
) -> None:
    app = create_app(core, None, clock=clock)
    assert await post(app, "/api/v1/exclude", iface_body("wwan0")) == (200, {"status": "ok"})
    _, doc = await get_json(app, "/api/v1/get-list")
    assert {i["name"]: i["status"] for i in doc["interfaces"]}["wwan0"] == "excluded"
    _, v2 = await get_json(app, "/api/v2/status")
    wwan0 = next(link for link in v2["links"] if link["name"] == "wwan0")
    assert (wwan0["state"], wwan0["excluded"], wwan0["excludedBy"]) == ("excluded", True, "runtime")
    assert "no carrier" in wwan0["reason"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'["eth0"]', "expected a JSON body"),
        (b'{"iface": "eth0"}', "missing field 'interface'"),
        (b'{"interface": 3}', "must be a non-empty string"),
        (b'{"interface": ""}', "must be a non-empty string"),
        (b'{"interface": "eth9"}', "unknown interface 'eth9'"),
    ],
)
@pytest.mark.parametrize("command", ["exclude", "include", "swap-exclusion"])
async def test_bad_command_bodies_are_400_with_a_json_error(
    core: ClientCore, clock: FakeClock, command: str, body: bytes, fragment: str
) -> None:
    wanted = dict(core.wanted())
    status, doc = await post(create_app(core, None, clock=clock), f"/api/v1/{command}", body)
    assert status == 400
    assert list(doc) == ["error"]
    assert fragment in doc["error"]
    assert core.wanted() == wanted


async def test_http_errors_are_json(core: ClientCore, clock: FakeClock) -> None:
    app = create_app(core, None, clock=clock)
    response = await app.test_client().get("/api/v1/exclude")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert "error" in json.loads(await response.get_data(as_text=True))
    status, doc = await get_json(app, "/api/v1/nothing-here")
    assert status == 404
    assert doc == {"error": "not found: /api/v1/nothing-here"}
    status, doc = await post(app, "/api/v1/exclude", b'{"interface": "' + b"x" * 100_000 + b'"}')
    assert status == 413
    assert "too large" in doc["error"]


async def test_commands_on_the_server_role_are_404_json(clock: FakeClock) -> None:
    app = create_app(make_server_core(clock), None, clock=clock)
    for path in ("exclude", "include", "swap-exclusion", "reset-exclusions"):
        status, doc = await post(app, f"/api/v1/{path}", iface_body("eth0"))
        assert status == 404, path
        assert "only on the client" in doc["error"]


async def test_cross_site_commands_are_refused(core: ClientCore, clock: FakeClock) -> None:
    router = HostCheck(local=lambda name: name == "192.0.2.1")  # the router's own address
    app = create_app(core, None, clock=clock, hosts=router)
    eth0 = index_of(core, "eth0")
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        status, doc = await post(app, "/api/v1/exclude", iface_body("eth0"), headers=headers)
        assert status == 403, headers
        assert "another site" in doc["error"]
        status, _ = await get_json(app, "/api/v1/reset-exclusions", headers=headers)
        assert status == 403
    assert eth0 in wanted_indices(core)
    same_origin = {
        "Origin": "http://localhost",
        "Host": "localhost",
        "Sec-Fetch-Site": "same-origin",
    }
    assert await post(app, "/api/v1/exclude", iface_body("eth0"), headers=same_origin) == (
        200,
        {"status": "ok"},
    )
    luci_on_the_router = {  # same host, another port: same site
        "Origin": "http://192.0.2.1",
        "Host": "192.0.2.1:9001",
        "Sec-Fetch-Site": "same-site",
    }
    assert await post(app, "/api/v1/include", iface_body("eth0"), headers=luci_on_the_router) == (
        200,
        {"status": "ok"},
    )


# ---- auth ------------------------------------------------------------------------------------

PROTECTED = [
    "/",
    "/static/app.js",
    "/static/style.css",
    "/metrics",
    "/api/v1/get-list",
    "/api/v2/status",
    "/api/v2/history",
    "/api/v2/events",
    "/api/v1/reset-exclusions",
    "/no-such-page",
]


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("admin", "wrong"),
        basic("wrong", "s3cret"),
        basic("admin", "s3cret" + "x"),
        basic("", ""),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Bearer s3cret"},
        {"Authorization": "Basic " + "YWRtaW4="},  # "admin", no colon
    ],
)
async def test_auth_required_everywhere(
    core: ClientCore, clock: FakeClock, path: str, headers: dict[str, str]
) -> None:
    app = create_app(core, AUTH, clock=clock)
    response = await app.test_client().get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Basic realm="engarde"')
    assert json.loads(await response.get_data(as_text=True)) == {"error": "authentication required"}


async def test_right_credentials_pass(core: ClientCore, clock: FakeClock) -> None:
    app = create_app(core, AUTH, clock=clock)
    client = app.test_client()
    for path in ("/", "/static/app.js", "/metrics", "/api/v1/get-list", "/api/v2/status"):
        response = await client.get(path, headers=basic("admin", "s3cret"))
        assert response.status_code == 200, path
    status, _ = await post(app, "/api/v1/exclude", iface_body("eth0"), headers=basic("admin", "x"))
    assert status == 401
    assert index_of(core, "eth0") in wanted_indices(core)  # refused: nothing changed
    ok = await post(app, "/api/v1/exclude", iface_body("eth0"), headers=basic("admin", "s3cret"))
    assert ok == (200, {"status": "ok"})


async def test_non_ascii_credentials(core: ClientCore, clock: FakeClock) -> None:
    config = WebManagerConfig(listenAddr="127.0.0.1:9001", username="régie", password="mötley")
    app = create_app(core, config, clock=clock)
    status, _ = await get_json(app, "/api/v2/status", headers=basic("régie", "mötley"))
    assert status == 200
    status, _ = await get_json(app, "/api/v2/status", headers=basic("regie", "motley"))
    assert status == 401


async def test_no_auth_unless_both_username_and_password(
    core: ClientCore, clock: FakeClock
) -> None:
    config = WebManagerConfig(listenAddr="127.0.0.1:9001", username="admin")
    status, _ = await get_json(create_app(core, config, clock=clock), "/api/v1/get-list")
    assert status == 200


# ---- v2 ---------------------------------------------------------------------------------------


async def test_v2_client_status_says_why(core: ClientCore, clock: FakeClock) -> None:
    eth0, eth1 = index_of(core, "eth0"), index_of(core, "eth1")
    stats = path_of(core, eth0).stats
    stats.tx_datagrams, stats.tx_bytes, stats.tx_dropped_full, stats.tx_errors = 7, 700, 2, 1
    stats.rx_datagrams, stats.rx_bytes, stats.rx_foreign = 5, 500, 3
    stats.last_tx_errno = 101  # ENETUNREACH
    stats.last_rx = clock() - 0.5
    core.link_failed(
        next(p for (i, _), p in core.wanted().items() if i == eth1),
        "ENETUNREACH: Network is unreachable",
        clock(),
    )
    clock.advance(10)
    stats.last_rx = clock() - 0.5
    status, doc = await get_json(create_app(core, None, clock=clock), "/api/v2/status")
    assert status == 200
    assert doc["type"] == "client"
    assert doc["version"] == __version__
    assert doc["description"] == "studio"
    assert doc["uptime"] == pytest.approx(10.0)
    assert doc["activeLinks"] == 1
    links = {link["name"]: link for link in doc["links"]}
    e0 = links["eth0"]
    assert (e0["status"], e0["state"], e0["reason"]) == ("active", "up", "carrying copies")
    assert e0["label"] == "Fiber"
    assert e0["senderAddress"] == "192.0.2.2"
    assert e0["localPort"] == 40000 + eth0
    assert e0["lastReceivedAge"] == pytest.approx(0.5)
    assert e0["firstSeenAge"] == pytest.approx(10.0)
    assert e0["tx"] == {
        "datagrams": 7,
        "bytes": 700,
        "bytesPerSecond": 0.0,
        "dropped": {"buffer_full": 2, "error": 1},
        "lastErrno": "ENETUNREACH",
    }
    assert e0["rx"] == {
        "datagrams": 5,
        "bytes": 500,
        "bytesPerSecond": 0.0,
        "dropped": {"foreign": 3, "no_peer": 0, "buffer_full": 0},
    }
    e1 = links["eth1"]
    assert (e1["status"], e1["state"]) == ("idle", "error")
    assert e1["reason"] == "socket failed: ENETUNREACH: Network is unreachable"
    assert links["wwan0"]["state"] == "no-carrier"
    assert links["wwan0"]["carrier"] is False
    assert (links["wg0"]["state"], links["wg0"]["excludedBy"]) == ("excluded", "config")
    assert links["wg0"]["reason"] == "excluded in engarde.yml"
    assert (doc["dedup"], doc["duplicatesDropped"]) == (True, 0)
    assert doc["tracker"]["settled"] == 20


async def test_v2_client_link_quality(core: ClientCore, clock: FakeClock) -> None:
    """make_client_core tracked 20 datagrams: eth0 first with 18, eth1 4 ms behind it and
    alone with 2 (eth1 saved 2, eth0 lost 2)."""
    clock.advance(5)
    _, doc = await get_json(create_app(core, None, clock=clock), "/api/v2/status")
    links = {link["name"]: link["quality"] for link in doc["links"]}
    minute = {"seconds": 5.0, "won": 18, "late": 0, "lost": 2, "saved": 0}
    assert links["eth0"] == {
        "won": 18,
        "late": 0,
        "lost": 2,
        "saved": 0,
        "lastMinute": minute,  # nothing sampled yet: since the start
        "lossPct": 10.0,
        "lossPctTotal": 10.0,
        "firstSharePct": 90.0,
        "lagP50Ms": None,
        "lagP95Ms": None,
        "lagMaxMs": None,
        "stale": 0,
        "forged": 0,
        "repeats": 0,
        "carrying": True,
        "carryingForS": 5.0,
        "lastSavedAgeS": None,
        "idleForHour": False,
    }
    eth1 = links["eth1"]
    assert (eth1["won"], eth1["late"], eth1["lost"], eth1["saved"]) == (2, 18, 0, 2)
    assert (eth1["lossPct"], eth1["firstSharePct"]) == (0.0, 10.0)
    assert (eth1["lagP50Ms"], eth1["lagP95Ms"]) == (5.0, 5.0)  # 4 ms: the (3, 5] ms bucket
    assert eth1["lagMaxMs"] == pytest.approx(4.0)
    assert eth1["lastSavedAgeS"] == 5.0
    assert links["wwan0"]["lossPct"] is None and links["wwan0"]["firstSharePct"] == 0.0
    assert links["wwan0"]["carrying"] is False


async def test_v2_last_minute_comes_from_the_history(core: ClientCore, clock: FakeClock) -> None:
    app = create_app(core, None, clock=clock)
    dashboard = dashboard_of(app)
    dashboard.sample()  # the first checkpoint: 20 datagrams already tracked
    for _ in range(70):
        clock.advance(1.0)
        dashboard.sample()
    # one more minute of traffic: 20 datagrams, eth1 alone with the last 2 again
    track_copies(core, clock(), first=100)
    clock.advance(1.0)
    dashboard.sample()
    _, doc = await get_json(app, "/api/v2/status")
    links = {link["name"]: link["quality"] for link in doc["links"]}
    eth0, eth1 = links["eth0"], links["eth1"]
    assert eth0["lastMinute"]["won"] == 18 and eth0["won"] == 36
    assert eth1["lastMinute"] == {
        "seconds": eth1["lastMinute"]["seconds"],
        "won": 2,
        "late": 18,
        "lost": 0,
        "saved": 2,
    }
    assert 60.0 <= eth1["lastMinute"]["seconds"] <= 65.0
    assert eth0["lossPct"] == 10.0 and eth0["lossPctTotal"] == 10.0
    # a minute later with nothing new, the last minute is empty, the totals stay
    for _ in range(66):
        clock.advance(1.0)
        dashboard.sample()
    _, doc = await get_json(app, "/api/v2/status")
    eth0 = next(link["quality"] for link in doc["links"] if link["name"] == "eth0")
    assert (eth0["lastMinute"]["won"], eth0["lossPct"], eth0["firstSharePct"]) == (0, None, None)
    assert (eth0["won"], eth0["lossPctTotal"]) == (36, 10.0)
    # per-second copy deltas are in the history samples (won, late, lost, saved after traffic)
    _, history = await get_json(app, "/api/v2/history")
    moved = [s["links"]["eth1"][4:] for s in history["samples"] if "eth1" in s["links"]]
    assert moved == [[2, 18, 0, 2]]


async def test_v2_a_link_that_saved_nothing_for_an_hour_is_the_one_to_drop(
    core: ClientCore, clock: FakeClock
) -> None:
    clock.advance(3600)
    track_copies(core, clock(), first=100)  # eth1 saves 2 again; eth0 never saved anything
    clock.advance(10)
    _, doc = await get_json(create_app(core, None, clock=clock), "/api/v2/status")
    idle = {link["name"]: link["quality"]["idleForHour"] for link in doc["links"]}
    assert idle == {"eth0": True, "eth1": False, "wwan0": False, "wg0": False}


async def test_v2_flags_a_link_that_went_quiet(core: ClientCore, clock: FakeClock) -> None:
    eth0, eth1 = index_of(core, "eth0"), index_of(core, "eth1")
    path_of(core, eth0).stats.last_rx = clock()
    path_of(core, eth1).stats.last_rx = clock()
    clock.advance(20)
    path_of(core, eth0).stats.last_rx = clock() - 1  # eth0 still hears the server, eth1 does not
    _, doc = await get_json(create_app(core, None, clock=clock), "/api/v2/status")
    quiet = {link["name"]: link["quiet"] for link in doc["links"]}
    assert quiet == {"eth0": False, "eth1": True, "wwan0": False, "wg0": False}
    path_of(core, eth0).stats.last_rx = clock() - 19  # both silent: the tunnel is idle, not a link
    _, doc = await get_json(create_app(core, None, clock=clock), "/api/v2/status")
    assert not any(link["quiet"] for link in doc["links"])


async def test_v2_server_status_groups_addresses_under_clients(clock: FakeClock) -> None:
    core = make_server_core(clock)
    clock.advance(1.0)
    _, doc = await get_json(create_app(core, None, clock=clock), "/api/v2/status")
    assert doc["type"] == "server"
    assert (doc["clientsAlive"], doc["addressesAlive"], doc["addressesPending"]) == (2, 3, 1)
    assert (doc["dedup"], doc["duplicatesDropped"], doc["maxPeers"]) == (True, 18, 128)
    assert doc["probesOpen"] == 0
    assert doc["clientTimeout"] == 30.0
    assert "clients_evicted" in doc["counters"] and "addresses_proven" in doc["counters"]
    one, two = doc["clients"]
    assert (one["id"], one["sessions"], one["peerSessions"]) == (1, ["0000004d"], ["0000000b"])
    assert one["firstSeenAge"] == pytest.approx(3.5)
    assert one["lastReceivedAge"] == pytest.approx(1.0)
    assert (one["addressesAlive"], one["duplicatesDropped"]) == (2, 18)
    assert [a["address"] for a in one["addresses"]] == ["203.0.113.7:40001", "203.0.113.9:40002"]
    a7, a9 = one["addresses"]
    assert a9 == {
        "address": "203.0.113.9:40002",
        "family": "ipv4",
        "localAddress": "192.0.2.1",
        "state": "alive",
        "provenBy": "handshake",
        "probe": False,
        "last": 1,
        "lastReceivedAge": 1.0,
        "firstSeenAge": 3.5,
        "rx": {"datagrams": 22, "bytes": a9["rx"]["bytes"], "bytesPerSecond": 0.0},
        "tx": {
            "datagrams": 4,
            "bytes": 512,
            "bytesPerSecond": 0.0,
            "dropped": {"buffer_full": 1, "error": 0},
            "lastErrno": "",
        },
        "quality": a9["quality"],
    }
    assert a7["localAddress"] == "" and a7["lastReceivedAge"] == pytest.approx(3.5)
    q7, q9 = a7["quality"], a9["quality"]
    assert (q7["won"], q7["late"], q7["lost"], q7["saved"]) == (18, 0, 2, 0)
    assert (q9["won"], q9["late"], q9["lost"], q9["saved"]) == (3, 18, 0, 2)
    assert (q7["lossPct"], q7["firstSharePct"], q9["firstSharePct"]) == (10.0, 85.7, 14.3)
    assert q9["lagP95Ms"] == 5.0
    assert one["quality"]["won"] == 21 and one["quality"]["lastMinute"]["saved"] == 2
    assert one["rx"]["datagrams"] == a7["rx"]["datagrams"] + 22
    assert one["tx"]["dropped"] == {"buffer_full": 1, "error": 0}
    assert [a["address"] for a in two["addresses"]] == ["198.51.100.9:41001"]
    assert two["quality"]["lastMinute"]["won"] == 1
    assert doc["pending"] == [
        {
            "address": "192.0.2.66:5353",
            "localAddress": "192.0.2.1",
            "probe": False,
            "last": 2,
            "lastReceivedAge": 2.5,
            "firstSeenAge": 2.5,
            "rx": {"datagrams": 1, "bytes": 148, "bytesPerSecond": 0.0},
        }
    ]


def test_the_event_stream_caps_addresses_keeping_recent_clients_whole(clock: FakeClock) -> None:
    def address(n: int, age: float) -> dict[str, Any]:
        return {"address": f"203.0.113.{n}:1", "lastReceivedAge": age}

    status = {
        "type": "server",
        "clients": [
            {"id": 1, "lastReceivedAge": 9.0, "addresses": [address(1, 9.0), address(2, 9.5)]},
            {"id": 2, "lastReceivedAge": 0.5, "addresses": [address(n, n) for n in range(3)]},
            {"id": 3, "lastReceivedAge": 1.0, "addresses": [address(9, 1.0)]},
        ],
        "pending": [address(50 + n, n) for n in range(5)],
    }
    capped = cap_server_status(status, addresses=5, pending=2)
    assert [g["id"] for g in capped["clients"]] == [1, 2, 3]  # in their order, not by age
    assert [len(g["addresses"]) for g in capped["clients"]] == [1, 3, 1]
    assert capped["clients"][0]["addresses"] == [address(1, 9.0)]  # its most recent one
    assert capped["clients"][0]["addressesOmitted"] == 1
    assert capped["clientsOmitted"] == 0
    assert [p["address"] for p in capped["pending"]] == ["203.0.113.50:1", "203.0.113.51:1"]
    assert capped["pendingOmitted"] == 3
    capped = cap_server_status(status, addresses=3, pending=10)
    assert [g["id"] for g in capped["clients"]] == [2]
    assert capped["clientsOmitted"] == 2
    assert cap_server_status(status, addresses=6, pending=5) is status  # nothing to cap
    assert len(status["clients"][0]["addresses"]) == 2  # the status itself is left alone


async def test_the_stream_of_a_flooded_server_is_capped(clock: FakeClock) -> None:
    core = make_server_core(clock)
    local = socket.inet_aton("192.0.2.1")
    for n in range(STREAM_PENDING_SHOWN + 10):
        message = struct.pack("<II", 1, 1000 + n) + bytes(140)
        core.from_client(("192.0.2.77", 2000 + n), local, 1, message, len(message), clock())
    dashboard = dashboard_of(create_app(core, None, clock=clock))
    event = dashboard.first_event()
    data = json.loads(event.split("data: ", 1)[1])
    status = data["status"]
    assert len(status["pending"]) == STREAM_PENDING_SHOWN
    assert status["pendingOmitted"] == 11
    assert status["addressesPending"] == STREAM_PENDING_SHOWN + 11
    assert [len(g["addresses"]) for g in status["clients"]] == [2, 1]


async def test_history_and_rates(core: ClientCore, clock: FakeClock) -> None:
    app = create_app(core, None, clock=clock)
    dashboard = dashboard_of(app)
    stats = path_of(core, index_of(core, "eth0")).stats
    stats.tx_bytes, stats.rx_bytes = 5_000, 1_000
    assert dashboard.sample() is None  # the first sample is only the baseline
    for _ in range(3):
        clock.advance(1.0)
        stats.tx_bytes += 2_000
        stats.rx_bytes += 500
        stats.tx_datagrams += 2
        dashboard.sample()
    _, history = await get_json(app, "/api/v2/history")
    assert history["periodSeconds"] == 1.0
    assert history["fields"] == [
        "txBytes",
        "rxBytes",
        "txDatagrams",
        "rxDatagrams",
        "won",
        "late",
        "lost",
        "saved",
    ]
    assert [s["links"] for s in history["samples"]] == [{"eth0": [2000, 500, 2, 0, 0, 0, 0, 0]}] * 3
    assert [s["dt"] for s in history["samples"]] == [1.0, 1.0, 1.0]
    _, status = await get_json(app, "/api/v2/status")
    eth0 = next(link for link in status["links"] if link["name"] == "eth0")
    assert eth0["tx"]["bytesPerSecond"] == 2000.0
    assert eth0["rx"]["bytesPerSecond"] == 500.0


# ---- /metrics ------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_metrics_client(core: ClientCore, clock: FakeClock) -> None:
    stats = path_of(core, index_of(core, "eth0")).stats
    stats.tx_datagrams, stats.tx_dropped_full, stats.rx_bytes, stats.rx_no_peer = 9, 4, 1234, 2
    stats.last_rx = clock() - 2
    core.stats.no_uplink_drops = 6
    response = await create_app(core, None, clock=clock).test_client().get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    m = parse_metrics(await response.get_data(as_text=True))
    eth0 = (("interface", "eth0"), ("label", "Fiber"))
    eth1 = (("interface", "eth1"), ("label", ""))
    assert m["engarde_info"] == {(("role", "client"), ("version", __version__)): 1.0}
    assert m["engarde_uplink_tx_datagrams_total"][eth0] == 9
    assert m["engarde_uplink_tx_dropped_total"][(*eth0, ("reason", "buffer_full"))] == 4
    assert m["engarde_uplink_tx_dropped_total"][(*eth0, ("reason", "error"))] == 0
    assert m["engarde_uplink_rx_bytes_total"][eth0] == 1234
    assert m["engarde_uplink_rx_dropped_total"][(*eth0, ("reason", "no_peer"))] == 2
    assert m["engarde_uplink_up"][eth0] == 1.0
    assert m["engarde_uplink_up"][(("interface", "wwan0"), ("label", ""))] == 0.0
    assert m["engarde_uplink_excluded"][(("interface", "wg0"), ("label", ""))] == 1.0
    assert (
        m["engarde_uplink_state"][(("interface", "wwan0"), ("label", ""), ("state", "no-carrier"))]
        == 1.0
    )
    assert m["engarde_uplink_last_receive_age_seconds"] == {eth0: 2.0}  # eth1 never received
    assert eth1 in m["engarde_uplink_rx_datagrams_total"]
    assert m["engarde_uplinks_active"] == {(): 2.0}
    assert m["engarde_no_uplink_dropped_total"] == {(): 6.0}
    assert m["engarde_uptime_seconds"] == {(): 0.0}
    assert m["engarde_link_copies_won_total"][eth0] == 18
    assert m["engarde_link_copies_lost_total"][eth0] == 2
    assert m["engarde_link_copies_late_total"][eth1] == 18
    assert m["engarde_link_copies_saved_total"][eth1] == 2
    buckets = m["engarde_link_lag_seconds_bucket"]
    assert buckets[(*eth1, ("le", "0.003"))] == 0
    assert buckets[(*eth1, ("le", "0.005"))] == 18  # 4 ms late
    assert buckets[(*eth1, ("le", "+Inf"))] == 18
    assert len([k for k in buckets if k[:2] == eth1]) == len(LAG_BOUNDS_S) + 1
    assert m["engarde_link_lag_seconds_count"][eth1] == 18
    assert m["engarde_link_lag_seconds_sum"][eth1] == pytest.approx(18 * 0.004)  # midpoint
    assert m["engarde_link_lag_seconds_count"][eth0] == 0
    assert m["engarde_duplicates_dropped_total"] == {(): 0.0}
    for name in ("rx_datagrams", "rx_bytes", "tx_datagrams", "tx_bytes"):
        assert f"engarde_wireguard_{name}_total" in m
    assert "engarde_server_clients" not in m
    assert not [name for name in m if name.startswith("python_") or name.startswith("process_")]


async def test_metrics_server(clock: FakeClock) -> None:
    response = (
        await create_app(make_server_core(clock), None, clock=clock)
        .test_client()
        .get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    response = (
        await create_app(make_server_core(clock), None, clock=clock).test_client().get("/metrics")
    )
    m = parse_metrics(await response.get_data(as_text=True))
    a7 = (("address", "203.0.113.7:40001"), ("client", "1"))
    a9 = (("address", "203.0.113.9:40002"), ("client", "1"))
    b1 = (("address", "198.51.100.9:41001"), ("client", "2"))
    v = (("address", "192.0.2.66:5353"), ("client", ""))
    assert m["engarde_info"] == {(("role", "server"), ("version", __version__)): 1.0}
    assert m["engarde_server_address_rx_datagrams_total"][a7] == 19  # handshake + 18 copies
    assert v not in m["engarde_server_address_rx_datagrams_total"]  # unproven: no series
    # the three handshakes before their addresses were proven, and V's
    assert m["engarde_server_unproven_rx_datagrams_total"] == {(): 4.0}
    assert m["engarde_server_address_tx_bytes_total"][a9] == 512
    assert m["engarde_server_address_tx_dropped_total"][(*a9, ("reason", "buffer_full"))] == 1
    assert m["engarde_server_address_alive"] == {a7: 1.0, a9: 1.0, b1: 1.0}
    assert m["engarde_server_address_last_receive_age_seconds"][a7] == 2.5
    assert m["engarde_server_addresses"] == {
        (("state", "alive"),): 3.0,
        (("state", "pending"),): 1.0,
        (("state", "expired"),): 0.0,
    }
    assert m["engarde_server_clients"] == {(): 2.0}
    assert m["engarde_server_client_addresses_alive"] == {
        (("client", "1"),): 2.0,
        (("client", "2"),): 1.0,
    }
    assert m["engarde_server_client_duplicates_dropped_total"][(("client", "1"),)] == 18
    assert m["engarde_duplicates_dropped_total"] == {(): 18.0}
    assert m["engarde_link_copies_won_total"] == {a7: 18.0, a9: 3.0, b1: 1.0}  # v: never measured
    assert m["engarde_link_copies_lost_total"][a7] == 2
    assert m["engarde_link_copies_saved_total"][a9] == 2
    assert m["engarde_link_lag_seconds_bucket"][(*a9, ("le", "0.005"))] == 18
    assert m["engarde_server_addresses_seen_total"] == {(): 4.0}
    assert m["engarde_server_addresses_proven_total"] == {(): 3.0}
    assert m["engarde_server_clients_created_total"] == {(): 2.0}
    for name in (
        "addresses_expired",
        "addresses_evicted",
        "pending_evicted",
        "addresses_dropped",
        "clients_expired",
        "clients_evicted",
        "clients_merged",
        "wrong_session_datagrams",
        "probes_opened",
        "probes_refused",
        "initiation_mismatches",
        "cookies_to_unproven",
        "unroutable_from_wireguard",
        "upstream_errors",
        "junk_dropped",
        "unproven_dropped",
    ):
        assert m[f"engarde_server_{name}_total"] == {(): 0.0}, name
    assert m["engarde_server_probes_open"] == {(): 0.0}
    assert not [name for name in m if name.startswith("engarde_server_client_rx")]
    assert "engarde_uplink_up" not in m


# ---- the page --------------------------------------------------------------------------------


async def test_page_and_assets_ship_in_the_package(core: ClientCore, clock: FakeClock) -> None:
    client = create_app(core, None, clock=clock).test_client()
    page = await client.get("/")
    assert page.status_code == 200
    html = await page.get_data(as_text=True)
    assert page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset, kind in (("static/app.js", "javascript"), ("static/style.css", "text/css")):
        assert f'"{asset}"' in html
        response = await client.get("/" + asset)
        assert response.status_code == 200
        assert kind in response.headers["Content-Type"]
    assert "http://" not in html and "https://" not in html  # no CDN, nothing external


# ---- served for real: events, port taken, shutdown ----------------------------------------------


async def test_event_stream_over_hypercorn(clock: FakeClock) -> None:
    core = make_client_core(clock)
    config = WebManagerConfig(
        listenAddr=f"127.0.0.1:{free_port()}", username="admin", password="s3cret"
    )
    port = int(config.listenAddr.rsplit(":", 1)[1])
    auth = basic("admin", "s3cret")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(run_dashboard, core, config)
        assert url == f"http://127.0.0.1:{port}"
        events = EventStream(port, headers=auth)
        with trio.fail_after(10):
            async with aclosing(events.open()) as stream:
                name, first = await anext(stream)
                assert events.status == 200
                assert events.response_headers["content-type"].startswith("text/event-stream")
                assert name == "snapshot"
                assert first["status"]["type"] == "client"
                assert {link["name"] for link in first["status"]["links"]} >= {"eth0", "eth1"}
                assert first["history"]["capacity"] == 300
                reply = await http(port, "POST", "/api/v1/exclude", b'{"interface":"eth0"}', auth)
                assert (reply.status, reply.json()) == (200, {"status": "ok"})
                # pushed at once, not at the next tick
                while True:
                    name, update = await anext(stream)
                    assert name == "update"
                    eth0 = next(x for x in update["status"]["links"] if x["name"] == "eth0")
                    if eth0["status"] == "excluded":
                        break
                # a tick from the sampler follows within a period, with a history sample
                while True:
                    name, update = await anext(stream)
                    if update["sample"] is not None:
                        break
                start = trio.current_time()
                nursery.cancel_scope.cancel()
                with pytest.raises(StopAsyncIteration):  # the stream ends with the dashboard
                    await anext(stream)
                assert events.ended
    assert trio.current_time() - start < 2.0


async def test_port_taken_is_one_clear_error_before_started(clock: FakeClock) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = WebManagerConfig(listenAddr=f"127.0.0.1:{port}")
        with pytest.raises(DashboardError) as caught:
            await run_dashboard(make_client_core(clock), config)
        assert str(caught.value) == (
            f"cannot serve the dashboard on 127.0.0.1:{port}: Address already in use [EADDRINUSE]"
        )
        assert isinstance(caught.value.__cause__, OSError)

        started = False

        async def starter(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
            nonlocal started
            await run_dashboard(make_client_core(clock), config, task_status=task_status)
            started = True

        async with trio.open_nursery() as nursery:
            with pytest.raises(DashboardError):
                await nursery.start(starter)
        assert not started


async def test_address_not_on_this_host_is_a_clear_error(clock: FakeClock) -> None:
    config = WebManagerConfig(listenAddr="203.0.113.1:9001")  # TEST-NET-3: not ours
    with pytest.raises(DashboardError, match=r"203\.0\.113\.1:9001: .*\[EADDRNOTAVAIL\]"):
        await run_dashboard(make_client_core(clock), config)


async def test_ipv6_loopback(clock: FakeClock) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    port = free_port()
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    config = WebManagerConfig(listenAddr=f"[::1]:{port}")
    async with trio.open_nursery() as nursery:
        url = await nursery.start(run_dashboard, make_client_core(clock), config)
        assert url == f"http://[::1]:{port}"
        stream = await trio.open_tcp_stream("::1", port)
        async with stream:
            await stream.send_all(b"GET /api/v1/get-list HTTP/1.1\r\nHost: [::1]\r\n\r\n")
            assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 200")
        nursery.cancel_scope.cancel()


# ---- the dashboard only uses the core's snapshot and commands ----------------------------------

CORE_API = {"snapshot", "exclude", "include", "swap_exclusion", "reset_exclusions"}


def test_web_uses_only_the_core_snapshot_and_commands() -> None:
    for path in sorted(WEB.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("engarde.net"), path.name
            if isinstance(node, ast.Attribute):
                target = node.value
                is_core = (isinstance(target, ast.Name) and target.id == "core") or (
                    isinstance(target, ast.Attribute) and target.attr == "core"
                )
                if is_core:
                    assert node.attr in CORE_API, f"{path.name}: core.{node.attr}"
            if isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "socket.socket",
                "socket.create_connection",
            ):
                raise AssertionError(f"{path.name} opens a socket")


def test_create_app_refuses_other_objects() -> None:
    with pytest.raises(TypeError):
        create_app(object(), None)  # type: ignore[arg-type]
