"""DelayRecorder: histogram, quantiles, maximum, stalls and the worst recent one (pure)."""

from __future__ import annotations

import math

import pytest

from engarde.core.latency import (
    BOUNDS_S,
    IMPLAUSIBLE_S,
    RECENT_S,
    RECENT_SAMPLES,
    STALL_S,
    DelayRecorder,
    Stall,
    quantile,
)


def test_empty_recorder_says_nothing_was_measured() -> None:
    doc = DelayRecorder().as_json(100.0)
    histogram = doc.pop("histogram")
    assert histogram == {"boundsS": list(BOUNDS_S), "counts": [0] * (len(BOUNDS_S) + 1), "sumS": 0}
    assert doc == {
        "samples": 0,
        "p50Ms": None,
        "p99Ms": None,
        "recentMaxMs": None,
        "maxMs": None,
        "stalls": 0,
        "maxBlockedMs": 0.0,
        "mostBlockedStall": None,
        "worstRecentStall": None,
        "lastStalls": [],
    }


def test_histogram_is_cumulative_with_exact_sum_and_max() -> None:
    rec = DelayRecorder()
    for delay in (0.00005, 0.0001, 0.0004, 0.004, 0.004, 2.0):
        rec.add(delay)
    buckets = dict(rec.buckets())
    assert buckets[0.0001] == 2  # bounds are inclusive upper bounds (le)
    assert buckets[0.0005] == 3
    assert buckets[0.003] == 3
    assert buckets[0.005] == 5
    assert buckets[BOUNDS_S[-1]] == 5  # 2 s lies beyond the last bound
    assert buckets[math.inf] == 6 == rec.samples
    assert rec.sum_s == pytest.approx(2.00855)
    assert rec.max_s == 2.0
    assert [n for _, n in rec.buckets()] == sorted(n for _, n in rec.buckets())


def test_quantiles_over_recent_samples() -> None:
    rec = DelayRecorder()
    for i in range(1, 101):
        rec.add(i / 100_000)  # 0.01 ms .. 1 ms
    doc = rec.as_json(0.0)
    assert doc["p50Ms"] == 0.5
    assert doc["p99Ms"] == 0.99
    assert doc["recentMaxMs"] == doc["maxMs"] == 1.0
    assert doc["samples"] == 100


def test_recent_window_forgets_old_samples_but_max_since_start_stays() -> None:
    rec = DelayRecorder()
    rec.add(0.05)
    for _ in range(RECENT_SAMPLES):
        rec.add(0.0002)
    doc = rec.as_json(0.0)
    assert doc["recentMaxMs"] == 0.2
    assert doc["maxMs"] == 50.0
    assert doc["p99Ms"] == 0.2


def test_stall_threshold_and_bad_values() -> None:
    rec = DelayRecorder()
    assert rec.add(STALL_S * 1.5) is True
    assert rec.add(STALL_S / 2) is False
    assert rec.add(-0.001) is False  # the clock moved back a little: counts as 0
    assert rec.buckets()[0][1] == 1
    assert rec.add(IMPLAUSIBLE_S * 2) is False  # a clock step, not a delay
    assert rec.add(float("nan")) is False
    assert rec.implausible == 2
    assert rec.samples == 3
    assert rec.max_s == STALL_S * 1.5


def test_worst_recent_stall_with_what_was_happening() -> None:
    rec = DelayRecorder()
    rec.add_stall(Stall(10.0, 0.050, "wireguard", "gc gen2 (49.0 ms)", 0.001, 0.048))
    rec.add_stall(Stall(500.0, 0.004, "eth0", "trio thread in publish (x.py:1)", None, None))
    rec.add_stall(Stall(505.0, 0.009, "clients", "trio thread idle when the pump resumed"))
    worst = rec.as_json(510.0)["worstRecentStall"]
    assert worst == {
        "agoS": 5.0,
        "delayMs": 9.0,
        "socket": "clients",
        "doing": "trio thread idle when the pump resumed",
        "cpuWaitMs": None,
        "blockedMs": None,
    }  # the 50 ms one is older than RECENT_S
    assert RECENT_S < 510.0 - 10.0
    assert rec.as_json(510.0)["maxBlockedMs"] == 48.0  # since start, not only recent
    assert rec.as_json(510.0)["mostBlockedStall"]["doing"] == "gc gen2 (49.0 ms)"
    old = rec.as_json(20.0)["worstRecentStall"]
    assert old["delayMs"] == 50.0 and old["blockedMs"] == 48.0 and old["doing"].startswith("gc")


def test_quantile_nearest_rank() -> None:
    assert quantile([1.0], 0.99) == 1.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.0) == 1.0
