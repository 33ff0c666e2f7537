"""engarde.web.quality: last-minute copy figures from the core's cumulative counters (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from engarde.core.copies import LAG_BUCKETS, LinkQuality
from engarde.web.quality import (
    CHECKPOINT_S,
    WINDOW_S,
    Baseline,
    Counts,
    QualityWindow,
    add_shares,
    cumulative,
    link_quality,
    loss_pct,
    since_start,
    summed,
)


def lag(**buckets: int) -> tuple[int, ...]:
    """A lag histogram with counts in the buckets named b<index>."""
    out = [0] * LAG_BUCKETS
    for name, n in buckets.items():
        out[int(name[1:])] = n
    return tuple(out)


def quality(won: int = 0, late: int = 0, lost: int = 0, saved: int = 0, **extra: Any) -> Any:
    q = LinkQuality(won=won, late=late, lost=lost, saved=saved)
    doc = q.as_dict(0.0)
    doc.update(extra)
    return doc


def test_counts_since_an_older_checkpoint_and_after_a_restart() -> None:
    older = Counts(10, 5, 1, 0, lag(b3=5))
    newer = Counts(30, 9, 1, 2, lag(b3=6, b7=3))
    assert newer.since(older) == Counts(20, 4, 0, 2, lag(b3=1, b7=3))
    assert newer.since(None) is newer
    restarted = Counts(3, 0, 0, 0, lag())
    assert restarted.since(older) is restarted  # a counter went down: all of it is recent
    fewer_lags = Counts(40, 9, 1, 2, lag(b3=1))
    assert fewer_lags.since(older) is fewer_lags


def test_the_window_keeps_a_checkpoint_a_minute_old_and_no_more() -> None:
    window = QualityWindow()
    assert window.baseline(3.0) == Baseline(3.0, {})  # nothing sampled: since the start
    for second in range(0, 200):
        window.add(float(second), {"eth0": Counts(won=second)})
        base = window.baseline(float(second))
        if second < WINDOW_S:
            assert base.seconds == second  # less than a minute of history: all of it
            assert base.get("eth0") is None  # the first checkpoint: nothing had moved yet
        else:
            assert WINDOW_S - 0.25 <= base.seconds <= WINDOW_S + CHECKPOINT_S
            then = base.get("eth0") or Counts()  # left out while it had not moved
            assert then.won == second - base.seconds
    assert window.checkpoints <= WINDOW_S / CHECKPOINT_S + 2


def test_idle_links_cost_nothing_in_the_checkpoints() -> None:
    window = QualityWindow(window_s=10.0, checkpoint_s=1.0)
    idle = Counts(5, 1, 0, 0, lag(b2=1))
    window.add(0.0, {"eth0": idle, "never": Counts()})
    window.add(1.0, {"eth0": Counts(5, 1, 0, 0, lag(b2=1)), "never": Counts()})
    assert window.baseline(1.0).get("never") is None
    window.add(11.0, {"eth0": Counts(5, 1, 0, 0, lag(b2=1))})
    assert window.baseline(11.0).get("eth0") is idle  # the same object kept, not a copy


def test_link_quality_last_minute_loss_lag_and_idle_for_an_hour() -> None:
    base = Baseline(60.0, {"eth1": Counts(100, 50, 10, 4, lag(b5=50))})
    q = quality(
        won=180,
        late=150,
        lost=30,
        saved=4,
        lag_buckets=list(lag(b5=140, b10=10)),
        lag_max_s=0.0123,
        carrying=True,
        carrying_age_s=7200.0,
        last_saved_age_s=3700.0,
    )
    doc = link_quality(q, base, "eth1")
    assert doc["lastMinute"] == {"seconds": 60.0, "won": 80, "late": 100, "lost": 20, "saved": 0}
    assert doc["lossPct"] == 10.0  # 20 / (80 + 100 + 20)
    assert doc["lossPctTotal"] == pytest.approx(100 * 30 / 360, abs=0.001)
    assert doc["lagP50Ms"] == 3.0  # bucket 5: (2, 3] ms
    assert doc["lagP95Ms"] == 20.0  # bucket 10: (15, 20] ms
    assert doc["lagMaxMs"] == 12.3
    assert (doc["carryingForS"], doc["lastSavedAgeS"]) == (7200.0, 3700.0)
    assert doc["idleForHour"] is True  # carrying for 2 h, the last datagram it saved 3700 s ago
    assert (
        link_quality(quality(carrying=True, carrying_age_s=3599.0), base, "x")["idleForHour"]
        is False
    )
    assert (
        link_quality(quality(carrying=False, carrying_age_s=None), base, "x")["idleForHour"]
        is False
    )
    never = link_quality(quality(carrying=True, carrying_age_s=3600.0), since_start(9.0), "x")
    assert never["idleForHour"] is True  # carried an hour, never saved anything
    assert (never["lossPct"], never["lagP50Ms"], never["lagMaxMs"]) == (None, None, None)


def test_shares_and_sums_over_the_links_of_one_tunnel() -> None:
    base = since_start(30.0)
    links = [link_quality(quality(won=w, late=10, lost=1), base, str(w)) for w in (30, 10, 0)]
    add_shares(links)
    assert [q["firstSharePct"] for q in links] == [75.0, 25.0, 0.0]
    total = summed(links)
    assert total == {
        "won": 40,
        "late": 30,
        "lost": 3,
        "saved": 0,
        "lastMinute": {"seconds": 30.0, "won": 40, "late": 30, "lost": 3, "saved": 0},
    }
    idle = [link_quality(quality(), base, "a")]
    add_shares(idle)
    assert idle[0]["firstSharePct"] is None
    assert summed([])["lastMinute"]["seconds"] == 0.0


def test_cumulative_leaves_out_links_that_never_moved() -> None:
    counts = cumulative([("a", quality(won=1)), ("b", quality()), ("c", quality(lost=2))])
    assert set(counts) == {"a", "c"}
    assert loss_pct(counts["c"]) == 100.0
    assert loss_pct(Counts()) is None
