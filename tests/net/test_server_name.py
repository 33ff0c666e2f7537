"""The server's name is followed (issue 13 item 4).

The client's dstAddr is a host name, resolved from a hosts file in the client namespace
(`ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts for what it starts; written in
place, so the running client sees each change). Real wireguard-go, two uplinks.

1. The name moves to the server's second address while the first still answers: every path
   switches (one INFO line, old -> new) while pings cross: none may be lost.
2. The old address disappears (what dynamic DNS is for): the tunnel keeps working.
3. The name moves back while the current address is already dead (the server went silent
   first): re-resolved sooner than resolveInterval, the tunnel comes back by itself.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
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

NAME = "engarde-server.test"


@pytest.fixture
def hosts_file(lab: Lab) -> Iterator[Path]:
    """/etc/netns/<client ns>/hosts, removed (with its directory) in teardown."""
    directory = Path("/etc/netns") / lab.client_ns
    directory.mkdir(parents=True, exist_ok=False)
    try:
        yield directory / "hosts"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def point(hosts: Path, address: str) -> None:
    with hosts.open("r+" if hosts.exists() else "w") as f:  # in place: the bind mount follows
        f.seek(0)
        f.truncate()
        f.write(f"127.0.0.1 localhost\n{address} {NAME}\n")


def add_server_address(lab: Lab, address: str) -> None:
    """A second address on the server, routed from the client namespace over every uplink."""
    lab.run(lab.server_ns, "ip", "addr", "add", f"{address}/32", "dev", "lo")
    for i in range(2):
        up = lab.uplink(i)
        assert up.server_ip is not None
        lab.run(
            lab.client_ns, "ip", "route", "replace", f"{address}/32", "via", up.server_ip,
            "dev", up.name, "metric", str(up.metric),
        )  # fmt: skip


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_the_client_follows_the_servers_name(lab: Lab, hosts_file: Path) -> None:
    first, second = lab.service_addr, f"10.{lab.octet}.204.1"
    add_server_address(lab, second)
    point(hosts_file, first)
    config = write_config(
        lab,
        client={
            **wireguard_client_section(lab),
            "dstAddr": f"{NAME}:{SERVER_PORT}",
            "resolveInterval": "1s",
            "webManager": {"listenAddr": WEB},
        },
        server=server_section("127.0.0.1:59301", wireguard_only=True),
    )
    server = start_server(lab, config)
    client = start_client(lab, config, uplinks=[0, 1])
    wg = lab.start_wireguard(server_port=59301, client_endpoint=CLIENT_LISTEN)

    def state() -> str:
        try:
            status: Any = api(lab, lab.client_ns, "/api/v2/status")
        except Exception as exc:
            status = repr(exc)
        return (
            f"{json.dumps(status)[:3000]}\n--- client\n{client.log.tail(3000)}\n"
            f"--- server\n{server.log.tail(2000)}"
        )

    def tunnel(what: str, timeout_s: float = 30) -> None:
        wait_until(
            lambda: ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1,
            what,
            timeout_s=timeout_s,
            details=state,
        )

    tunnel("the WireGuard tunnel")
    assert f"-> {first}:{SERVER_PORT}" in client.log.text(), state()

    # 1. The name moves while both addresses answer: no ping lost across the switch.
    mark = client.log.mark()
    pinger = lab.start_ping(wg.server_ip, 400, 0.01, timeout_s=2.0)
    point(hosts_file, second)
    moved = f"{NAME}:{SERVER_PORT} moved: {first}:{SERVER_PORT} -> {second}:{SERVER_PORT}"
    client.log.wait_for(moved, since=mark, timeout_s=30)
    for i in range(2):
        client.log.wait_for(rf"up{i}: socket [0-9.]+:\d+ -> {second}:{SERVER_PORT}", since=mark)
    result = pinger.wait(60)
    assert result.lost == [], f"{result}\n{state()}"
    assert client.log.text(since=mark).count(" moved: ") == 1, state()

    # 2. The old address goes away: the tunnel does not notice.
    lab.run(lab.server_ns, "ip", "addr", "del", f"{first}/32", "dev", "lo")
    result = lab.start_ping(wg.server_ip, 100, 0.01, timeout_s=2.0).wait(60)
    assert result.lost == [], f"{result}\n{state()}"

    # 3. Back to the first address, which comes back while the second dies: found again.
    mark = client.log.mark()
    lab.run(lab.server_ns, "ip", "addr", "add", f"{first}/32", "dev", "lo")
    lab.run(lab.server_ns, "ip", "addr", "del", f"{second}/32", "dev", "lo")
    point(hosts_file, first)
    client.log.wait_for(f"moved: {second}:{SERVER_PORT} -> {first}:{SERVER_PORT}", since=mark)
    tunnel("the tunnel after the server moved back", timeout_s=40)
    assert "Traceback" not in client.log.text() + server.log.text()
