"""The netlink watcher against a real kernel: resync after the kernel drops events."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from engarde.core.links import AddrInfo, LinkInfo
from engarde.net import netlink
from lab import Lab

SCRIPT = Path(__file__).parent / "scripts" / "netlink_overflow.py"


def test_overflow_triggers_a_redump_and_converges(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab: Lab = make_lab(0)
    out = lab.run(lab.client_ns, sys.executable, str(SCRIPT), timeout_s=60)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["overflow_logged"], "the 2 KiB socket should have overflowed (ENOBUFS)"
    assert result["wanted"] == sorted(f"10.77.{i}.2" for i in range(40))


class _OverflowingSocket:
    """Stands in for the events socket: one ENOBUFS, then quiet forever."""

    def __init__(self) -> None:
        self.overflowed = False

    def setsockopt(self, *args: Any) -> None:
        pass

    async def bind(self, address: Any) -> None:
        pass

    async def recv(self, size: int) -> bytes:
        if not self.overflowed:
            self.overflowed = True
            raise OSError(errno.ENOBUFS, "No buffer space available")
        await trio.sleep_forever()
        raise AssertionError

    def __enter__(self) -> _OverflowingSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Listener(netlink.InterfaceListener):
    def __init__(self) -> None:
        self.resyncs: list[list[LinkInfo]] = []

    def on_resync(self, links: list[LinkInfo], addrs: list[AddrInfo], now: float) -> None:
        self.resyncs.append(links)


async def test_redump_failing_with_emfile_is_retried_not_fatal(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 13 item 5: after ENOBUFS the watcher dumps again; that dump needs a new socket,
    and EMFILE (or any OSError) there used to end the client. It is retried."""
    fresh = LinkInfo(7, "wwan0", admin_up=True, carrier=True, loopback=False)
    results: list[Any] = [
        netlink.Dump(),  # the first dump, at start
        OSError(errno.EMFILE, "Too many open files"),
        OSError(errno.EMFILE, "Too many open files"),
        netlink.Dump(links=[fresh]),
    ]

    async def fake_dump() -> netlink.Dump:
        item = results.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    monkeypatch.setattr(netlink, "_dump_async", fake_dump)
    monkeypatch.setattr(netlink, "_open_events_socket", _OverflowingSocket)
    listener = _Listener()
    async with trio.open_nursery() as nursery:
        await nursery.start(netlink.run_netlink_watcher, listener)
        await trio.sleep(30)  # the mock clock jumps: the retries' backoff passes at once
        assert listener.resyncs == [[], [fresh]], listener.resyncs
        assert not results
        nursery.cancel_scope.cancel()
