"""Fanout bookkeeping (no sockets needed)."""

from __future__ import annotations

from engarde.core.stats import LinkStats
from engarde.net.uplinks import Fanout, Target


def target(port: int) -> Target:
    def sendto(data: object, dst: object) -> int:
        return 0

    return (sendto, ("192.0.2.1", port), LinkStats())


def test_an_old_task_cannot_remove_its_successor() -> None:
    fanout = Fanout()
    old, new = target(1), target(2)
    fanout.add(7, old)
    fanout.add(7, new)  # address change: the new socket registers first
    fanout.remove(7, old)  # then the cancelled old task cleans up
    assert fanout.targets == (new,)
    fanout.remove(7, new)
    assert fanout.targets == ()


def test_targets_follow_adds_and_removes() -> None:
    fanout = Fanout()
    a, b = target(1), target(2)
    fanout.add(1, a)
    fanout.add(2, b)
    assert fanout.targets == (a, b)
    fanout.remove(1, a)
    assert fanout.targets == (b,)
