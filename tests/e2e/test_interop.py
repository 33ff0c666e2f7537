"""The original Go engarde on one side, ours on the other, real wireguard-go at both ends.

The wire format is the same (raw datagrams, no header), so either side can be the original:
- the Go client against our server: our server proves the Go client's addresses by
  WireGuard's handshake and serves them like our own client's (one client, its sessions);
- our client against the Go server: the Go server sends every reply to every client address,
  our client hands WireGuard the first copy of each and drops the others.
Pings cross the tunnel while an uplink is cut and restored: none may be lost.

The Go binaries are a test dependency only (../shared/anchors/engarde-go/bin, next to the
repository); without them the tests are skipped, and under CI=true they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab import REPO_ROOT, Lab, ping
from tests.net.helpers import (
    CLIENT_LISTEN,
    SERVER_PORT,
    WEB,
    Engarde,
    LogFile,
    api,
    start_client,
    start_server,
    wait_until,
    write_config,
)

GO_BIN = REPO_ROOT.parent / "shared" / "anchors" / "engarde-go" / "bin"
WG_PORT = 59301


def go_binary(name: str) -> Path:
    path = GO_BIN / name
    if path.exists():
        return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the Go engarde is required on CI: {path} is missing", pytrace=False)
    pytest.skip(f"the Go engarde is not here: {path}")


def start_go(lab: Lab, role: str, config: Path, ns: str) -> Engarde:
    """Start the Go engarde-ROLE with `config` in namespace `ns` (stopped with the lab)."""
    binary = go_binary(f"engarde-{role}")
    path = lab.workdir / f"go-{role}.log"
    with path.open("wb") as out:
        proc = lab.popen(ns, str(binary), str(config), stdout=out, stderr=subprocess.STDOUT)
    return Engarde(f"go-{role}", proc, LogFile(path, proc))


def cut_and_restore_while_pinging(lab: Lab, server_ip: str, details: Any) -> None:
    events = [(time.time(), "ping starts")]
    pinger = lab.start_ping(server_ip, 600, 0.01, timeout_s=2.0)
    wait_until(lambda: ping(lab.client_ns, server_ip, count=1).received == 1, "pings")
    events.append((time.time(), "blackhole up0"))
    lab.blackhole(0)
    wait_until(lambda: ping(lab.client_ns, server_ip, count=1).received == 1, "pings over 1, 2")
    events.append((time.time(), "up0 back, up1 down"))
    lab.blackhole(0, on=False)
    lab.link_down(1)
    wait_until(lambda: ping(lab.client_ns, server_ip, count=1).received == 1, "pings over 0, 2")
    events.append((time.time(), "up1 up"))
    lab.link_up(1)
    result = pinger.wait(timeout_s=60)
    timeline = " | ".join(f"{t:.3f} {what}" for t, what in events)
    head = pinger.output()[:1500]  # ping's own timestamps, to compare with the timeline
    assert result.lost == [], f"{result}\n{timeline}\n{head}\n{details()}"


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
    client = start_go(lab, "client", go_config, lab.client_ns)

    def details() -> str:
        return "\n".join([wg.show("server"), server.log.tail(), client.log.tail()])

    wait_until(
        lambda: ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1,
        "the tunnel through the Go client and our server",
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
    doc = api(lab, lab.server_ns, "/api/v2/status")
    proven = [a for c in doc["clients"] for a in c["addresses"]]
    assert len(doc["clients"]) == 1 and len(proven) == 3, doc["clients"]
    cut_and_restore_while_pinging(lab, wg.server_ip, details)
    assert api(lab, lab.server_ns, "/api/v2/status")["duplicatesDropped"] > 0
    assert "Traceback" not in server.log.text()


@pytest.mark.parametrize("lab", [3], indirect=True)
def test_our_client_against_the_go_server(lab: Lab) -> None:
    go_binary("engarde-server")
    go_config = write_config(
        lab,
        "go-server.yml",
        server={"listenAddr": f"0.0.0.0:{SERVER_PORT}", "dstAddr": f"127.0.0.1:{WG_PORT}"},
    )
    server = start_go(lab, "server", go_config, lab.server_ns)
    lab.wait_for_udp(lab.server_ns, SERVER_PORT, proc=server.proc)
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

    wait_until(
        lambda: ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1,
        "the tunnel through our client and the Go server",
        timeout_s=30,
        details=details,
    )
    cut_and_restore_while_pinging(lab, wg.server_ip, details)
    doc = api(lab, lab.client_ns, "/api/v2/status")
    # The Go server sent every reply to all three addresses: we handed WireGuard one of each.
    assert doc["duplicatesDropped"] > 0, doc["counters"]
    won = {
        link["name"]: link["quality"]["won"] for link in doc["links"] if link["name"][:2] == "up"
    }
    assert sum(won.values()) > 0, won
    assert "Traceback" not in client.log.text()
