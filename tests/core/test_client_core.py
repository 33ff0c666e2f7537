"""ClientCore: which interfaces carry copies, why the others don't, exclusions, transitions."""

from __future__ import annotations

import pytest

from engarde.config import load_config_text
from engarde.core.client import ClientCore, UnknownInterface, UplinkPlan
from engarde.core.links import AddrInfo, LinkInfo

CONFIG = """
client:
  description: truck
  listenAddr: "127.0.0.1:59401"
  dstAddr: "198.51.100.32:59402"
  excludedInterfaces: ["wg*", "eth3"]
  interfaceLabels: {eth0: Fiber}
  dstOverrides:
    - ifName: eth1
      dstAddr: "203.0.113.9:59402"
"""


def make_core(text: str = CONFIG) -> ClientCore:
    config = load_config_text(text, role="client").client
    assert config is not None
    core = ClientCore(config, now=0.0)
    return core


def by_index(core: ClientCore) -> dict[int, UplinkPlan]:
    """The wanted paths by interface index (one path per interface by default)."""
    plans = core.wanted()
    assert all(plan.key == key for key, plan in plans.items())
    return {index: plan for (index, _), plan in plans.items()}


def link(index: int, name: str, up: bool = True, carrier: bool = True) -> LinkInfo:
    return LinkInfo(index, name, admin_up=up, carrier=carrier, loopback=name == "lo")


def basic(core: ClientCore) -> None:
    core.on_resync(
        [link(1, "lo"), link(2, "eth0"), link(3, "eth1"), link(4, "wg0"), link(5, "wwan0")],
        [
            AddrInfo(1, "127.0.0.1", 8),
            AddrInfo(2, "192.0.2.10", 24),
            AddrInfo(3, "169.254.3.3", 16),  # link-local first: skipped
            AddrInfo(3, "192.0.2.20", 24),
            AddrInfo(4, "10.9.0.2", 24),
        ],
        now=1.0,
    )


def test_wanted_uses_first_usable_address_and_overrides() -> None:
    core = make_core()
    basic(core)
    assert by_index(core) == {
        2: UplinkPlan(2, "eth0", "192.0.2.10", "198.51.100.32:59402"),
        3: UplinkPlan(3, "eth1", "192.0.2.20", "203.0.113.9:59402"),
    }


def test_reasons_for_unused_interfaces() -> None:
    core = make_core()
    basic(core)
    assert core.why_not(4) == "excluded"  # glob wg*
    assert core.why_not(5) == "no-address"
    assert core.why_not(1) == "loopback"
    assert core.why_not(99) == "gone"
    core.on_link(link(2, "eth0", carrier=False), now=2.0)
    assert core.why_not(2) == "no-carrier"
    core.on_link(link(2, "eth0", up=False, carrier=False), now=2.0)
    assert core.why_not(2) == "admin-down"
    assert 2 not in by_index(core)


def test_address_change_changes_plan() -> None:
    core = make_core()
    basic(core)
    core.on_address(AddrInfo(2, "192.0.2.10", 24), present=False, now=2.0)
    assert 2 not in by_index(core)
    core.on_address(AddrInfo(2, "192.0.2.11", 24), present=True, now=3.0)
    assert by_index(core)[2].source_ip == "192.0.2.11"


def test_replug_same_name_new_index() -> None:
    core = make_core()
    basic(core)
    core.on_address(AddrInfo(5, "192.0.2.50", 24), present=True, now=2.0)
    assert by_index(core)[5].name == "wwan0"
    core.on_link_gone(5, now=3.0)
    assert 5 not in by_index(core)
    core.on_link(link(9, "wwan0"), now=4.0)
    core.on_address(AddrInfo(9, "192.0.2.51", 24), present=True, now=4.1)
    assert by_index(core)[9] == UplinkPlan(9, "wwan0", "192.0.2.51", "198.51.100.32:59402")


def test_address_for_unknown_link_is_ignored() -> None:
    core = make_core()
    basic(core)
    core.on_address(AddrInfo(42, "192.0.2.99", 24), present=True, now=2.0)
    core.on_address(AddrInfo(42, "192.0.2.99", 24), present=False, now=2.0)
    assert set(by_index(core)) == {2, 3}


def test_exclusion_commands_follow_the_original() -> None:
    core = make_core()
    basic(core)
    assert core.exclude("eth0", now=2.0) == "ok"
    assert core.exclude("eth0", now=2.0) == "already-excluded"
    assert 2 not in by_index(core)
    assert core.include("eth0", now=2.0) == "ok"
    assert core.include("eth0", now=2.0) == "already-included"
    assert 2 in by_index(core)
    # excluded in config XOR toggled at runtime
    assert core.include("wg0", now=2.0) == "ok"
    assert 4 in by_index(core)
    assert core.swap_exclusion("wg0", now=2.0) == "ok"
    assert 4 not in by_index(core)
    core.swap_exclusion("eth1", now=2.0)
    assert core.reset_exclusions(now=2.0) == "ok"
    assert set(by_index(core)) == {2, 3}


