"""Real WireGuard through engarde: wireguard-go in both namespaces, the client's peer Endpoint is
the engarde client (127.0.0.1:59401 in the client namespace), the engarde server forwards to
WireGuard's listen port in the server namespace, 3 uplinks in between.

Uplinks are cut and restored while 1000 pings at 10 ms cross the tunnel, in every way a real
uplink breaks (admin down, the interface vanishing, carrier loss, a silent blackhole), always at
least one uplink left. WireGuard must deliver every ping.

The server runs with its defaults, so it relays only WireGuard-shaped datagrams (when the build
has that filter) and new client addresses must prove they carry this tunnel.
"""

from __future__ import annotations

from lab import Lab, ping
from tests.net.helpers import (
    CLIENT_LISTEN,
    UplinkCounters,
    server_section,
    start_client,
    start_server,
    wait_for_socket,
    wait_until,
    wireguard_client_section,
    write_config,
)

WG_SERVER_PORT = 59301
PINGS = 1000
INTERVAL_S = 0.01
ALL = (0, 1, 2)


def test_wireguard_loses_no_ping_while_uplinks_are_cut_and_restored(lab: Lab) -> None:
    config = write_config(
        lab,
        client=wireguard_client_section(lab),
        server=server_section(f"127.0.0.1:{WG_SERVER_PORT}", wireguard_only=True),
    )
    counters = UplinkCounters(lab)
    server = start_server(lab, config)
    client = start_client(lab, config, ALL)
    wg = lab.start_wireguard(server_port=WG_SERVER_PORT, client_endpoint=CLIENT_LISTEN)
    log = client.log
    log.wait_for(rf"{wg.client_if}: (?:appeared \()?excluded")

    def tunnel_up() -> bool:
        return ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1

    def state() -> str:
        return "\n".join(
            [wg.show("client"), wg.show("server"), server.log.tail(), client.log.tail()]
        )

    wait_until(tunnel_up, "the WireGuard tunnel", timeout_s=30, details=state)
    assert ping(lab.client_ns, wg.server_ip, count=5, interval_s=0.05).received == 5
    # Packets that fill the tunnel's 1420-byte MTU (1392 B of ICMP payload): WireGuard pads them
    # only up to the MTU, so their messages (1452 B) are not a multiple of 16 bytes long.
    full = ping(lab.client_ns, wg.server_ip, count=5, interval_s=0.05, size=1392)
    assert full.received == 5, f"{full}\n{state()}"

    pinger = lab.start_ping(wg.server_ip, PINGS, INTERVAL_S, timeout_s=2)

    def carrying(*uplinks: int) -> None:
        """Ten more tunnel datagrams crossed each of these uplinks, both ways (~0.1 s)."""
        counters.wait_carrying(*uplinks, packets=10, log=log, source=pinger.proc)

    carrying(*ALL)

    def cut(i: int, how: str) -> None:
        mark = log.mark()
        if how == "down":
            lab.link_down(i)
            log.wait_for(rf"up{i}: admin-down", since=mark)
        elif how == "delete":
            lab.delete_uplink(i)
            log.wait_for(rf"up{i}: gone", since=mark)
        elif how == "carrier":
            lab.set_carrier(i, on=False)
            log.wait_for(rf"up{i}: no-carrier", since=mark)
        else:  # blackhole: engarde cannot tell, its socket stays
            lab.blackhole(i)

    def restore(*steps: tuple[int, str]) -> None:
        """Undo the cuts, then wait until each of those uplinks carries the tunnel again."""
        mark = log.mark()
        for i, how in steps:
            if how == "down":
                lab.link_up(i)
            elif how == "delete":
                lab.add_uplink(i)
            elif how == "carrier":
                lab.set_carrier(i, on=True)
            else:
                lab.blackhole(i, on=False)
        for i, how in steps:
            if how != "blackhole":  # engarde closed the socket: wait for the new one
                wait_for_socket(client, i, since=mark)
        carrying(*(i for i, _ in steps))

    # One uplink at a time, each way of breaking; the tunnel keeps flowing over the others.
    for i, how in ((0, "down"), (1, "delete"), (2, "blackhole"), (0, "carrier")):
        cut(i, how)
        carrying(*(j for j in ALL if j != i))
        restore((i, how))
    # Two at once: a single uplink left.
    cut(1, "blackhole")
    cut(2, "delete")
    carrying(0)
    restore((1, "blackhole"), (2, "delete"))
    carrying(*ALL)
    assert pinger.proc.poll() is None, "ping ended before the last step: raise PINGS"

    result = pinger.wait(timeout_s=PINGS * INTERVAL_S + 60)
    assert result.sent == PINGS, result
    assert result.lost == [], f"{result}\n{state()}"
