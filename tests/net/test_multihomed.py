"""A multi-homed server (issue 13 item 6): replies leave from the address each client sends to,
and a spoofed datagram sent as a known client to the server's other address must not move that.

One uplink, real wireguard-go. The server namespace gets a second address; an attacker there
(raw socket, IP_HDRINCL) sends transport data naming the real session index, from the client's
real address and port, to the second address. Before the fix the server then answered from the
second address, which the client drops (dropForeignSources): the tunnel died until the real
client's next datagram moved it back, for every spoofed one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, ping
from tests.net.helpers import (
    CLIENT_LISTEN,
    SERVER_PORT,
    WEB,
    api,
    server_section,
    start_client,
    start_server,
    wait_until,
    wireguard_client_section,
    write_config,
)

SCRIPTS = Path(__file__).parent / "scripts"


def status(lab: Lab) -> dict[str, Any]:
    return api(lab, lab.server_ns, "/api/v2/status")


@pytest.mark.parametrize("lab", [1], indirect=True)
def test_a_spoofed_datagram_to_the_other_address_does_not_move_replies(lab: Lab) -> None:
    other = f"10.{lab.octet}.203.1"
    lab.run(lab.server_ns, "ip", "addr", "add", f"{other}/32", "dev", "lo")
    config = write_config(
        lab,
        client=wireguard_client_section(lab),
        server={
            **server_section("127.0.0.1:59301", wireguard_only=True),
            "webManager": {"listenAddr": WEB},
        },
    )
    server = start_server(lab, config)
    client = start_client(lab, config, uplinks=[0])
    wg = lab.start_wireguard(server_port=59301, client_endpoint=CLIENT_LISTEN)

    def state() -> str:
        return f"{json.dumps(status(lab))[:3000]}\n{server.log.tail()}\n{client.log.tail(1500)}"

    wait_until(
        lambda: ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1,
        "the WireGuard tunnel",
        timeout_s=30,
        details=state,
    )
    doc = status(lab)
    proven = [a for c in doc["clients"] for a in c["addresses"]]
    assert len(proven) == 1, state()
    address = proven[0]["address"]
    assert proven[0]["localAddress"] == lab.service_addr, state()
    sessions = [s for c in doc["clients"] for s in c["sessions"]]
    assert sessions, state()
    ip, port = address.rsplit(":", 1)

    pinger = lab.start_ping(wg.server_ip, 400, 0.01, timeout_s=2.0)
    for index in sessions:
        lab.run(
            lab.server_ns,
            sys.executable, str(SCRIPTS / "spoof_as_client.py"),
            ip, port, other, str(SERVER_PORT), str(int(index, 16)), "300",
            timeout_s=60,
        )  # fmt: skip
    result = pinger.wait(60)
    doc = status(lab)
    entry = next(a for c in doc["clients"] for a in c["addresses"] if a["address"] == address)
    assert entry["localAddress"] == lab.service_addr, state()
    assert doc["counters"]["local_moves_refused"] >= 1, state()
    assert doc["counters"]["local_moves"] == 0, state()
    assert result.lost == [], f"{result}\n{state()}"
    assert "Traceback" not in server.log.text()
