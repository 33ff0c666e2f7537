"""The server against spoofed sources and churning clients, with real sockets in namespaces.

- Reflection: an attacker who read the real session index off the wire sprays transport data
  naming it (and handshake initiations) from 1000 spoofed victim addresses while the real
  WireGuard tunnel runs; the victims' prefix is routed to a dummy interface in the server
  namespace so anything engarde sent them would leave (and be counted by nftables): nothing
  must, the real client keeps its place, no ping is lost. Then the same right after an engarde
  server restart, when the server knows no session yet.
- Churn: fake WireGuard clients (wg-send, one address each) come and go; every client's
  upstream socket and every probe socket is closed once they are forgotten (no fd leak).
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engarde.net.server import MAX_ANCILLARY, remember_ancillary
from engarde.net.sockets import reply_ancdata
from lab import Lab, ping
from tests.net.helpers import (
    CLIENT_LISTEN,
    ECHO_ADDR,
    SERVER_PORT,
    WEB,
    WgSender,
    WgSink,
    api,
    fd_kinds,
    open_fds,
    server_section,
    start_client,
    start_server,
    stop_gracefully,
    wait_until,
    wireguard_client_section,
    write_config,
)

SCRIPTS = Path(__file__).parent / "scripts"
VICTIM_TABLE = "eg_test_victims"


def server_status(lab: Lab) -> dict[str, Any]:
    return api(lab, lab.server_ns, "/api/v2/status")


def route_victims(lab: Lab) -> str:
    """Route the victims' prefix to a veth pair inside the server namespace (so a reflected
    datagram would really leave) and count what leaves towards it. Returns the prefix."""
    prefix = f"10.{lab.octet}.201"
    ns = lab.server_ns
    lab.run(ns, "ip", "link", "add", "vic0", "type", "veth", "peer", "name", "vic1")
    lab.run(ns, "ip", "link", "set", "vic1", "up")
    lab.run(ns, "ip", "link", "set", "vic0", "up")
    lab.run(ns, "ip", "route", "add", f"{prefix}.0/24", "dev", "vic0")
    rules = (
        f"table inet {VICTIM_TABLE} {{\n"
        "  counter to_victims { }\n"
        "  counter from_attacker { }\n"
        "  chain output { type filter hook output priority -200;\n"
        f'    ip daddr {prefix}.0/24 counter name "to_victims"\n  }}\n'
        "  chain input { type filter hook input priority -200;\n"
        f'    ip saddr {prefix}.0/24 counter name "from_attacker"\n  }}\n'
        "}\n"
    )
    lab.run(ns, "nft", "-f", "-", input=rules)
    return prefix


def victim_counters(lab: Lab) -> dict[str, dict[str, int]]:
    out = lab.run(lab.server_ns, "nft", "-j", "list", "counters", "table", "inet", VICTIM_TABLE)
    found: dict[str, dict[str, int]] = {}
    for item in json.loads(out.stdout)["nftables"]:
        counter = item.get("counter")
        if counter is not None:
            found[counter["name"]] = {"packets": counter["packets"], "bytes": counter["bytes"]}
    return found


def attack(lab: Lab, prefix: str, index: int, seconds: float = 2.0) -> dict[str, Any]:
    proc = lab.run(
        lab.server_ns,
        "env", f"SPOOF_SECONDS={seconds}",
        sys.executable, str(SCRIPTS / "spoof_index.py"), lab.service_addr, str(SERVER_PORT),
        prefix, str(index),
        timeout_s=60,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_an_attacker_who_knows_the_session_index_reflects_nothing(lab: Lab) -> None:
    config = write_config(
        lab,
        client=wireguard_client_section(lab),
        server={
            **server_section("127.0.0.1:59301", wireguard_only=True),
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
    prefix = route_victims(lab)
    real = {lab.uplink(0).client_ip, lab.uplink(1).client_ip}

    def state() -> str:
        return f"{victim_counters(lab)}\n{server.log.tail()}\n{client.log.tail(1500)}"

    def session_index() -> int:
        """What an on-path observer reads off the wire (here: from the dashboard)."""
        clients = server_status(lab)["clients"]
        sessions = [s for c in clients for s in c["sessions"]]
        assert sessions, json.dumps(clients)[:2000]
        return int(sessions[0], 16)

    for when in ("running", "right after a restart"):
        pinger = lab.start_ping(wg.server_ip, 400, 0.01, timeout_s=2.0)
        time.sleep(0.3)
        sent = attack(lab, prefix, session_index())
        result = pinger.wait(60)
        counters = victim_counters(lab)
        doc = server_status(lab)
        assert counters["from_attacker"]["packets"] > 0, state()  # the attack did arrive
        assert counters["to_victims"] == {"packets": 0, "bytes": 0}, f"{when}: {state()}"
        assert result.lost == [], f"{when}: {result}\n{state()}"
        proven = {a["address"].split(":")[0] for c in doc["clients"] for a in c["addresses"]}
        assert proven == real, f"{when}: {json.dumps(doc['clients'])[:2000]}"
        amplification = counters["to_victims"]["bytes"] / max(1, sent["bytes"])
        print(f"{when}: attacker sent {sent}, victims got 0 bytes: amplification {amplification}")
        if when == "running":
            stop_gracefully(lab, server.proc)
            server = start_server(lab, config)
            wait_until(
                lambda: ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1,
                "the tunnel through the restarted server",
                timeout_s=30,
                details=state,
            )
    assert "Traceback" not in server.log.text()


@pytest.mark.parametrize("lab", [1], indirect=True)
def test_clients_and_probes_that_come_and_go_leave_no_socket_behind(lab: Lab) -> None:
    config = write_config(
        lab,
        server={
            **server_section(ECHO_ADDR, wireguard_only=True),
            "clientTimeout": "1s",
            "webManager": {"listenAddr": WEB},
        },
    )
    server = start_server(lab, config)
    sink = WgSink(lab, echo=True)
    pid = server.proc.pid
    baseline = len(open_fds(pid))
    service = f"{lab.service_addr}:{SERVER_PORT}"
    prefix = f"10.{lab.octet}.201"
    for round_ in range(3):
        senders = [WgSender(lab, count=30, interval_ms=5, to=service) for _ in range(8)]
        reports = [s.wait() for s in senders]
        assert all(r["received_unique"] == 30 for r in reports), reports
        during = len(open_fds(pid))
        assert during >= baseline + 1, "each client has its own upstream socket"
        # spoofed data naming unknown sessions: probes (capped, rate-limited) that lead nowhere
        attack(lab, prefix, 0xDEADBEEF, seconds=1.0)

        def back_to_baseline() -> bool:
            return len(open_fds(pid)) <= baseline

        wait_until(
            back_to_baseline,
            f"round {round_}: the server's descriptors back to {baseline}",
            timeout_s=20,
            details=lambda: f"fds now {fd_kinds(open_fds(pid))}\n{server.log.tail()}",
        )
    doc = server_status(lab)
    counters = doc["counters"]
    assert counters["clients_created"] >= 24 and counters["clients_expired"] >= 24, counters
    assert counters["probes_opened"] > 0, counters
    sink.stop()
    assert "Traceback" not in server.log.text()


def test_reply_ancillary_cache_is_bounded() -> None:
    """Issue 13 item 5: one control message per local address replies leave from, kept for
    reuse; a server sent to at many addresses (a routed prefix) must not grow it forever."""
    cache: dict[bytes, Any] = {}
    for i in range(1000):
        raw = struct.pack("!I", 0x0A000000 + i)
        assert remember_ancillary(cache, raw) == reply_ancdata(raw)
        assert len(cache) <= MAX_ANCILLARY
    assert len(cache) == MAX_ANCILLARY
    assert struct.pack("!I", 0x0A000000 + 999) in cache  # the newest kept, the oldest gone
    assert struct.pack("!I", 0x0A000000) not in cache
