"""The copy tracker: first copies, exact duplicates, and per-link won/late/lost/saved/lag."""

from __future__ import annotations

import random

import pytest

from engarde.core.copies import (
    JOIN_GRACE_S,
    LAG_BOUNDS_S,
    MAX_LINKS,
    RESET_GAP,
    SESSION_IDLE_S,
    CopyTracker,
    LinkQuality,
    SlotBudget,
    lag_quantile_s,
)

TAG = b"T" * 16
OTHER_TAG = b"F" * 16
S = 0x11223344  # a session (receiver) index


def links(n: int) -> list[LinkQuality]:
    return [LinkQuality() for _ in range(n)]


def carrying(tracker: CopyTracker, *each: LinkQuality, now: float = 0.0) -> None:
    """Make links carry copies at once (as after their first copy)."""
    for link in each:
        tracker.open(link, now)
    tracker.sweep(now + JOIN_GRACE_S)


def test_first_copy_passes_exact_copies_do_not() -> None:
    t = CopyTracker()
    a, b, c = links(3)
    assert t.see(S, 0, TAG, a, 0.0) is True
    assert t.see(S, 0, TAG, b, 0.001) is False
    assert t.see(S, 0, TAG, c, 0.002) is False
    assert (a.won, a.late, b.won, b.late, c.late) == (1, 0, 0, 1, 1)


def test_a_different_tag_is_never_dropped() -> None:
    """A forged datagram reusing a real counter must not make the real one look like a copy."""
    t = CopyTracker()
    attacker, real, other = links(3)
    assert t.see(S, 7, OTHER_TAG, attacker, 0.0) is True  # forged first
    assert t.see(S, 7, TAG, real, 0.001) is True  # the real one still goes to WireGuard
    assert t.see(S, 7, TAG, other, 0.002) is True
    assert real.forged == 1 and other.forged == 1
    assert real.late == other.late == 0


def test_the_same_copy_twice_on_one_link_is_a_repeat() -> None:
    t = CopyTracker()
    (a,) = links(1)
    assert t.see(S, 1, TAG, a, 0.0)
    assert t.see(S, 1, TAG, a, 0.0001) is False
    assert a.repeats == 1 and a.late == 0


def test_lag_is_recorded_per_late_link() -> None:
    t = CopyTracker()
    a, b = links(2)
    for counter in range(100):
        now = counter * 0.01
        t.see(S, counter, TAG, a, now)
        t.see(S, counter, TAG, b, now + 0.004)
    assert b.late == 100 and a.late == 0
    assert sum(b.lag_buckets) == 100
    assert lag_quantile_s(b.lag_buckets, 0.5) == 0.005  # 4 ms falls in the (3, 5] ms bucket
    assert b.lag_max_s == pytest.approx(0.004)
    assert lag_quantile_s(a.lag_buckets, 0.5) is None


def test_lost_counts_what_a_carrying_link_never_delivered() -> None:
    t = CopyTracker()
    a, b, c = links(3)
    carrying(t, a, b, c)
    now = 10.0
    for counter in range(10):
        t.see(S, counter, TAG, a, now)
        t.see(S, counter, TAG, b, now)
        if counter % 2 == 0:  # c loses every other datagram
            t.see(S, counter, TAG, c, now)
    t.sweep(now + 0.5)
    assert c.lost == 0, "not settled before the window ends"
    t.sweep(now + 1.01)
    assert (a.lost, b.lost, c.lost) == (0, 0, 5)
    assert (a.saved, b.saved, c.saved) == (0, 0, 0)


def test_saved_counts_what_only_one_link_delivered() -> None:
    t = CopyTracker()
    a, b, c = links(3)
    carrying(t, a, b, c)
    for counter in range(20):
        t.see(S, counter, TAG, a, 10.0)
        if counter < 15:
            t.see(S, counter, TAG, b, 10.0)
            t.see(S, counter, TAG, c, 10.0)
    t.sweep(12.0)
    assert a.saved == 5 and b.saved == 0 and c.saved == 0
    assert (b.lost, c.lost) == (5, 5)


