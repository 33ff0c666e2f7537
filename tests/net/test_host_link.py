"""lab/host_link.py: a veth from the host's namespace into a lab namespace (the demo's dashboards).

Real veths, real sockets: a TCP server inside the lab's client namespace, reached from the test
process (the host's namespace) through the link; nothing else is reachable either way; every
interface, address and lock is gone afterwards, also when the body raised.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, LabError, ping
from lab.host_link import LOCK_DIR, NS_IFNAME, SUPERNET, HostLinks, used_networks

SERVE = """\
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("listening", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"hello {peer[0]}".encode())
    c.close()
"""
PORT = 8099


pytestmark = pytest.mark.netns


def host_interfaces() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def route_dev(ip: str) -> str:
    """The interface the host would send to ``ip`` through (asks the kernel; sends nothing)."""
    out = subprocess.run(["ip", "-j", "route", "get", ip], capture_output=True, text=True)
    routes = json.loads(out.stdout or "[]")
    return str(routes[0].get("dev", "")) if routes else ""


def fetch(ip: str, port: int = PORT, timeout_s: float = 5.0) -> str:
    with socket.create_connection((ip, port), timeout=timeout_s) as conn:
        return conn.recv(100).decode()


def start_server(lab: Lab, ns: str, ip: str) -> subprocess.Popen[Any]:
    proc = lab.popen(
        ns, sys.executable, "-c", SERVE, ip, str(PORT), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening", "test server did not start"
    return proc


def test_host_reaches_the_namespace_through_its_own_subnet(make_lab: Any) -> None:
    lab: Lab = make_lab(2)
    before = host_interfaces()
    with HostLinks() as links:
        client = links.add(lab.client_ns)
        server = links.add(lab.server_ns)
        assert links.subnet.subnet_of(SUPERNET)  # type: ignore[arg-type]
        for link in (client, server):
            assert ipaddress.ip_address(link.ns_ip) in ipaddress.ip_network(link.subnet)
            assert ipaddress.ip_network(link.subnet).subnet_of(links.subnet)  # type: ignore[arg-type]
        assert client.subnet != server.subnet
        assert host_interfaces() - before == {client.host_if, server.host_if}
        lock = LOCK_DIR / f"{links.subnet.network_address}.lock"
        assert lock.exists()

        # reachable from the host: a TCP service listening on the namespace end's address
        start_server(lab, lab.client_ns, client.ns_ip)
        assert fetch(client.ns_ip) == f"hello {client.host_ip}"
        start_server(lab, lab.server_ns, server.ns_ip)
        assert fetch(server.ns_ip) == f"hello {server.host_ip}"

        # nothing else is routed: only the /30, no IPv6, no default route in the namespace
        routes = lab.run(lab.client_ns, "ip", "-4", "route", "show", "dev", NS_IFNAME).stdout
        assert routes.split()[:1] == [client.subnet], routes
        assert len(routes.strip().splitlines()) == 1, routes
        assert "default" not in lab.run(lab.client_ns, "ip", "-4", "route").stdout
        assert lab.run(lab.client_ns, "ip", "-6", "addr", "show", "dev", NS_IFNAME).stdout == ""
        show = ["ip", "-4", "route", "show", "dev", client.host_if]
        host_routes = subprocess.run(show, capture_output=True, text=True, check=True).stdout
        assert len(host_routes.strip().splitlines()) == 1, host_routes
        assert host_routes.startswith(client.subnet), host_routes
        forwarding = Path(f"/proc/sys/net/ipv4/conf/{client.host_if}/forwarding").read_text()
        assert forwarding.strip() == "0"
        assert route_dev(client.ns_ip) == client.host_if
        assert route_dev(server.ns_ip) == server.host_if
        # the lab's addresses behind the namespace are not routed through the link (asked, not
        # sent: the host's default route leads off the machine), and the client namespace
        # reaches its host end but not the server's link through the host
        assert route_dev(lab.service_addr) not in {client.host_if, server.host_if}
        assert ping(lab.client_ns, client.host_ip, 1, 0.2, 2).received == 1
        unreachable = lab.run(lab.client_ns, "ip", "route", "get", server.ns_ip, check=False)
        assert unreachable.returncode != 0, unreachable.stdout

        # a second run on the machine takes another /24 and cannot take this one
        with HostLinks() as other:
            assert other.subnet != links.subnet
            assert not any(other.subnet.overlaps(net) for net in [links.subnet])
        assert any(links.subnet.overlaps(net) for net in used_networks())

    assert host_interfaces() == before
    assert not lock.exists()
    assert NS_IFNAME not in lab.run(lab.client_ns, "ip", "-br", "link").stdout
    assert route_dev(client.ns_ip) != client.host_if


def test_cleaned_up_when_the_body_fails_and_after_the_namespace_went(make_lab: Any) -> None:
    lab: Lab = make_lab(1)
    before = host_interfaces()
    with pytest.raises(RuntimeError, match="boom"), HostLinks() as links:
        link = links.add(lab.client_ns)
        assert link.host_if in host_interfaces()
        raise RuntimeError("boom")
    assert host_interfaces() == before

    # the lab closed first (its namespace deleted the veth): close() still succeeds
    other: Lab = make_lab(1)
    links = HostLinks()
    links.add(other.client_ns)
    other.close()
    deadline = time.monotonic() + 10
    while host_interfaces() != before and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel deletes the host end asynchronously with the namespace
    links.close()
    links.close()  # idempotent
    assert host_interfaces() == before
    with pytest.raises(LabError, match="closed"):
        links.add(lab.client_ns)


def test_a_failed_add_leaves_nothing() -> None:
    before = host_interfaces()
    with HostLinks() as links, pytest.raises(LabError):
        links.add("eg-no-such-namespace")
    assert host_interfaces() == before
