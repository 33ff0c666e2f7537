"""Request pacing and the traffic history: pure parts of the web side, plus pacing in the app."""

from __future__ import annotations

import json

import pytest
import trio

from engarde.web.app import create_app
from engarde.web.history import History
from engarde.web.pacing import Pacer
from tests.web.helpers import FakeClock, make_client_core


def test_pacer_admits_a_burst_then_spreads_and_finally_refuses() -> None:
    pacer = Pacer(rate_per_s=10, burst=3, max_wait_s=1.0)
    waits = [pacer.reserve(0.0) for _ in range(14)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:13] == pytest.approx([0.1 * i for i in range(1, 11)])
    assert waits[13] is None  # would wait 1.1 s: refused, and it reserves nothing
    assert pacer.reserve(0.0) is None
    assert pacer.reserve(10.0) == 0.0  # idle long enough: the burst is available again


async def test_hammering_the_api_is_slowed_not_served_faster(
    autojump_clock: trio.abc.Clock,
) -> None:
    clock = FakeClock()
    app = create_app(make_client_core(clock), None, clock=clock)
    client = app.test_client()
    start = trio.current_time()
    for _ in range(60):
        response = await client.get("/api/v2/status")
        assert response.status_code == 200
    # 40 at once (the burst), the other 20 at 20 per second
    assert trio.current_time() - start == pytest.approx(1.0, abs=0.06)


async def test_too_many_waiting_requests_get_429() -> None:
    clock = FakeClock()
    app = create_app(
        make_client_core(clock),
        None,
        clock=clock,
        pacer=Pacer(rate_per_s=1, burst=1, max_wait_s=0.5),
    )
    client = app.test_client()
    assert (await client.get("/api/v1/get-list")).status_code == 200
    response = await client.get("/api/v1/get-list")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert json.loads(await response.get_data(as_text=True)) == {
        "error": "too many requests, slow down"
    }


def test_history_deltas_resets_and_new_keys() -> None:
    history = History(capacity=3)
    assert history.add(10.0, {"eth0": (100, 50, 2, 1, 5, 0, 0, 0)}) is None  # baseline
    sample = history.add(
        11.0, {"eth0": (300, 50, 4, 1, 7, 1, 0, 1), "eth1": (10, 0, 1, 0, 0, 0, 0, 0)}
    )
    assert sample is not None
    # eth1 is new since the baseline: all it did is recent
    assert sample.deltas == {"eth0": (200, 0, 2, 0, 2, 1, 0, 1), "eth1": (10, 0, 1, 0, 0, 0, 0, 0)}
    assert sample.rates() == {"eth0": (200.0, 0.0), "eth1": (10.0, 0.0)}
    sample = history.add(
        13.0, {"eth0": (40, 5, 1, 1, 9, 1, 0, 1), "eth1": (10, 0, 1, 0, 0, 0, 0, 0)}
    )
    assert sample is not None
    assert sample.dt == 2.0
    # eth0's traffic counters restarted (taken whole), its copy counters did not; eth1 idle
    assert sample.deltas == {"eth0": (40, 5, 1, 1, 2, 0, 0, 0)}
    sample = history.add(14.0, {"eth0": (50, 5, 2, 1, 3, 0, 0, 0)})
    assert sample is not None
    assert sample.deltas == {"eth0": (10, 0, 1, 0, 3, 0, 0, 0)}  # copies started over
    history.add(15.0, {})
    assert [s.seq for s in history.samples] == [2, 3, 4]  # capacity 3: the oldest went
    doc = history.as_json(1.0)
    assert doc["fields"][4:] == ["won", "late", "lost", "saved"]
    assert doc["samples"][-1] == {"seq": 4, "t": 15.0, "dt": 1.0, "links": {}}
