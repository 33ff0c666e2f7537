"""A spoofed-source flood fed straight into a server core: the dashboard's history, /metrics,
snapshots and events stay bounded (issue 13, item 1). The real flood over sockets is
tests/net/test_dashboard_flood.py."""

from __future__ import annotations

import json
import socket

import trio

from engarde.core import wireguard as wg
from engarde.core.server import ServerCore
from engarde.web.app import create_app, dashboard_of
from engarde.web.history import MAX_KEYS
from engarde.web.live import PENDING_SHOWN, STREAM_PENDING_SHOWN, Dashboard
from tests.web.helpers import A7, A9, B1, FakeClock, data, initiation, make_server_core, sized
from tests.web.test_api import parse_metrics

FLOOD_PER_TICK = 1000  # new spoofed sources per one-second tick
TICKS = 10  # 10k sources in all, ten times the pending table (maxClients 1024)
LOCAL = socket.inet_aton("192.0.2.1")


def _flood(core: ServerCore, tick: int, now: float) -> None:
    """One second of initiation-shaped datagrams, each from a source never seen before."""
    message, n = sized(initiation(0x1000 + tick))
    for i in range(FLOOD_PER_TICK):
        source = f"10.{tick}.{i // 256}.{i % 256}"
        core.from_client((source, 1024 + i), LOCAL, wg.INITIATION, message, n, now)


def _keep_clients_talking(core: ServerCore, counter: int, now: float) -> None:
    for address, session in ((A7, 0x4D), (A9, 0x4D), (B1, 0x58)):
        core.from_client(address, LOCAL, wg.DATA, *sized(data(session, counter)), now)


def _history_entries(dashboard: Dashboard) -> int:
    return sum(len(s.deltas) for s in dashboard.history.samples)


async def test_history_metrics_and_events_stay_bounded_under_10k_spoofed_sources() -> None:
    clock = FakeClock()
    core = make_server_core(clock)
    app = create_app(core, None, clock=clock)
    dashboard = dashboard_of(app)
    client = app.test_client()
    dashboard.sample()  # baseline
    sizes: list[int] = []
    for tick in range(TICKS):
        clock.advance(1.0)
        _flood(core, tick, clock())
        _keep_clients_talking(core, 1000 + tick, clock())
        sample = dashboard.sample()
        assert sample is not None
        assert set(sample.deltas) <= {
            "203.0.113.7:40001",
            "203.0.113.9:40002",
            "198.51.100.9:41001",
        }, (
            f"tick {tick}: the history has series for unproven addresses: "
            f"{sorted(sample.deltas)[:5]} ... ({len(sample.deltas)} keys)"
        )
        assert sample.unproven is not None
        rx_bytes, rx_datagrams, pending = sample.unproven
        assert rx_datagrams == FLOOD_PER_TICK, sample.unproven
        assert rx_bytes == FLOOD_PER_TICK * 148, sample.unproven
        # V and the flood, up to the table's cap (maxClients)
        assert pending == min(core.max_addresses, 1 + (tick + 1) * FLOOD_PER_TICK), sample.unproven
        sizes.append(len(dashboard.first_event()))

    assert core.stats.addresses_seen >= TICKS * FLOOD_PER_TICK
    assert _history_entries(dashboard) <= 3 * TICKS, _history_entries(dashboard)
    # the page load does not grow with the flood (only with the history's ticks)
    assert max(sizes) - min(sizes) < 20_000, sizes
    event = json.loads(dashboard.first_event().split("data: ", 1)[1])
    status = event["status"]
    assert len(status["pending"]) == STREAM_PENDING_SHOWN
    assert status["addressesPending"] == core.max_addresses
    assert status["pendingOmitted"] == core.max_addresses - STREAM_PENDING_SHOWN
    assert event["history"]["samples"][-1]["unproven"] == [FLOOD_PER_TICK * 148, 1000, 1024]

    # the API's status describes a bounded number of unproven addresses too
    doc = json.loads(await (await client.get("/api/v2/status")).get_data(as_text=True))
    assert len(doc["pending"]) == PENDING_SHOWN
    assert doc["addressesPending"] == core.max_addresses
    history = json.loads(await (await client.get("/api/v2/history")).get_data(as_text=True))
    assert len(history["samples"]) == TICKS
    assert all(len(s["links"]) <= 3 for s in history["samples"]), history["samples"][-1]

    # /metrics: one series per proven address, whatever the flood; the flood is counts
    text = await (await client.get("/metrics")).get_data(as_text=True)
    m = parse_metrics(text)
    assert len(m["engarde_server_address_rx_datagrams_total"]) == 3, len(text)
    assert m["engarde_server_addresses"][(("state", "pending"),)] == core.max_addresses
    assert m["engarde_server_unproven_rx_datagrams_total"][()] >= TICKS * FLOOD_PER_TICK
    assert len(text) < 40_000, f"/metrics is {len(text)} bytes"


def test_snapshot_describes_at_most_the_pending_asked_for() -> None:
    clock = FakeClock()
    core = make_server_core(clock)
    _flood(core, 0, clock())
    snap = core.snapshot(clock(), pending_shown=5)
    unproven = [s for s in snap["sockets"] if not s["confirmed"]]
    assert len(unproven) == 5
    assert snap["pendingCount"] == FLOOD_PER_TICK + 1  # and V
    # the most recently heard first
    assert unproven[0]["address"] == f"10.0.3.{(FLOOD_PER_TICK - 1) % 256}:{1023 + FLOOD_PER_TICK}"
    assert len([s for s in core.snapshot(clock())["sockets"] if not s["confirmed"]]) == 1001
    assert core.stats.unproven_rx_datagrams == FLOOD_PER_TICK + 4  # 3 handshakes + V earlier


def test_a_sample_keeps_at_most_max_keys_and_counts_the_rest() -> None:
    from engarde.web.history import History

    history = History(capacity=3, max_keys=MAX_KEYS)
    keys = [f"k{i}" for i in range(MAX_KEYS + 7)]
    history.add(0.0, {k: (0,) * 8 for k in keys})
    sample = history.add(1.0, {k: (1, 1, 1, 1, 0, 0, 0, 0) for k in keys})
    assert sample is not None
    assert len(sample.deltas) == MAX_KEYS
    assert sample.keys_omitted == 7
    assert sample.as_json()["keysOmitted"] == 7


async def test_the_sampler_runs_with_a_flooded_core() -> None:
    """run_sampler's tick goes through the same bounded path (no crash, events published)."""
    clock = FakeClock()
    core = make_server_core(clock)
    _flood(core, 0, clock())
    dashboard = dashboard_of(create_app(core, None, clock=clock))
    dashboard.sample()
    seq = dashboard.broadcast.seq
    clock.advance(1.0)
    _flood(core, 1, clock())
    dashboard.sample()
    assert dashboard.broadcast.seq == seq + 1
    await trio.lowlevel.checkpoint()
