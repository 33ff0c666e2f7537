"""Links that fail impolitely: dongles yanked and replugged, carrier loss, churn.

Traffic flows over a stable uplink (up0) the whole time and must lose nothing; the client must
log one line per transition, stay idle while nothing happens, and end with the file descriptors
it started with.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, ping
from tests.net.helpers import (
    CLIENT_LISTEN,
    SERVER_PORT,
    WEB,
    Echo,
    Engarde,
    Sender,
    UplinkCounters,
    api,
    counters_delta,
    default_config,
    fd_kinds,
    kernel_udp_counters,
    open_fds,
    server_saw,
    server_section,
    start_client,
    start_server,
    stop_gracefully,
    wait_until,
    wireguard_client_section,
    write_config,
)

SCRIPTS = Path(__file__).parent / "scripts"


def link(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in status["links"] if item["name"] == name)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def plug(lab: Lab, name: str, peer: str, subnet: int, *, address: bool = True) -> str:
    """A new veth 'dongle': `name` in the client ns, `peer` with 10.B.subnet.1 in the server ns.

    Returns the client-side address it gets (or would get)."""
    b = lab.octet
    lab.run(
        lab.client_ns,
        "ip", "link", "add", name, "type", "veth", "peer", "name", peer, "netns", lab.server_ns,
    )  # fmt: skip
    lab.run(lab.server_ns, "ip", "addr", "add", f"10.{b}.{subnet}.1/24", "dev", peer)
    lab.run(lab.server_ns, "ip", "link", "set", peer, "up")
    lab.run(lab.client_ns, "ip", "link", "set", name, "up")
    client_ip = f"10.{b}.{subnet}.2"
    if address:
        dhcp(lab, name, subnet)
    return client_ip


def dhcp(lab: Lab, name: str, subnet: int) -> None:
    """What a DHCP client does: an address, then the route to the server through it."""
    b = lab.octet
    lab.run(lab.client_ns, "ip", "addr", "add", f"10.{b}.{subnet}.2/24", "dev", name)
    lab.run(
        lab.client_ns,
        "ip", "route", "replace", f"{lab.service_addr}/32", "via", f"10.{b}.{subnet}.1",
        "dev", name, "metric", str(50 + subnet),
    )  # fmt: skip


def transitions(client: Engarde, name: str) -> list[str]:
    return re.findall(rf"INFO .*?: ({re.escape(name)}: .*)", client.log.text())


@pytest.mark.parametrize("lab", [1], indirect=True)
def test_dongle_plugged_without_address_then_yanked_and_replugged(lab: Lab) -> None:
    counters = UplinkCounters(lab, n_names=10)
    echo = Echo(lab)
    server = start_server(lab, default_config(lab))
    client = start_client(lab, default_config(lab), uplinks=[0])
    sender = Sender(lab, count=2500, interval_ms=3)
    counters.wait_carrying(0, log=client.log)

    # Plugged in: the interface comes up before DHCP gives it an address.
    plug(lab, "wwan0", "sv9", 9, address=False)
    client.log.wait_for(r"wwan0: appeared \(no-address\)|wwan0: no-address")
    time.sleep(0.3)
    dhcp(lab, "wwan0", 9)
    client.log.wait_for(rf"wwan0: up, 10\.{lab.octet}\.9\.2 -> carrying copies")
    server.log.wait_for(server_saw(f"10.{lab.octet}.9.2"))
    counters.wait_carrying(9, log=client.log)

    # Yanked, then replugged under the same name: a new ifindex, the same address.
    mark = client.log.mark()
    lab.run(lab.client_ns, "ip", "link", "del", "wwan0")
    client.log.wait_for(r"wwan0: gone \(interface removed\)", since=mark)
    plug(lab, "wwan0", "sv9", 9)
    client.log.wait_for(rf"wwan0: up, 10\.{lab.octet}\.9\.2 -> carrying copies", since=mark)
    counters.wait_carrying(9, log=client.log)

    report = sender.wait()
    assert report["lost"] == [], report
    assert report["received_unique"] == 2500
    lines = transitions(client, "wwan0")
    assert lines[0] in ("wwan0: appeared (no-address)", "wwan0: appeared (admin-down)")
    assert f"wwan0: up, 10.{lab.octet}.9.2 -> carrying copies" in lines
    assert "wwan0: gone (interface removed)" in lines
    assert len(lines) <= 8, lines  # one line per transition, no storm
    assert stop_gracefully(lab, client.proc) == 0
    assert stop_gracefully(lab, server.proc) == 0
    echo.stop()


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_carrier_loss_stops_the_link_and_nothing_spins_while_down(lab: Lab) -> None:
    counters = UplinkCounters(lab)
    Echo(lab)
    start_server(lab, default_config(lab))
    client = start_client(lab, default_config(lab), uplinks=[0, 1])
    sender = Sender(lab, count=200, interval_ms=5)
    counters.wait_carrying(0, 1, log=client.log)
    assert sender.wait()["lost"] == []

    lab.set_carrier(1, False)
    client.log.wait_for(r"up1: no-carrier -> stopped carrying copies")
    mark = client.log.mark()
    cpu_before = cpu_seconds(client.proc.pid)
    time.sleep(3.0)
    idle_cpu = cpu_seconds(client.proc.pid) - cpu_before
    assert idle_cpu < 0.3, f"client used {idle_cpu:.2f} s CPU in 3 s with nothing to do"
    assert client.log.text(since=mark).strip() == "", "log lines while nothing happened"

    lab.set_carrier(1, True)
    client.log.wait_for(r"up1: up, .* -> carrying copies", since=mark)
    sender = Sender(lab, count=200, interval_ms=5)
    counters.wait_carrying(0, 1, log=client.log)
    assert sender.wait()["lost"] == []


CHURN_EVENTS = 1000
CHURN_NAMES = 6


@pytest.mark.slow
@pytest.mark.parametrize("lab", [1], indirect=True)
def test_churn_on_other_links_loses_nothing_and_leaks_nothing(lab: Lab) -> None:
    """1000 random link/address/state/name events on other uplinks, traffic on up0 throughout."""
    Echo(lab)
    config = default_config(lab, webManager={"listenAddr": WEB})
    start_server(lab, config)
    client = start_client(lab, config, uplinks=[0])
    time.sleep(0.5)
    fds_before = open_fds(client.proc.pid)
    tasks_before = api(lab, lab.client_ns, "/api/v2/status")["process"]["tasks"]

    sender = Sender(lab, count=12000, interval_ms=4)
    rng = random.Random(20261123)
    b = lab.octet
    present: dict[int, str] = {}  # slot -> current client-side name
    has_addr: set[int] = set()
    done = 0
    batch: list[str] = []
    started = time.monotonic()
    while done < CHURN_EVENTS:
        slot = rng.randrange(CHURN_NAMES)
        name = present.get(slot)
        peer = f"chp{slot}"
        if name is None:
            lab.run(
                lab.client_ns,
                "ip", "link", "add", f"ch{slot}", "type", "veth", "peer", "name", peer,
                "netns", lab.server_ns,
            )  # fmt: skip
            lab.run(lab.server_ns, "ip", "addr", "add", f"10.{b}.{30 + slot}.1/24", "dev", peer)
            lab.run(lab.server_ns, "ip", "link", "set", peer, "up")
            present[slot] = f"ch{slot}"
            done += 1
            continue
        action = rng.choice(["up", "down", "addr", "addr", "rename", "delete"])
        if action == "delete" and rng.random() < 0.5:
            action = "up"
        if action == "up":
            batch.append(f"link set {name} up")
        elif action == "down":
            batch.append(f"link set {name} down")
        elif action == "addr":
            verb = "del" if slot in has_addr else "add"
            batch.append(f"addr {verb} 10.{b}.{30 + slot}.2/24 dev {name}")
            has_addr ^= {slot}
        elif action == "rename":
            new = f"chr{slot}" if name == f"ch{slot}" else f"ch{slot}"
            batch += [f"link set {name} down", f"link set {name} name {new}"]
            present[slot] = new
        elif action == "delete":
            batch.append(f"link del {name}")
            del present[slot]
            has_addr.discard(slot)
        done += 1
        if len(batch) >= 8 or name not in present.values():
            lab.run(lab.client_ns, "ip", "-force", "-batch", "-", input="\n".join(batch) + "\n")
            batch.clear()
    if batch:
        lab.run(lab.client_ns, "ip", "-force", "-batch", "-", input="\n".join(batch) + "\n")
    churn_s = time.monotonic() - started

    report = sender.wait()
    assert client.proc.poll() is None, client.log.tail()
    assert report["lost"] == [], report
    assert churn_s < 90, f"churn took {churn_s:.0f} s"

    for name in present.values():
        lab.run(lab.client_ns, "ip", "link", "del", name)
    wait_until(
        lambda: len(open_fds(client.proc.pid)) == len(fds_before),
        f"the client's open fds back to {len(fds_before)} ({fd_kinds(fds_before)})",
        details=lambda: f"now {fd_kinds(open_fds(client.proc.pid))}\n{client.log.tail()}",
    )
    wait_until(
        lambda: api(lab, lab.client_ns, "/api/v2/status")["process"]["tasks"] == tasks_before,
        f"the client's trio tasks back to {tasks_before}",
    )
    assert "Traceback" not in client.log.text()


# ---- address change, silent links, floods ---------------------------------------------------


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_address_change_gets_a_new_socket_without_loss(lab: Lab) -> None:
    counters = UplinkCounters(lab)
    Echo(lab)
    server = start_server(lab, default_config(lab))
    client = start_client(lab, default_config(lab), uplinks=[0, 1])
    sender = Sender(lab, count=1500, interval_ms=3)
    counters.wait_carrying(0, 1, log=client.log)
    b = lab.octet
    # A DHCP renewal that hands out another address: the new one first, then the old one goes
    # (promoted to primary, as on hosts where a DHCP client manages the interface).
    lab.run(lab.client_ns, "sysctl", "-qw", "net.ipv4.conf.up0.promote_secondaries=1")
    lab.run(lab.client_ns, "ip", "addr", "add", f"10.{b}.0.7/24", "dev", "up0")
    lab.run(lab.client_ns, "ip", "addr", "del", f"10.{b}.0.2/24", "dev", "up0")
    lab.run(
        lab.client_ns, "ip", "route", "replace", f"{lab.service_addr}/32",
        "via", f"10.{b}.0.1", "dev", "up0", "metric", "10",
    )  # fmt: skip
    client.log.wait_for(rf"up0: address changed 10\.{b}\.0\.2 -> 10\.{b}\.0\.7, new socket")
    server.log.wait_for(server_saw(f"10.{b}.0.7"))
    counters.wait_carrying(0, 1, log=client.log)
    report = sender.wait()
    assert report["lost"] == [], report


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_silent_link_is_reported_and_delays_nothing(lab: Lab) -> None:
    Echo(lab)
    config = default_config(lab, webManager={"listenAddr": WEB})
    start_server(lab, config)
    client = start_client(lab, config, uplinks=[0, 1])
    sender = Sender(lab, count=4000, interval_ms=3)  # outlasts the 5 s it takes to go quiet
    UplinkCounters(lab).wait_carrying(0, 1, log=client.log)
    lab.blackhole(1)  # up, carrier, address: everything looks fine, nothing comes back

    def went_quiet() -> dict[str, Any] | None:
        status = api(lab, lab.client_ns, "/api/v2/status")
        up0, up1 = link(status, "up0"), link(status, "up1")
        if (up1["lastReceivedAge"] or 0) > 6.0:  # "quiet" means silent for 5 s
            return {"up0": up0, "up1": up1}
        return None

    seen = wait_until(went_quiet, "up1 to go quiet", timeout_s=20)
    assert seen["up1"]["status"] == "active"  # still trying: it may come back any moment
    assert seen["up1"]["quiet"] is True
    assert seen["up0"]["lastReceivedAge"] < 1.0
    assert seen["up0"]["quiet"] is False
    report = sender.wait()
    assert report["lost"] == [], report
    text = client.log.text()
    assert "Traceback" not in text


@pytest.mark.slow
@pytest.mark.parametrize("lab", [2], indirect=True)
def test_spoofed_junk_flood_does_not_touch_the_tunnel(lab: Lab) -> None:
    config = write_config(
        lab,
        client=wireguard_client_section(lab),
        server={
            **server_section("127.0.0.1:59301", wireguard_only=True),
            "maxClients": 64,
            "webManager": {"listenAddr": WEB},
        },
    )
    server = start_server(lab, config)
    client = start_client(lab, config, uplinks=[0, 1])
    wg = lab.start_wireguard(server_port=59301, client_endpoint=CLIENT_LISTEN)
    wait_until(
        lambda: ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1,
        "the WireGuard tunnel",
        timeout_s=30,
    )
    before = api(lab, lab.server_ns, "/api/v2/status")
    kernel_before = {ns: kernel_udp_counters(lab, ns) for ns in (lab.client_ns, lab.server_ns)}
    # A reply late because the busy box starved a process is not a loss: a wide timeout.
    pinger = lab.start_ping(wg.server_ip, 700, 0.01, timeout_s=5.0)
    flood = lab.run(
        lab.server_ns,
        sys.executable, str(SCRIPTS / "spoof_flood.py"), lab.service_addr, str(SERVER_PORT),
        f"10.{lab.octet}.201",
        timeout_s=60,
    )  # fmt: skip
    sent = json.loads(flood.stdout.strip().splitlines()[-1])
    result = pinger.wait(60)
    after = api(lab, lab.server_ns, "/api/v2/status")

    kernel = {
        ns: counters_delta(kernel_before[ns], kernel_udp_counters(lab, ns)) for ns in kernel_before
    }
    relay = counters_delta(before["counters"], after["counters"])
    # The flood (20k/s) can outrun a server starved of CPU by other work on a busy 2-CPU box:
    # the kernel then drops at the full listen socket (RcvbufErrors), tunnel copies among the
    # rest, before engarde sees them; the cause of the rare failures seen under heavy load.
    # That costs pings in proportion but is not the flood reaching the tunnel through engarde:
    # losses are allowed only with such drops, at most 1.5 x the share of datagrams the kernel
    # dropped (a ping is lost when both its copies are), and the tunnel must be whole after.
    full = kernel[lab.server_ns].get("RcvbufErrors", 0)
    arrived = kernel[lab.server_ns].get("InDatagrams", 0)
    allowed = max(5, int(700 * 1.5 * full / (full + arrived))) if full else 0
    assert len(result.lost) <= allowed, f"{result}; kernel UDP: {kernel}; server: {relay}"
    later = ping(lab.client_ns, wg.server_ip, count=20, timeout_s=2)
    assert later.received == 20, f"after the flood: {later}; kernel UDP: {kernel}"
    counters = after["counters"]
    assert sent["sources"] > 2000
    # What the kernel dropped at the full socket (see above) never reached engarde to be counted.
    assert relay.get("junk_datagrams", 0) >= sent["junk"] - full, (
        f"sent {sent}; kernel UDP: {kernel}; server: {relay}"
    )
    assert relay.get("empty_datagrams", 0) >= sent["empty"] - full
    assert counters["pending_evicted"] > 0
    assert after["addressesPending"] <= 64
    assert len(after["clients"]) == 1  # the flood made no client: only the real field kit
    alive = [a for c in after["clients"] for a in c["addresses"] if a["state"] == "alive"]
    assert {a["address"].split(":")[0] for a in alive} == {
        lab.uplink(0).client_ip,
        lab.uplink(1).client_ip,
    }
    assert after["process"]["rssBytes"] < 150 * 1024 * 1024
    assert server.proc.poll() is None and client.proc.poll() is None
    assert "Traceback" not in server.log.text()
