"""The full-tunnel example (examples/wireguard/scenario1-*-wg0.conf) in the netns lab, with real
wireguard-go behind engarde: `AllowedIPs = 0.0.0.0/0` and wg-quick's policy routing on the client.

The lab is made to look like the internet for this test: the client reaches the server's
address (the lab's service address) only through each uplink's *default* route, as a laptop
reaches a public server. wg-quick's rules then send every unmarked packet to that address into
the tunnel, and engarde's datagrams carry no mark. The test shows both halves of the README's
argument: an unbound lookup for the server goes into the tunnel, a lookup bound to an uplink
(SO_BINDTODEVICE, as engarde's sockets are) leaves through that uplink. Then pings to that same
address cross the tunnel over every uplink, and keep crossing when one uplink goes down.

wg-quick itself is not used (it wants resolvconf and systemd-style paths); the test does what
it does for a full tunnel: `wg setconf` with the wg-quick keys stripped, then the same ip
commands (see wg-quick(8)), with reverse-path filtering in loose mode as the README says.
"""

from __future__ import annotations

from lab import Lab, ping
from tests.deploy.wg_conf import for_wg_setconf, load, values
from tests.net.helpers import (
    CLIENT_LISTEN,
    UplinkCounters,
    server_section,
    start_client,
    start_server,
    wait_until,
    wireguard_client_section,
    write_config,
)

WG_SERVER_PORT = 59301  # the example's ListenPort
FWMARK = "51820"  # wg-quick's table and mark
ALL = (0, 1, 2)
PINGS = 400


def _as_the_internet(lab: Lab) -> None:
    """Replace the lab's host routes to the server by one default route per uplink."""
    side = lab.clients[0]
    lab.run(lab.client_ns, "ip", "-4", "route", "flush", "exact", f"{lab.service_addr}/32")
    for i in ALL:
        up = side.uplink(i)
        assert up.server_ip is not None
        lab.run(lab.client_ns, "ip", "route", "add", "default", "via", up.server_ip,
                "dev", up.name, "metric", str(100 + i))  # fmt: skip
    lab.run(lab.client_ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=2")


def _wg_quick_full_tunnel(lab: Lab, ifname: str, mtu: str) -> None:
    """What wg-quick does on `up` for AllowedIPs = 0.0.0.0/0 (after wg setconf)."""
    ns = lab.client_ns
    lab.run(ns, "ip", "link", "set", ifname, "mtu", mtu, "up")
    lab.run(ns, "wg", "set", ifname, "fwmark", FWMARK)
    lab.run(ns, "ip", "-4", "route", "add", "0.0.0.0/0", "dev", ifname, "table", FWMARK)
    lab.run(ns, "ip", "-4", "rule", "add", "not", "fwmark", FWMARK, "table", FWMARK)
    lab.run(ns, "ip", "-4", "rule", "add", "table", "main", "suppress_prefixlength", "0")
    lab.run(ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.src_valid_mark=1")


def _setconf(lab: Lab, ns: str, ifname: str, text: str) -> None:
    path = lab.workdir / f"{ifname}.conf"
    path.touch(mode=0o600)
    path.write_text(text)
    lab.run(ns, "wg", "setconf", ifname, str(path))


def _keypair(lab: Lab) -> tuple[str, str]:
    private = lab.run(lab.client_ns, "wg", "genkey").stdout.strip()
    public = lab.run(lab.client_ns, "wg", "pubkey", input=private + "\n").stdout.strip()
    return private, public


def test_full_tunnel_example_pings_through_every_uplink(lab: Lab) -> None:
    _as_the_internet(lab)
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

    client_key, client_pub = _keypair(lab)
    server_key, server_pub = _keypair(lab)
    replace = {
        "CLIENT_PRIVATE_KEY": client_key, "CLIENT_PUBLIC_KEY": client_pub,
        "SERVER_PRIVATE_KEY": server_key, "SERVER_PUBLIC_KEY": server_pub,
        "192.168.5.2": wg.client_ip, "192.168.5.1": wg.server_ip,
    }  # fmt: skip
    client_conf = load("scenario1-client-wg0.conf", replace)
    server_conf = load("scenario1-server-wg0.conf", replace)
    assert values(client_conf, "Peer", "Endpoint") == [CLIENT_LISTEN]
    assert values(server_conf, "Interface", "ListenPort") == [str(WG_SERVER_PORT)]
    _setconf(lab, lab.server_ns, wg.server_if, for_wg_setconf(server_conf))
    _setconf(lab, lab.client_ns, wg.client_if, for_wg_setconf(client_conf))
    _wg_quick_full_tunnel(lab, wg.client_if, values(client_conf, "Interface", "MTU")[0])

    server_addr = lab.service_addr  # engarde's dstAddr, and a "public" address to ping

    def route(*extra: str) -> str:
        return lab.run(lab.client_ns, "ip", "-4", "route", "get", server_addr, *extra).stdout

    # The pitfall: an ordinary packet to the server is routed into the tunnel ...
    assert f"dev {wg.client_if}" in route(), route()
    # ... but a socket bound to an uplink, as engarde's are, leaves through that uplink.
    for i in ALL:
        assert f"dev up{i}" in route("oif", f"up{i}"), route("oif", f"up{i}")

    def state() -> str:
        rules = lab.run(lab.client_ns, "ip", "rule").stdout
        return "\n".join([rules, wg.show("client"), wg.show("server"),
                          server.log.tail(), client.log.tail()])  # fmt: skip

    def tunnel_up() -> bool:
        return ping(lab.client_ns, wg.server_ip, count=1, timeout_s=1).received == 1

    wait_until(tunnel_up, "the full tunnel", timeout_s=30, details=state)
    # The server's address through the tunnel: the echo request goes into wg0 (route() above),
    # its WireGuard datagrams go out over every uplink by engarde.
    through = ping(lab.client_ns, server_addr, count=5, interval_s=0.05)
    assert through.received == 5, f"{through}\n{state()}"

    pinger = lab.start_ping(server_addr, PINGS, 0.01, timeout_s=2)
    counters.wait_carrying(*ALL, packets=10, log=client.log, source=pinger.proc)
    mark = client.log.mark()
    lab.link_down(0)  # the kernel flushes up0's default route with it
    client.log.wait_for(r"up0: admin-down", since=mark)
    counters.wait_carrying(1, 2, packets=10, log=client.log, source=pinger.proc)
    result = pinger.wait(timeout_s=PINGS * 0.01 + 60)
    assert result.sent == PINGS, f"{result}\n{pinger.output()}"
    assert result.lost == [], f"{result}\n{state()}"
    # Still the tunnel after the cut: no lookup fell back to an uplink for unbound traffic.
    assert f"dev {wg.client_if}" in route(), route()