def test_unknown_interface_is_an_error() -> None:
    core = make_core()
    basic(core)
    with pytest.raises(UnknownInterface):
        core.exclude("nope0", now=2.0)
    with pytest.raises(UnknownInterface):
        core.swap_exclusion("nope0", now=2.0)


def test_every_change_wakes_the_supervisor() -> None:
    core = make_core()
    pokes: list[int] = []
    core.on_change = lambda: pokes.append(1)
    basic(core)
    assert len(pokes) == 1
    core.on_link(link(2, "eth0"), now=2.0)  # nothing changed: no wake-up
    assert len(pokes) == 1
    core.exclude("eth0", now=2.0)
    assert len(pokes) == 2


def test_transitions_are_one_line_each_with_a_reason() -> None:
    core = make_core()
    basic(core)
    lines = core.take_transitions()
    assert "eth0: up, 192.0.2.10 -> carrying copies" in lines
    assert "wwan0: appeared (no-address)" in lines
    assert "wg0: appeared (excluded)" in lines
    assert core.take_transitions() == []
    core.on_link(link(2, "eth0", carrier=False), now=2.0)
    assert core.take_transitions() == ["eth0: no-carrier -> stopped carrying copies"]
    core.on_address(AddrInfo(5, "192.0.2.50", 24), present=True, now=3.0)
    assert core.take_transitions() == ["wwan0: up, 192.0.2.50 -> carrying copies"]
    core.on_address(AddrInfo(5, "192.0.2.51", 24), present=True, now=3.0)  # second address
    assert core.take_transitions() == []
    core.on_address(AddrInfo(5, "192.0.2.50", 24), present=False, now=3.0)
    assert core.take_transitions() == [
        "wwan0: address changed 192.0.2.50 -> 192.0.2.51, new socket"
    ]
    core.on_link_gone(5, now=4.0)
    assert core.take_transitions() == ["wwan0: gone (interface removed)"]


def test_snapshot_shape_and_status() -> None:
    core = make_core()
    basic(core)
    plan = by_index(core)[2]
    core.link_opened(plan, 40001, "198.51.100.32:59402", now=1.5)
    core.path_for(plan).stats.last_rx = 9.0
    core.link_failed(by_index(core)[3], "EADDRNOTAVAIL", now=1.5)
    snap = core.snapshot(now=10.4)
    by_name = {i["name"]: i for i in snap["interfaces"]}
    assert "lo" not in by_name
    assert by_name["eth0"]["status"] == "active"
    assert by_name["eth0"]["label"] == "Fiber"
    assert by_name["eth0"]["lastReceivedAge"] == pytest.approx(1.4)
    assert by_name["eth1"]["status"] == "idle"
    assert by_name["eth1"]["reason"] == "error: EADDRNOTAVAIL"
    assert by_name["wg0"]["status"] == "excluded"
    assert by_name["wg0"]["dstAddress"] == ""
    assert by_name["wwan0"]["reason"] == "no-address"
    assert snap["type"] == "client"
    assert snap["uptime"] == pytest.approx(10.4)
    core.link_closed(plan, 40001)
    assert core.snapshot(now=11)["interfaces"][0]["status"] == "idle"


def test_a_stale_close_does_not_hide_the_new_socket() -> None:
    """Address change: the new socket opens before the cancelled old task reports its close."""
    core = make_core()
    basic(core)
    old = by_index(core)[2]
    core.link_opened(old, 40001, "198.51.100.32:59402", now=1.0)
    core.on_address(AddrInfo(2, "192.0.2.11", 24), present=True, now=2.0)
    core.on_address(AddrInfo(2, "192.0.2.10", 24), present=False, now=2.0)
    core.link_opened(by_index(core)[2], 40002, "198.51.100.32:59402", now=2.0)
    core.link_closed(old, 40001)
    eth0 = core.snapshot(now=3.0)["interfaces"][0]
    assert (eth0["status"], eth0["localPort"]) == ("active", 40002)
    assert core.port_hint(by_index(core)[2]) == 40002


def test_wireguard_source_changes_are_reported() -> None:
    core = make_core()
    assert core.on_wireguard_source(("127.0.0.1", 5000)) == (
        "WireGuard peer at 127.0.0.1:5000: replies go there"
    )
    assert core.wg_peer == ("127.0.0.1", 5000)
    line = core.on_wireguard_source(("::1", 6000, 0, 0))
    assert line is not None and "[::1]:6000" in line


# ---- paths: every usable address of the configured families ------------------------------------