def test_a_lone_link_saves_nothing() -> None:
    """Saved means "the others would have lost it": with no other link expected, no saves."""
    t = CopyTracker()
    (a,) = links(1)
    for counter in range(5):
        t.see(S, counter, TAG, a, 0.0)
    t.sweep(5.0)
    assert a.saved == 0 and a.lost == 0 and a.won == 5


def test_a_link_is_not_charged_before_it_carries() -> None:
    t = CopyTracker()
    a, b = links(2)
    t.see(S, 0, TAG, a, 0.0)  # a joins with its first copy
    t.open(b, 0.0)  # b's socket is open, nothing arrived over it yet
    for counter in range(1, 10):
        t.see(S, counter, TAG, a, 0.1 * counter)
    t.sweep(1.95)
    assert b.lost == 0, "within the grace after open(): not charged"
    t.sweep(JOIN_GRACE_S)  # grace over: b carries from now on, charged for what follows
    t.see(S, 10, TAG, a, JOIN_GRACE_S + 0.1)
    t.sweep(JOIN_GRACE_S + 2.0)
    assert b.lost == 1


def test_a_link_never_opened_is_never_charged() -> None:
    t = CopyTracker()
    a, b = links(2)
    for counter in range(10):
        t.see(S, counter, TAG, a, 0.0)
    t.sweep(3.0)
    assert b.lost == 0 and a.lost == 0


def test_a_closed_link_is_not_charged_for_later_counters() -> None:
    t = CopyTracker()
    a, b = links(2)
    carrying(t, a, b)
    t.see(S, 0, TAG, a, 5.0)
    t.see(S, 0, TAG, b, 5.0)
    t.close(b, 5.1)
    for counter in range(1, 6):
        t.see(S, counter, TAG, a, 5.2)
    t.sweep(10.0)
    assert b.lost == 0 and a.saved == 0


def test_the_first_copy_of_a_new_link_joins_it() -> None:
    t = CopyTracker()
    a, b = links(2)
    carrying(t, a)
    t.see(S, 0, TAG, a, 5.0)
    t.see(S, 0, TAG, b, 5.01)  # b joins now: counter 0 was not expected from it
    t.see(S, 1, TAG, a, 5.02)  # b was carrying: charged if it never delivers 1
    t.sweep(7.0)
    assert b.late == 1 and b.lost == 1


def test_a_copy_older_than_the_window_is_handed_on_as_stale() -> None:
    t = CopyTracker()
    a, b = links(2)
    carrying(t, a, b)
    t.see(S, 0, TAG, a, 10.0)
    t.see(S, 1, TAG, a, 10.0)
    t.see(S, 1, TAG, b, 10.0)
    t.sweep(11.5)
    assert b.lost == 1
    assert t.see(S, 0, TAG, b, 11.6) is True  # too late to tell: WireGuard decides
    assert b.stale == 1 and b.won == 0


def test_the_count_cap_bounds_a_session() -> None:
    t = CopyTracker(window_counters=64)
    (a,) = links(1)
    for counter in range(1000):
        t.see(S, counter, TAG, a, 0.0)
        assert t.slots <= 64
    assert t.stats.settled == 1000 - 64


def test_the_budget_bounds_every_tracker_sharing_it() -> None:
    budget = SlotBudget(100)
    trackers = [CopyTracker(budget=budget) for _ in range(5)]
    (a,) = links(1)
    for counter in range(500):
        for t in trackers:
            t.see(S, counter, TAG, a, 0.0)
            assert budget.used <= 100 + len(trackers)
    assert sum(t.slots for t in trackers) == budget.used


def test_sessions_are_capped_and_idle_ones_forgotten() -> None:
    t = CopyTracker(max_sessions=4)
    (a,) = links(1)
    for index in range(50):
        t.see(index, 0, TAG, a, float(index))
        assert t.sessions <= 4
    assert t.stats.sessions_evicted == 46
    assert sorted(t.session_indices()) == [46, 47, 48, 49]
    t.sweep(49.0 + SESSION_IDLE_S + 1)
    assert t.sessions == 0 and t.budget.used == 0


