"""What the benchmarks add to :class:`lab.Lab`: fixed ports and per-uplink arrival counters.

Layout (see lab/netns.py): client namespace with uplinks ``up{i}`` (10.B.i.2), server namespace
with ``sv{i}`` (10.B.i.1) and the service address 10.B.200.1 on its lo. The relays under test use
the ports of a typical engarde setup:

    client ns: sender -> 127.0.0.1:59401 (client relay) -> up{i} -> 10.B.200.1:59402
    server ns: server relay 0.0.0.0:59402 -> 127.0.0.1:59301 (sink / echo, "WireGuard")

With wireguard-go (the engarde-wg paths), WireGuard itself listens on 59301 and the load crosses
the tunnel to a sink on the server's tunnel address, 10.B.250.1:59310.

:class:`UplinkCounters` counts, in the server namespace, the relay datagrams that arrived through
each ``sv{i}``: it tells when every uplink carries traffic, whatever the relay under test is.
"""

from __future__ import annotations

import json
from types import TracebackType

from lab import Lab

CLIENT_LISTEN = "127.0.0.1:59401"
SERVER_PORT = 59402
SERVER_LISTEN = f"0.0.0.0:{SERVER_PORT}"
WG_PORT = 59301
WG_ADDR = f"127.0.0.1:{WG_PORT}"
DASHBOARD = "127.0.0.1:9001"  # engarde's webManager in each namespace (engarde-web paths)
TUNNEL_PORT = 59310  # the sink on the server's WireGuard tunnel address (engarde-wg paths)


def server_dst(lab: Lab) -> str:
    """Where the client relay sends: the server relay on the service address."""
    return f"{lab.service_addr}:{SERVER_PORT}"


class UplinkCounters:
    """nftables counters in the server namespace: UDP datagrams to ``port`` arriving on sv{i},
    and (``delivered``) datagrams the server namespace sends to WG_PORT, i.e. that a server relay
    handed on.

    A context manager; the table (``bench_uplinks``) is removed on exit. Reading costs one
    ``nft`` run (~10 ms), so poll, don't spin.
    """

    TABLE = "bench_uplinks"

    DELIVERED = "delivered"

    def __init__(self, lab: Lab, indexes: list[int], port: int = SERVER_PORT) -> None:
        self.lab = lab
        self.indexes = indexes
        self.port = port
        self.delivered = 0  # updated by read(): datagrams sent to WG_PORT from the server ns

    def __enter__(self) -> UplinkCounters:
        names = [self.lab.uplink(i).peer_name for i in self.indexes]
        lines = [f"add table inet {self.TABLE}", f"delete table inet {self.TABLE}",
                 f"add table inet {self.TABLE}"]
        lines += [f"add counter inet {self.TABLE} {name}" for name in names]
        lines.append(f"add chain inet {self.TABLE} input "
                     "{ type filter hook input priority -200; }")
        lines += [f'add rule inet {self.TABLE} input iifname "{name}" udp dport {self.port} '
                  f'counter name "{name}"' for name in names]
        # what the server relay hands to "WireGuard": proof that it is up and relaying, not only
        # that copies reach its namespace
        lines += [f"add counter inet {self.TABLE} {self.DELIVERED}",
                  f"add chain inet {self.TABLE} output "
                  "{ type filter hook output priority -200; }",
                  f"add rule inet {self.TABLE} output udp dport {WG_PORT} "
                  f'counter name "{self.DELIVERED}"']
        self._nft("\n".join(lines) + "\n")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._nft(f"add table inet {self.TABLE}\ndelete table inet {self.TABLE}\n")

    def read(self) -> dict[int, int]:
        """Packets counted so far, by uplink index."""
        out = self.lab.run(self.lab.server_ns, "nft", "-j", "list", "counters", "table", "inet",
                           self.TABLE).stdout
        by_name: dict[str, int] = {}
        for item in json.loads(out).get("nftables", []):
            counter = item.get("counter")
            if counter:
                by_name[counter["name"]] = int(counter["packets"])
        self.delivered = by_name.get(self.DELIVERED, 0)
        return {i: by_name.get(self.lab.uplink(i).peer_name, 0) for i in self.indexes}

    def _nft(self, script: str) -> None:
        self.lab.run(self.lab.server_ns, "nft", "-f", "-", input=script)
