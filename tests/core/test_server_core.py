"""ServerCore: client addresses, expiry, the size cap, dropping failed addresses."""

from __future__ import annotations

from engarde.config import load_config_text
from engarde.core.server import ServerCore

A = ("203.0.113.7", 40001)
B = ("198.51.100.9", 40002)
C = ("192.0.2.44", 40003)
LOCAL = bytes([192, 0, 2, 1])


def make_core(extra: str = "") -> ServerCore:
    config = load_config_text(
        f"""
server:
  listenAddr: "0.0.0.0:59402"
  dstAddr: "127.0.0.1:59301"
  clientTimeout: 30
{extra}
""",
        role="server",
    ).server
    assert config is not None
    return ServerCore(config, now=0.0)


def alive(core: ServerCore, now: float) -> list[tuple[str, int]]:
    cutoff = core.alive_cutoff(now)
    return [e.address for e in core.clients.values() if e.last_seen >= cutoff]


def test_admit_touch_and_alive_set() -> None:
    core = make_core()
    a, line = core.admit(A, LOCAL, now=1.0)
    assert "203.0.113.7:40001 seen (sent to 192.0.2.1)" in line
    core.admit(B, None, now=2.0)
    core.touch(a, LOCAL, now=20.0)
    assert alive(core, now=32.5) == [A]  # B silent since 2.0, timeout 30
    assert list(core.clients) == [B, A]  # least recently seen first


def test_expire_forgets_silent_addresses_with_a_line_each() -> None:
    core = make_core()
    core.admit(A, None, now=1.0)
    core.admit(B, None, now=5.0)
    assert core.expire(now=31.5) == ["client 203.0.113.7:40001 expired (silent for 30 s)"]
    assert list(core.clients) == [B]
    assert core.stats.clients_expired == 1


def test_zero_timeout_means_thirty_seconds() -> None:
    zero = load_config_text(
        'server: {listenAddr: "0.0.0.0:1", dstAddr: "127.0.0.1:2", clientTimeout: 0}',
        role="server",
    ).server
    assert zero is not None and zero.client_timeout_s == 30


def test_cap_evicts_the_stalest_and_counts() -> None:
    core = make_core("  maxClients: 2")
    core.admit(A, None, now=1.0)
    b, _ = core.admit(B, None, now=2.0)
    core.touch(core.clients[A], None, now=3.0)  # A is now fresher than B
    _, line = core.admit(C, None, now=4.0)
    assert "evicted 198.51.100.9:40002" in line
    assert list(core.clients) == [A, C]
    assert core.stats.clients_evicted == 1
    assert b.address not in core.clients


def test_flood_never_grows_the_table_past_the_cap() -> None:
    core = make_core("  maxClients: 100")
    for i in range(5000):
        core.admit(("192.0.2.1", 1024 + i), None, now=float(i))
    assert len(core.clients) == 100
    assert core.stats.clients_evicted == 4900


def test_drop_forgets_one_address_only() -> None:
    core = make_core()
    core.admit(A, None, now=1.0)
    core.admit(B, None, now=1.0)
    line = core.drop(A, 101)
    assert line is not None and "203.0.113.7:40001 dropped" in line and "ENETUNREACH" in line
    assert list(core.clients) == [B]
    assert core.drop(A, 101) is None


def test_snapshot_has_the_original_fields() -> None:
    core = make_core()
    core.admit(A, LOCAL, now=1.0)
    snap = core.snapshot(now=3.7)
    assert snap["type"] == "server"
    assert snap["listenAddress"] == "0.0.0.0:59402"
    assert snap["dstAddress"] == "127.0.0.1:59301"
    assert snap["sockets"][0]["address"] == "203.0.113.7:40001"
    assert snap["sockets"][0]["last"] == 2
    assert snap["sockets"][0]["localAddress"] == "192.0.2.1"
