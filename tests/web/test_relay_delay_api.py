"""The relay's added delay in /api/v2/status (`latency`) and /metrics, for both roles."""

from __future__ import annotations

import json
from typing import Any

from engarde.core.latency import STALL_S, Stall
from engarde.web.app import create_app
from tests.web.helpers import FakeClock, make_client_core, make_server_core
from tests.web.test_api import parse_metrics


def feed(core: Any, clock: FakeClock) -> None:
    for _ in range(98):
        core.delay.add(0.0002)
    core.delay.add(0.004)
    if core.delay.add(0.031):
        core.delay.add_stall(Stall(clock() - 3, 0.031, "wireguard", "gc gen2 (30.2 ms)", 0.0, 0.03))


async def test_status_has_latency_for_both_roles() -> None:
    clock = FakeClock()
    for core in (make_client_core(clock), make_server_core(clock)):
        app = create_app(core, None, clock=clock)
        response = await app.test_client().get("/api/v2/status")
        empty = json.loads(await response.get_data(as_text=True))["latency"]
        assert empty["samples"] == 0 and empty["maxMs"] is None
        assert empty["worstRecentStall"] is None
        feed(core, clock)
        response = await app.test_client().get("/api/v2/status")
        assert response.status_code == 200
        latency = json.loads(await response.get_data(as_text=True))["latency"]
        assert latency["samples"] == 100
        assert latency["p50Ms"] == 0.2
        assert latency["p99Ms"] == 4.0
        assert latency["maxMs"] == latency["recentMaxMs"] == 31.0
        assert latency["worstRecentStall"] == {
            "agoS": 3.0,
            "delayMs": 31.0,
            "socket": "wireguard",
            "doing": "gc gen2 (30.2 ms)",
            "cpuWaitMs": 0.0,
            "blockedMs": 30.0,
        }


async def test_metrics_histogram_and_max_gauge() -> None:
    clock = FakeClock()
    for core in (make_client_core(clock), make_server_core(clock)):
        feed(core, clock)
        response = await create_app(core, None, clock=clock).test_client().get("/metrics")
        assert response.status_code == 200
        m = parse_metrics(await response.get_data(as_text=True))
        buckets = {dict(k)["le"]: v for k, v in m["engarde_relay_delay_seconds_bucket"].items()}
        assert buckets["0.00025"] == 98
        assert buckets["0.005"] == 99
        assert buckets["0.05"] == buckets["+Inf"] == 100
        assert m["engarde_relay_delay_seconds_count"][()] == 100
        assert abs(m["engarde_relay_delay_seconds_sum"][()] - (98 * 0.0002 + 0.035)) < 1e-9
        assert m["engarde_relay_delay_max_seconds"][()] == 0.031
    assert STALL_S < 0.004  # the 4 ms sample is a stall, but only the one explained is listed