def test_counters_going_backwards_inside_the_window_are_reordering() -> None:
    t = CopyTracker()
    a, b = links(2)
    for counter in (5, 3, 4, 1, 2, 0):
        assert t.see(S, counter, TAG, a, 0.0)
    for counter in (0, 1, 2, 3, 4, 5):
        assert t.see(S, counter, TAG, b, 0.01) is False


def test_a_reused_index_starts_the_session_over() -> None:
    t = CopyTracker()
    (a,) = links(1)
    for counter in range(RESET_GAP + 10, RESET_GAP + 20):
        t.see(S, counter, TAG, a, 0.0)
    t.sweep(2.0)
    assert t.see(S, 0, TAG, a, 2.1) is True  # a new session with the same index: counter 0
    assert t.stats.sessions_reset == 1
    assert t.see(S, 0, TAG, a, 2.2) is False  # and it deduplicates again


def test_a_forged_huge_counter_does_not_stop_deduplication_for_long() -> None:
    t = CopyTracker()
    real, attacker = links(2)
    t.see(S, 2**64 - 1, OTHER_TAG, attacker, 0.0)  # pushes the window far ahead once settled
    t.sweep(1.5)
    assert t.see(S, 100, TAG, real, 1.6) is True
    assert t.see(S, 100, TAG, real, 1.7) is False  # dedup works again at once


def test_odd_values_never_raise_and_memory_stays_bounded() -> None:
    rng = random.Random(1234)
    budget = SlotBudget(2000)
    t = CopyTracker(window_counters=500, max_sessions=4, budget=budget)
    ls = links(5)
    now = 0.0
    for step in range(30_000):
        now += rng.choice((0.0, 0.0001, 0.01, 0.3))
        index = rng.choice((0, 1, 2**32 - 1, rng.getrandbits(32)))
        counter = rng.choice((0, 2**64 - 1, rng.getrandbits(64), step, step - 3, rng.randrange(50)))
        tag = rng.choice((TAG, OTHER_TAG, rng.randbytes(16)))
        t.see(index, counter, tag, rng.choice(ls), now)
        if step % 97 == 0:
            t.sweep(now)
        if step % 1000 == 0:
            t.close(rng.choice(ls), now)
        assert t.sessions <= 4
        assert t.slots <= 4 * 500 and budget.used <= 2000 + 4
    t.settle_all()
    assert budget.used == 0


def test_more_links_than_bits_are_deduplicated_but_not_accounted() -> None:
    t = CopyTracker()
    many = links(MAX_LINKS + 1)
    assert t.see(S, 0, TAG, many[0], 0.0)
    for link in many[1:]:
        assert t.see(S, 0, TAG, link, 0.0) is False
    assert t.stats.untracked_links == 1
    t.sweep(2.0)
    assert many[-1].lost == 0


def test_a_bit_is_reused_only_after_two_windows() -> None:
    t = CopyTracker()
    first = [LinkQuality() for _ in range(MAX_LINKS)]
    for link in first:
        t.see(S, 0, TAG, link, 0.0)
    t.close(first[3], 1.0)
    newcomer = LinkQuality()
    t.see(S, 1, TAG, newcomer, 1.5)
    assert newcomer.bit == 0, "the freed bit may still be named by an unsettled slot"
    late = LinkQuality()
    t.see(S, 2, TAG, late, 3.5)
    assert late.bit == first[3].bit


def test_lag_quantile() -> None:
    buckets = [0] * (len(LAG_BOUNDS_S) + 1)
    assert lag_quantile_s(buckets, 0.5) is None
    buckets[3] = 90  # (0.5, 1] ms
    buckets[10] = 10  # (15, 20] ms
    assert lag_quantile_s(buckets, 0.5) == LAG_BOUNDS_S[3]
    assert lag_quantile_s(buckets, 0.95) == LAG_BOUNDS_S[10]
    buckets[-1] = 1000
    assert lag_quantile_s(buckets, 0.99) == LAG_BOUNDS_S[-1]
