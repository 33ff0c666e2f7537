"""The original Go engarde on one side, ours on the other, real wireguard-go at both ends.

The wire format is the same (raw datagrams, no header), so either side can be the original:
- the Go client against our server: our server proves the Go client's addresses by
  WireGuard's handshake (or by their exact copies) and serves them like our own client's;
- our client against the Go server: the Go server sends every reply to every client address,
  our client hands WireGuard the first copy of each and drops the others.

Each direction, 3 uplinks: 1000 pings at 10 ms cross the tunnel while each uplink in turn is
cut and restored (a silent blackhole, admin down, carrier loss; always two left): none may be
lost. Then the server is restarted while pings run: ours the documented way (kill -USR2: the
successor takes over before the old process lets go), none lost; the original's by stopping and
starting it (it has no other way), within a loss bound that is a fact about it.

Also: one engarde.yml with both sections and every key the original knows loads in both.

The Go binaries are a test dependency only (tests/e2e/go_engarde.py): without them these tests
are skipped, and under CI=true they fail instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from lab import REPO_ROOT, Lab, PingResult, WireGuardPair, ping, seq_ranges
from tests.e2e.go_engarde import full_config, go_binary, start_go, wget
from tests.net.helpers import (
    CLIENT_LISTEN,
    SERVER_PORT,
    WEB,
    UplinkCounters,
    api,
    restart_with_usr2,
    start_client,
    start_server,
    wait_handed_over,
    wait_until,
    write_config,
)

WG_PORT = 59301
PINGS = 1000
INTERVAL_S = 0.01
RESTART_PINGS_MAX = 6000  # a ceiling: ping is stopped once the tunnel is shown to be back
RECOVERY_S = 2.0
"""After a restart, the first ping answered after the gap comes at most this long after the new
process is ready (seen: within 0.1 s; the rest is margin for a busy machine)."""
ALL = (0, 1, 2)
CUTS = ((0, "blackhole"), (1, "down"), (2, "carrier"))

GO_RESTART_MAX_LOST = 100
"""The same for the original's server, a fact about it measured here: a static Go binary
starts in milliseconds and learns each client address from its first datagram (it proves
nothing), so what is lost is the stop-to-start gap. Measured 0-4 pings (restart 0.04-0.05 s,
busy box); the bound (1 s) only catches a tunnel that does not come back."""


def tunnel_up(lab: Lab, wg: WireGuardPair, details: Callable[[], str], what: str) -> None:
    wait_until(
        lambda: ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1,
        what,
        timeout_s=30,
        details=details,
    )
    # Right after the first handshake through the Go client a few pings are sometimes lost
    # (seen 1 run in 5, before anything is cut; never with our client): the measured stream
    # starts once 20 pings in a row got through.
    wait_until(
        lambda: ping(lab.client_ns, wg.server_ip, count=20, interval_s=0.01).received == 20,
        "20 pings in a row",
        details=details,
    )


def cut_and_restore_while_pinging(
    lab: Lab, wg: WireGuardPair, counters: UplinkCounters, details: Callable[[], str]
) -> None:
    """1000 pings at 10 ms; each uplink cut and restored in turn (two always left): 0 lost."""
    events: list[tuple[float, str]] = [(time.time(), "ping starts")]
    pinger = lab.start_ping(wg.server_ip, PINGS, INTERVAL_S, timeout_s=2.0)

    def carrying(*uplinks: int) -> None:
        """Ten more tunnel datagrams crossed each of these uplinks, both ways."""
        counters.wait_carrying(*uplinks, packets=10, source=pinger.proc, timeout_s=20)

    carrying(*ALL)
    for i, how in CUTS:
        events.append((time.time(), f"cut up{i} ({how})"))
        if how == "blackhole":
            lab.blackhole(i)
        elif how == "down":
            lab.link_down(i)
        else:
            lab.set_carrier(i, on=False)
        carrying(*(j for j in ALL if j != i))
        events.append((time.time(), f"restore up{i}"))
        if how == "blackhole":
            lab.blackhole(i, on=False)
        elif how == "down":
            lab.link_up(i)
        else:
            lab.set_carrier(i, on=True)
        carrying(i)
        events.append((time.time(), f"up{i} carries again"))
    assert pinger.proc.poll() is None, "ping ended before the last step: raise PINGS"
    result = pinger.wait(timeout_s=PINGS * INTERVAL_S + 60)
    timeline = " | ".join(f"{t:.3f} {what}" for t, what in events)
    assert result.sent == PINGS, result
    # ping's own timestamps (-D) next to the timeline, to see which step lost what
    assert result.lost == [], f"{result}\n{timeline}\n{pinger.output()[:1500]}\n{details()}"


def restart_while_pinging(
    lab: Lab,
    wg: WireGuardPair,
    restart: Callable[[], None],
    max_lost: int,
    details: Callable[[], str],
) -> PingResult:
    """Pings at 10 ms; `restart()` (which returns once the new process is ready) runs after 100
    of them; ping stops once 100 more were answered after the restart.

    The loss must be one gap, at most `max_lost` pings, that ends within RECOVERY_S of the new
    process being ready: the tunnel comes back by itself, as soon as the process is there. How
    long the process takes to stop and start depends on the machine's load, not on engarde's
    logic, so only the hang-catching `max_lost` bounds it.
    """
    pinger = lab.start_ping(wg.server_ip, RESTART_PINGS_MAX, INTERVAL_S, timeout_s=2.0)
    wait_until(lambda: pinger.result().received >= 100, "100 pings before the restart")
    began = time.time()
    restart()
    ready_at = time.time()
    took = ready_at - began

    def answered_after_restart() -> int:
        return sum(1 for t in pinger.result().replied_at.values() if t > ready_at)

    wait_until(
        lambda: answered_after_restart() >= 100 or pinger.proc.poll() is not None,
        "100 pings answered after the restart",
        timeout_s=max_lost * INTERVAL_S + 15,
        details=lambda: f"{pinger.result()}\n{details()}",
    )
    result = pinger.stop()
    lost = result.lost
    where = f"{result} (restart took {took:.2f} s)\n{details()}"
    assert answered_after_restart() >= 100, f"ping ended early: raise RESTART_PINGS_MAX; {where}"
    assert len(lost) <= max_lost, where
    back_after = 0.0
    if lost:
        assert lost == list(range(lost[0], lost[-1] + 1)), f"more than one gap: {where}"
        back_after = result.replied_at[lost[-1] + 1] - ready_at
        assert back_after < RECOVERY_S, (
            f"the tunnel came back {back_after:.2f} s after the new process was ready; {where}"
        )
    print(
        f"restart took {took:.2f} s, lost {len(lost)} pings ({seq_ranges(lost)}), "
        f"back {back_after:+.2f} s after ready",
        file=sys.stderr,
    )
    return result


@pytest.mark.parametrize("lab", [3], indirect=True)
def test_the_go_client_against_our_server(lab: Lab) -> None:
    go_binary("engarde-client")
    server_config = write_config(
        lab,
        "server.yml",
        server={
            "listenAddr": f"0.0.0.0:{SERVER_PORT}",
            "dstAddr": f"127.0.0.1:{WG_PORT}",
            "webManager": {"listenAddr": WEB},
        },
    )
    counters = UplinkCounters(lab)
    server = start_server(lab, server_config)
    wg = lab.start_wireguard(server_port=WG_PORT, client_endpoint=CLIENT_LISTEN)
    # The Go client takes exact names only (no globs): the WireGuard interface by its name.
    go_config = write_config(
        lab,
        "go-client.yml",
        client={
            "listenAddr": CLIENT_LISTEN,
            "dstAddr": f"{lab.service_addr}:{SERVER_PORT}",
            "excludedInterfaces": [wg.client_if],
        },
    )
    client = start_go(lab, "client", go_config)

    def details() -> str:
        return "\n".join([wg.show("server"), server.log.tail(), client.log.tail()])

    tunnel_up(lab, wg, details, "the tunnel through the Go client and our server")
    doc = api(lab, lab.server_ns, "/api/v2/status")
    proven = [a for c in doc["clients"] for a in c["addresses"]]
    assert len(doc["clients"]) == 1 and len(proven) == 3, doc["clients"]
    cut_and_restore_while_pinging(lab, wg, counters, details)
    assert api(lab, lab.server_ns, "/api/v2/status")["duplicatesDropped"] > 0
    assert "Traceback" not in server.log.text()

    predecessor = server

    def restart() -> None:
        # The documented way (docs/restart.md): kill -USR2, the successor takes over before
        # the old process lets go. It finds the Go client's addresses by itself (their exact
        # copies or WireGuard's handshake prove them), so nothing is lost.
        nonlocal server
        server = restart_with_usr2(lab, server)

    restart_while_pinging(lab, wg, restart, 0, details)
    wait_handed_over(lab, predecessor)
    doc = api(lab, lab.server_ns, "/api/v2/status")
    assert len(doc["clients"]) == 1, doc["clients"]
    assert "Traceback" not in server.log.text()


@pytest.mark.parametrize("lab", [3], indirect=True)
def test_our_client_against_the_go_server(lab: Lab) -> None:
    go_binary("engarde-server")
    go_config = write_config(
        lab,
        "go-server.yml",
        server={"listenAddr": f"0.0.0.0:{SERVER_PORT}", "dstAddr": f"127.0.0.1:{WG_PORT}"},
    )
    counters = UplinkCounters(lab)
    server = start_go(lab, "server", go_config)
    client_config = write_config(
        lab,
        "client.yml",
        client={
            "listenAddr": CLIENT_LISTEN,
            "dstAddr": f"{lab.service_addr}:{SERVER_PORT}",
            "excludedInterfaces": ["eg*w*"],
            "webManager": {"listenAddr": WEB},
            # The Go server answers from whatever address the routing table picks (here the
            # uplink's server end, not the service address we send to): see configuration.md.
            "dropForeignSources": False,
        },
    )
    client = start_client(lab, client_config)
    wg = lab.start_wireguard(server_port=WG_PORT, client_endpoint=CLIENT_LISTEN)

    def details() -> str:
        return "\n".join([wg.show("client"), server.log.tail(), client.log.tail()])

    tunnel_up(lab, wg, details, "the tunnel through our client and the Go server")
    cut_and_restore_while_pinging(lab, wg, counters, details)
    doc = api(lab, lab.client_ns, "/api/v2/status")
    # The Go server sent every reply to all three addresses: we handed WireGuard one of each.
    assert doc["duplicatesDropped"] > 0, doc["counters"]
    won = {
        link["name"]: link["quality"]["won"] for link in doc["links"] if link["name"][:2] == "up"
    }
    assert sum(won.values()) > 0, won

    def restart() -> None:
        # The original has no other way: stop it, start it. Our client keeps its sockets (and
        # ports); the new Go server learns them from their next datagrams.
        nonlocal server
        lab.stop(server.proc)
        server = start_go(lab, "server", go_config)

    restart_while_pinging(lab, wg, restart, GO_RESTART_MAX_LOST, details)
    assert "Traceback" not in client.log.text()


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_one_engarde_yml_with_every_key_of_the_original_loads_in_both(lab: Lab) -> None:
    """Both sections, every key the original knows (interfaceLabels, dstOverrides, webManager
    with auth, integer writeTimeout and clientTimeout): ours validates it, the original starts
    with it (both roles) and stays up, and both read the same values."""
    go_binary("engarde-client")
    go_binary("engarde-server")
    client_web, server_web = "127.0.0.1:9011", "127.0.0.1:9012"
    auth = ("admin", "s3cret")
    doc = full_config(
        lab,
        client_web=client_web,
        server_web=server_web,
        server_dst=f"127.0.0.1:{WG_PORT}",
        excluded=["up0"],
        labels={"up1": "LTE"},
        auth=auth,
    )
    config = write_config(lab, "engarde.yml", **doc)

    # Ours: check-config accepts it and reads every key.
    checked = subprocess.run(
        [sys.executable, "-m", "engarde", "check-config", str(config)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    settings = dict(line.split(": ", 1) for line in checked.stdout.splitlines() if ": " in line)
    assert settings["client.writeTimeout"] == "10ms", settings
    assert settings["server.writeTimeout"] == "10ms", settings
    assert settings["server.clientTimeout"] == "30s", settings
    assert settings["client.excludedInterfaces"] == "up0", settings
    assert settings["client.interfaceLabels.up1"] == "LTE", settings
    override = doc["client"]["dstOverrides"][0]
    assert settings["client.dstOverrides[0]"] == f"up1 -> {override['dstAddr']}", settings
    for role, web in (("client", client_web), ("server", server_web)):
        assert settings[f"{role}.webManager.listenAddr"] == web, settings
        assert settings[f"{role}.webManager.auth"] == "on", settings
        assert settings[f"{role}.description"] == doc[role]["description"], settings
    assert "s3cret" not in checked.stdout  # passwords as ***

    # The original: both roles start with the same file, read it, and stay up.
    client = start_go(lab, "client", config)
    server = start_go(lab, "server", config)
    for go in (client, server):
        go.log.wait_for(r"Management webserver listening on ")
    client.log.wait_for(r"New interface 'up1'")  # its first interface poll went through
    listing = wget(lab, lab.client_ns, f"http://{client_web}/api/v1/get-list", auth=auth)
    assert listing.status == 200, listing
    assert wget(lab, lab.client_ns, f"http://{client_web}/api/v1/get-list").status == 401
    status = json.loads(listing.body)
    assert status["description"] == doc["client"]["description"], status
    by_name = {i["name"]: i for i in status["interfaces"]}
    assert by_name["up0"]["status"] == "excluded", by_name
    assert by_name["up1"]["label"] == "LTE", by_name
    assert by_name["up1"]["dstAddress"] == doc["client"]["dstOverrides"][0]["dstAddr"], by_name
    answer = wget(lab, lab.server_ns, f"http://{server_web}/api/v1/get-list", auth=auth)
    assert answer.status == 200 and doc["server"]["description"] in answer.body, answer
    time.sleep(1.2)  # one more interface poll: still up, nothing complained
    for go in (client, server):
        assert go.proc.poll() is None, go.log.tail()
        assert "level=error" not in go.log.text() and "level=fatal" not in go.log.text(), (
            go.log.tail()
        )
