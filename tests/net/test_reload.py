"""Reloading engarde.yml under traffic: real WireGuard pings every 10 ms through engarde while
the file is edited and SIGHUP (or POST /api/v2/reload) applies it. No ping may be lost.

Client: exclusions (and a runtime exclusion from the dashboard that must survive), labels,
dedup, a dstOverrides entry (new socket first, then the old one closes), the dashboard's
credentials, a broken file (the running config stays), a host name that does not resolve
(nothing applied), listenAddr (needs a restart: left as it is).
Server: clientTimeout, maxPeers, dedup, dstAddr (WireGuard reached at another local address:
every upstream socket is replaced), a broken file.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, ping
from tests.net.helpers import (
    CLIENT_LISTEN,
    WEB,
    Engarde,
    api,
    http,
    server_section,
    start_client,
    start_server,
    wait_for_socket,
    wait_until,
    wireguard_client_section,
    write_config,
)

WG_PORT = 59301
CREDENTIALS = ("admin", "s3cret")


def reload_with(
    lab: Lab, who: Engarde, path: Path, role: str, section: dict[str, Any], expect: str
) -> None:
    """Write `section` as the file's `role` section, SIGHUP, wait for a log line matching
    `expect` (a regex) after it."""
    write_config(lab, path.name, **{role: section})
    mark = who.log.mark()
    who.proc.send_signal(signal.SIGHUP)
    who.log.wait_for(expect, since=mark)


def link(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(item for item in doc["links"] if item["name"] == name)
    return found


def start_tunnel(lab: Lab, client_extra: dict[str, Any], server_extra: dict[str, Any]) -> Any:
    client = {**wireguard_client_section(lab), **client_extra}
    server = {**server_section(f"127.0.0.1:{WG_PORT}", wireguard_only=True), **server_extra}
    client_path = write_config(lab, "client.yml", client=client)
    server_path = write_config(lab, "server.yml", server=server)
    server_proc = start_server(lab, server_path)
    client_proc = start_client(lab, client_path, range(len(lab.uplinks)))
    wg = lab.start_wireguard(server_port=WG_PORT, client_endpoint=CLIENT_LISTEN)
    wait_until(
        lambda: ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1,
        "the WireGuard tunnel",
        timeout_s=30,
    )
    return client, server, client_path, server_path, client_proc, server_proc, wg


def test_client_reload_under_traffic(lab: Lab) -> None:
    web = {"listenAddr": WEB}
    section, _, path, _, client, server, wg = start_tunnel(lab, {"webManager": web}, {})
    pinger = lab.start_ping(wg.server_ip, 2500, 0.01, timeout_s=2.0)

    def state() -> str:
        return client.log.tail(3000) + "\n" + server.log.tail(1500)

    # Exclusions, labels, dedup.
    section = {
        **section,
        "excludedInterfaces": ["eg*w*", "up2"],
        "interfaceLabels": {"up0": "Fibre"},
        "dedup": False,
    }
    reload_with(lab, client, path, "client", section, r"reload \(SIGHUP\): client\.dedup")
    doc = api(lab, lab.client_ns, "/api/v2/status")
    assert link(doc, "up2")["excludedBy"] == "config", state()
    assert link(doc, "up0")["label"] == "Fibre" and doc["dedup"] is False

    # A runtime exclusion survives a reload that changes the configured ones.
    status, answer = http(lab, lab.client_ns, "/api/v1/exclude", method="POST",
                          body={"interface": "up1"})  # fmt: skip
    assert (status, answer) == (200, {"status": "ok"})
    section = {**section, "excludedInterfaces": ["eg*w*"], "dedup": True}
    reload_with(lab, client, path, "client", section, r"client\.excludedInterfaces")
    doc = api(lab, lab.client_ns, "/api/v2/status")
    assert link(doc, "up1")["excludedBy"] == "runtime", state()
    wait_for_socket(client, 2)
    http(lab, lab.client_ns, "/api/v1/include", method="POST", body={"interface": "up1"})

    # A new destination for up0: its new socket opens before the old one closes.
    mark = client.log.mark()
    override = {"ifName": "up0", "dstAddr": f"{lab.uplink(0).server_ip}:59402"}
    section = {**section, "dstOverrides": [override]}
    reload_with(lab, client, path, "client", section, r"client\.dstOverrides")
    client.log.wait_for(rf"up0: socket [0-9.:]+ -> {lab.uplink(0).server_ip}:59402", since=mark)

    # A broken file, then a destination that does not resolve: nothing changes.
    path.write_text("client:\n  listenAddr: [\n")
    mark = client.log.mark()
    client.proc.send_signal(signal.SIGHUP)
    client.log.wait_for(r"has problems; the running config stays", since=mark)
    bad = {**section, "dstAddr": "no-such-host.invalid:59402"}
    reload_with(lab, client, path, "client", bad, r"cannot resolve .*the running config stays")

    # listenAddr needs a restart: logged, left as it is.
    moved = {**section, "listenAddr": "127.0.0.1:59411"}
    reload_with(lab, client, path, "client", moved, r"client\.listenAddr: .* needs a restart")

    # Credentials apply at once; the dashboard's own reload endpoint too.
    secured = {**section, "webManager": {**web, "username": CREDENTIALS[0],
                                          "password": CREDENTIALS[1]}}  # fmt: skip
    reload_with(lab, client, path, "client", secured, r"client\.webManager\.password")
    assert http(lab, lab.client_ns, "/api/v2/status")[0] == 401
    write_config(lab, path.name, client={**secured, "interfaceLabels": {"up0": "LTE"}})
    status, preview = http(lab, lab.client_ns, "/api/v2/reload", auth=CREDENTIALS)
    assert status == 200 and [c["key"] for c in preview["wouldApply"]] == [
        "client.interfaceLabels.up0"
    ], preview
    status, done = http(lab, lab.client_ns, "/api/v2/reload", method="POST", auth=CREDENTIALS)
    assert status == 200 and done["ok"] and done["applied"][0]["new"] == "LTE", done
    path.write_text("client: {nonsense: 1}\n")
    status, failed = http(lab, lab.client_ns, "/api/v2/reload", method="POST", auth=CREDENTIALS)
    assert status == 422 and failed["problems"], failed

    result = pinger.wait(timeout_s=60)
    assert result.lost == [], f"{result}\n{state()}"
    assert client.proc.poll() is None and "Traceback" not in client.log.text()


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_server_reload_under_traffic(lab: Lab) -> None:
    web = {"listenAddr": WEB}
    _, section, _, path, client, server, wg = start_tunnel(lab, {}, {"webManager": web})
    pinger = lab.start_ping(wg.server_ip, 1200, 0.01, timeout_s=2.0)

    def state() -> str:
        return server.log.tail(3000) + "\n" + client.log.tail(1500)

    section = {**section, "clientTimeout": "45s", "maxPeers": 8, "dedup": False}
    reload_with(lab, server, path, "server", section, r"reload \(SIGHUP\): server\.dedup")
    doc = api(lab, lab.server_ns, "/api/v2/status")
    assert (doc["clientTimeout"], doc["maxPeers"], doc["dedup"]) == (45.0, 8, False), doc

    # WireGuard reached at another local address: every upstream socket is replaced.
    section = {**section, "dstAddr": f"{lab.service_addr}:{WG_PORT}", "dedup": True}
    reload_with(lab, server, path, "server", section, r"WireGuard now at .* upstream sockets")
    path.write_text("server:\n  clientTimeout: -3\n")
    mark = server.log.mark()
    server.proc.send_signal(signal.SIGHUP)
    server.log.wait_for(r"clientTimeout: must not be negative", since=mark)

    result = pinger.wait(timeout_s=60)
    assert result.lost == [], f"{result}\n{state()}"
    doc = api(lab, lab.server_ns, "/api/v2/status")
    assert doc["dstAddress"] == f"{lab.service_addr}:{WG_PORT}", doc
    assert server.proc.poll() is None and "Traceback" not in server.log.text()