DUAL = """
client:
  listenAddr: "127.0.0.1:59401"
  dstAddr: "198.51.100.32:59402"
  dstAddrV6: "[2001:db8::32]:59402"
  addressFamilies: [ipv4, ipv6]
  dstOverrides:
    - {ifName: wwan1, dstAddrV6: "[fe80::1%wwan1]:59402"}
"""


def dual(core: ClientCore) -> None:
    core.on_resync(
        [link(2, "eth0"), link(3, "wwan0"), link(4, "wwan1")],
        [
            AddrInfo(2, "192.0.2.10", 24),
            AddrInfo(2, "2001:db8:1::10", 64),
            AddrInfo(2, "fe80::10", 64),  # link-local: not a path to a global server
            AddrInfo(3, "2001:db8:2::20", 64, flags=0x40),  # tentative: not yet
            AddrInfo(3, "2001:db8:2::21", 64, flags=0x20),  # deprecated: no new paths
            AddrInfo(4, "fe80::40", 64),  # link-local, and the override is link-local
            AddrInfo(4, "2001:db8:4::40", 64),
        ],
        now=1.0,
    )


def test_every_usable_address_of_the_families_is_a_path() -> None:
    core = make_core(DUAL)
    dual(core)
    assert core.wanted() == {
        (2, "192.0.2.10"): UplinkPlan(2, "eth0", "192.0.2.10", "198.51.100.32:59402", "ipv4"),
        (2, "2001:db8:1::10"): UplinkPlan(
            2, "eth0", "2001:db8:1::10", "[2001:db8::32]:59402", "ipv6"
        ),
        (4, "fe80::40"): UplinkPlan(4, "wwan1", "fe80::40", "[fe80::1%wwan1]:59402", "ipv6"),
    }
    assert core.why_not(3) == "tentative"
    lines = core.take_transitions()
    assert "eth0: up, 192.0.2.10, 2001:db8:1::10 -> carrying copies" in lines
    assert "wwan0: appeared (tentative)" in lines
    core.on_address(AddrInfo(3, "2001:db8:2::20", 64, flags=0), present=True, now=2.0)  # DAD done
    assert core.take_transitions() == ["wwan0: up, 2001:db8:2::20 -> carrying copies"]
    core.on_address(AddrInfo(2, "2001:db8:1::11", 64), present=True, now=3.0)
    core.on_address(AddrInfo(2, "2001:db8:1::10", 64), present=False, now=3.0)
    assert core.take_transitions() == ["eth0: new path 2001:db8:1::11; path 2001:db8:1::10 gone"]


def test_a_family_without_a_server_address_is_said_so() -> None:
    core = make_core(DUAL.replace('  dstAddrV6: "[2001:db8::32]:59402"\n', ""))
    core.on_resync([link(3, "wwan0")], [AddrInfo(3, "2001:db8:2::20", 64)], now=1.0)
    assert core.wanted() == {}
    assert core.why_not(3) == "no-destination"


def test_the_original_behaviour_without_address_families() -> None:
    core = make_core()  # no addressFamilies: one IPv4 path per interface, the first one
    core.on_resync(
        [link(2, "eth0")],
        [
            AddrInfo(2, "2001:db8::1", 64),
            AddrInfo(2, "192.0.2.10", 24),
            AddrInfo(2, "192.0.2.11", 24),
        ],
        now=1.0,
    )
    assert list(core.wanted()) == [(2, "192.0.2.10")]


def test_runtime_exclusions_survive_a_reload() -> None:
    core = make_core()
    basic(core)
    core.exclude("eth0", now=2.0)
    core.include("wg0", now=2.0)
    reloaded = make_core(CONFIG.replace('["wg*", "eth3"]', '["wg*", "eth0"]')).config
    core.apply_config(reloaded, now=3.0)
    assert core.is_excluded("eth0") and not core.is_excluded("wg0")
    assert core.reset_exclusions(now=4.0) == "ok"
    assert core.is_excluded("eth0") and core.is_excluded("wg0")


def test_an_ipv6_server_on_ipv4_uplinks_shows_the_real_state() -> None:
    """Issue 13 item 5: an IPv6 dstAddr, IPv4 uplinks. No socket that could only fail is made
    (no plan), the link says why (not "active"), and loading warns."""
    text = CONFIG.replace('"198.51.100.32:59402"', '"[2001:db8::32]:59402"')
    text = text.replace('dstAddr: "203.0.113.9:59402"', 'dstAddrV6: "[2001:db8::9]:59402"')
    config = load_config_text(text, role="client")
    assert any("no server address for ipv4 paths" in w for w in config.warnings), config.warnings
    core = make_core(text)
    basic(core)
    assert core.wanted() == {}
    assert core.why_not(2) == "no-destination"
