"""Restarting engarde without a gap: real wireguard-go at both ends, pings every 10 ms through
the tunnel while the server and then the client are restarted the documented way
(`kill -USR2 <pid>`, docs/restart.md): the new process takes over before the old one lets go,
and WireGuard must deliver every ping.

Before this, a restart lost ~43 pings (server) and ~38 (client): the new process started
(imports, netlink, sockets) while nothing listened.
"""

from __future__ import annotations

from lab import Lab, ping
from tests.net.helpers import (
    CLIENT_LISTEN,
    UplinkCounters,
    restart_with_usr2,
    server_section,
    start_client,
    start_server,
    wait_for_socket,
    wait_handed_over,
    wait_until,
    wireguard_client_section,
    write_config,
)

WG_SERVER_PORT = 59301
PINGS = 2500  # 25 s at 10 ms: both restarts (a grace period of 5 s each) fit
INTERVAL_S = 0.01
ALL = (0, 1, 2)


def test_restarting_server_then_client_with_usr2_loses_no_ping(lab: Lab) -> None:
    config = write_config(
        lab,
        client=wireguard_client_section(lab),
        server=server_section(f"127.0.0.1:{WG_SERVER_PORT}", wireguard_only=True),
    )
    counters = UplinkCounters(lab)
    server = start_server(lab, config)
    client = start_client(lab, config, ALL)
    wg = lab.start_wireguard(server_port=WG_SERVER_PORT, client_endpoint=CLIENT_LISTEN)
    client.log.wait_for(rf"{wg.client_if}: (?:appeared \()?excluded")

    def state() -> str:
        return "\n".join(
            [wg.show("client"), wg.show("server"), server.log.tail(), client.log.tail()]
        )

    def tunnel_up() -> bool:
        return ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1

    wait_until(tunnel_up, "the WireGuard tunnel", timeout_s=30, details=state)
    pinger = lab.start_ping(wg.server_ip, PINGS, INTERVAL_S, timeout_s=2)

    def carrying() -> None:
        """Ten more tunnel datagrams crossed every uplink, both ways."""
        counters.wait_carrying(*ALL, packets=10, log=client.log, source=pinger.proc)

    carrying()

    # The server: its successor takes the client's datagrams; WireGuard's answers to the old
    # upstream sockets are still forwarded by the old process until WireGuard follows.
    old_server = server
    server = restart_with_usr2(lab, old_server)
    assert server.proc.pid != old_server.proc.pid
    carrying()
    wait_handed_over(lab, old_server)
    carrying()

    # The client: its successor opens its uplink sockets, then takes WireGuard's datagrams.
    old_client = client
    mark = old_client.log.mark()
    client = restart_with_usr2(lab, old_client)
    for i in ALL:
        wait_for_socket(client, i, since=mark)
    carrying()
    wait_handed_over(lab, old_client)
    carrying()

    assert pinger.proc.poll() is None, "ping ended before the last step: raise PINGS"
    result = pinger.wait(timeout_s=PINGS * INTERVAL_S + 60)
    assert result.sent == PINGS, result
    assert result.lost == [], f"{result}\n{state()}"
    # The successors serve on: the tunnel still works after both old processes are gone.
    assert ping(lab.client_ns, wg.server_ip, count=5, interval_s=0.05).received == 5, state()
