"""When host-name destinations are resolved again, and what the client core does with the
answers (issue 13 item 4: the server's name is followed)."""

from __future__ import annotations

from engarde.config import load_config_text
from engarde.core.client import ClientCore, UplinkPlan, is_host_name
from engarde.core.links import AddrInfo, LinkInfo
from engarde.core.resolve import SILENCE_S, SOON_FIRST_S, SOON_MAX_S, ResolveSchedule

OLD = ("192.0.2.1", 59402)
NEW = ("198.51.100.7", 59402)


def test_regular_interval_while_the_server_answers() -> None:
    s = ResolveSchedule.start(0.0)
    assert s.next_at(60.0, last_heard=None) == SILENCE_S  # nothing heard yet: check at 10 s
    assert s.next_at(60.0, last_heard=55.0) == 60.0  # heard recently: the interval
    assert s.next_at(None, last_heard=55.0) is None  # resolveInterval negative: never


def test_silence_makes_it_sooner_with_growing_gaps() -> None:
    s = ResolveSchedule.start(0.0)
    heard = 1.0
    at = s.next_at(60.0, heard)
    assert at == heard + SILENCE_S
    gaps = []
    for _ in range(8):
        assert at is not None
        assert s.silent(at, heard)
        s.resolved(at, moved=False, silent=True)
        nxt = s.next_at(60.0, heard)
        assert nxt is not None
        gaps.append(nxt - at)
        at = nxt
    assert gaps[0] == 2 * SOON_FIRST_S
    assert gaps == sorted(gaps) and max(gaps) == SOON_MAX_S
    # A move starts over: silence counts from the move.
    assert at is not None
    s.resolved(at, moved=True, silent=True)
    assert s.next_at(60.0, heard) == at + SILENCE_S
    # Heard again: back to the interval.
    assert s.next_at(60.0, at + 5.0) == min(at + 60.0, at + 15.0)


def test_never_beyond_the_interval() -> None:
    s = ResolveSchedule.start(0.0)
    assert s.next_at(3.0, last_heard=None) == 3.0


def test_host_names() -> None:
    assert is_host_name("vpn.example.org:59402")
    assert not is_host_name("192.0.2.1:59402")
    assert not is_host_name("[2001:db8::1]:59402")
    assert not is_host_name(":59402")


def make_core() -> ClientCore:
    config = load_config_text(
        'client:\n  listenAddr: "127.0.0.1:59401"\n  dstAddr: "vpn.example.org:59402"\n',
        role="client",
    ).client
    assert config is not None
    core = ClientCore(config, now=0.0)
    core.on_resync(
        [LinkInfo(2, "eth0", True, True, False), LinkInfo(3, "wwan0", True, True, False)],
        [AddrInfo(2, "10.0.0.2", 24), AddrInfo(3, "10.1.0.2", 24)],
        now=0.0,
    )
    return core


def test_the_core_follows_a_moved_name_once_and_says_so() -> None:
    core = make_core()
    pokes: list[None] = []
    core.on_change = lambda: pokes.append(None)
    assert core.host_destinations() == [("vpn.example.org:59402", "ipv4")]
    plan = UplinkPlan(2, "eth0", "10.0.0.2", "vpn.example.org:59402")
    assert core.destination(plan) is None
    assert core.adopt_destination(plan, OLD) == OLD  # the first path to resolve it
    assert core.adopt_destination(plan, NEW) == OLD  # another answer: every path agrees
    assert core.on_resolved("vpn.example.org:59402", "ipv4", [NEW, OLD], 1.0) is None  # kept
    assert pokes == []
    line = core.on_resolved("vpn.example.org:59402", "ipv4", [NEW], 2.0)
    assert line == (
        "vpn.example.org:59402 moved: 192.0.2.1:59402 -> 198.51.100.7:59402; 2 paths follow"
    )
    assert core.destination(plan) == NEW
    assert pokes == [None]
    assert core.stats.destination_moves == 1
    assert core.on_resolved("vpn.example.org:59402", "ipv4", [NEW], 3.0) is None
    assert core.on_resolved("vpn.example.org:59402", "ipv4", [], 3.0) is None
