"""Server relay core: which client addresses are alive and get WireGuard's replies.

Theory of operation: every datagram arriving on the listen socket comes from a "client address"
(ip, port): one per client uplink. The core remembers each with the local address it was sent to
(so replies leave from that address on a multi-homed server), when it was first and last seen, and
its counters. A reply from WireGuard goes to every address alive (seen within clientTimeout).

Spoofed floods: with `relayNonWireGuard` off (the default) the shell drops datagrams that do not
have the shape of a WireGuard message (counted as junk). A new address that sent a WireGuard-shaped
message goes to `pending`; it becomes a real client (`clients`) once it sends transport data or a
handshake response addressed to a session index our own WireGuard handed out (learned from the
messages WireGuard sends, see core/wireguard.py), which an off-path spoofer cannot know. Transport
data from an address that is not a client and names no session of ours is dropped (WireGuard
would drop it too): only handshake initiations and cookie replies reach WireGuard from unproven
addresses. Until
our WireGuard has been seen handing out any index (just after a restart, while old sessions
continue), any transport data confirms. Pending addresses get WireGuard's handshake messages
(so a handshake can complete) but not its transport data. Each table is capped at maxClients and
kept in least-recently-seen order, so a flood of new source addresses evicts the stalest pending
address in O(1) and never touches the confirmed clients.

With `relayNonWireGuard` on, every datagram is relayed and every address is a client at once
(the Go original's behaviour), capped the same way.

The shell (engarde.net.server) owns the sockets: it calls `seen` for addresses not in `clients`,
`touch` for those in it, `learn_local` for each message from WireGuard, `expire` once a second
and `drop` when a send to an address fails; it logs what `take_log` returns.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from engarde.config import ServerConfig
from engarde.core import wireguard as wg
from engarde.core.addr import format_address
from engarde.core.stats import RelayStats, errno_name

Address = tuple[Any, ...]
MAX_LOCAL_INDICES = 4096


@dataclass(slots=True)
class ClientAddress:
    address: Address
    local_raw: bytes | None  # the server address this client sends to (raw); replies use it
    first_seen: float
    last_seen: float
    confirmed: bool = False
    rx_datagrams: int = 0
    rx_bytes: int = 0
    tx_datagrams: int = 0
    tx_bytes: int = 0
    tx_dropped_full: int = 0
    tx_errors: int = 0
    last_tx_errno: int | None = None


@dataclass(slots=True)
class ServerStats(RelayStats):
    clients_rx_datagrams: int = 0  # from clients (wg_rx_* count what WireGuard sent us)
    clients_rx_bytes: int = 0
    junk_datagrams: int = 0  # not shaped like WireGuard: dropped before WireGuard
    unproven_datagrams: int = 0  # data for no session of ours from an unknown address: dropped
    clients_admitted: int = 0
    clients_confirmed: int = 0
    clients_expired: int = 0
    clients_evicted: int = 0  # pushed out by maxClients
    clients_dropped: int = 0  # a send to them failed


class ServerCore:
    def __init__(self, config: ServerConfig, *, now: float = 0.0) -> None:
        self.config = config
        self.timeout_s = config.client_timeout_s
        self.max_clients = config.maxClients
        self.strict = not config.relayNonWireGuard
        self.clients: OrderedDict[Address, ClientAddress] = OrderedDict()
        self.pending: OrderedDict[Address, ClientAddress] = OrderedDict()
        self.local_indices: OrderedDict[int, None] = OrderedDict()
        self.stats = ServerStats()
        self.started_at = now
        self.upstream_local: str = ""  # our upstream socket's address, for display
        self._log: list[str] = []

    # ---- datagrams from clients ------------------------------------------------------------

    def seen(
        self,
        address: Address,
        local_raw: bytes | None,
        kind: int,
        data: bytes | memoryview,
        now: float,
    ) -> ClientAddress | None:
        """A datagram (already known not to be junk) from an address not in `clients`.

        Returns the address's entry, or None when the datagram must not reach WireGuard: transport
        data or a response from an unproven address that names no session of ours (WireGuard
        would drop it too; dropping it here spares WireGuard a flood). Counted as unproven.
        """
        proves = not self.strict or self._proves(kind, data)
        if not proves and kind in (wg.DATA, wg.RESPONSE):
            self.stats.unproven_datagrams += 1
            return None
        entry = self.pending.get(address)
        if entry is None:
            entry = ClientAddress(address, local_raw, now, now)
            self.stats.clients_admitted += 1
            if proves:
                self._confirm(entry, "")
            else:
                _insert_capped(self.pending, entry, self.max_clients, self._evicted)
                to = _ip(local_raw) or "listenAddr"
                self._log.append(
                    f"client {format_address(address)} seen (sent to {to}), "
                    "awaiting a WireGuard session"
                )
            return entry
        self._touch_in(self.pending, entry, local_raw, now)
        if proves:
            del self.pending[address]
            self._confirm(entry, " now")
        return entry

    def touch(self, entry: ClientAddress, local_raw: bytes | None, now: float) -> None:
        """A confirmed client sent again: it is the freshest now."""
        self._touch_in(self.clients, entry, local_raw, now)

    # ---- datagrams from WireGuard ----------------------------------------------------------

    def learn_local(self, kind: int, data: bytes | memoryview) -> None:
        """Our WireGuard sent this message: remember the session index it hands out, if any."""
        index = wg.local_index_of(kind, data)
        if index is not None:
            self.local_indices[index] = None
            self.local_indices.move_to_end(index)
            if len(self.local_indices) > MAX_LOCAL_INDICES:
                self.local_indices.popitem(last=False)

    def alive_cutoff(self, now: float) -> float:
        """Addresses last seen before this time no longer get replies."""
        return now - self.timeout_s

    # ---- housekeeping ------------------------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Forget addresses silent for clientTimeout. Returns one log line per client."""
        cutoff = self.alive_cutoff(now)
        lines = []
        for table in (self.clients, self.pending):
            while table:
                entry = next(iter(table.values()))
                if entry.last_seen >= cutoff:
                    break
                del table[entry.address]
                if entry.confirmed:
                    self.stats.clients_expired += 1
                    lines.append(
                        f"client {format_address(entry.address)} expired "
                        f"(silent for {self.timeout_s:g} s)"
                    )
        return lines

    def drop(self, address: Address, err: int | None) -> str | None:
        """A send to this address failed: forget it (it comes back with its next datagram)."""
        entry = self.clients.pop(address, None) or self.pending.pop(address, None)
        if entry is None:
            return None
        self.stats.clients_dropped += 1
        return f"client {format_address(address)} dropped: send failed ({errno_name(err)})"

    @property
    def has_log(self) -> bool:
        return bool(self._log)

    def take_log(self) -> list[str]:
        out, self._log = self._log, []
        return out

    # ---- status ------------------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        cutoff = self.alive_cutoff(now)
        # The pump thread writes these tables while the dashboard asks: list() copies each in one
        # C call (the GIL is not released inside it), then only the copies are iterated.
        clients, pending = list(self.clients.values()), list(self.pending.values())
        entries = [*reversed(clients), *reversed(pending)]
        sockets = [
            {
                "address": format_address(e.address),
                "last": int(max(0.0, now - e.last_seen)),
                "lastReceivedAge": max(0.0, now - e.last_seen),
                "firstSeenAge": max(0.0, now - e.first_seen),
                "localAddress": _ip(e.local_raw),
                "alive": e.last_seen >= cutoff,
                "confirmed": e.confirmed,
                "counters": {
                    "rx_datagrams": e.rx_datagrams,
                    "rx_bytes": e.rx_bytes,
                    "tx_datagrams": e.tx_datagrams,
                    "tx_bytes": e.tx_bytes,
                    "tx_dropped_full": e.tx_dropped_full,
                    "tx_errors": e.tx_errors,
                    "last_tx_errno": errno_name(e.last_tx_errno),
                },
            }
            for e in entries
        ]
        return {
            "type": "server",
            "description": self.config.description,
            "listenAddress": self.config.listenAddr,
            "dstAddress": self.config.dstAddr,
            "upstreamAddress": self.upstream_local,
            "clientTimeout": self.timeout_s,
            "maxClients": self.max_clients,
            "relayNonWireGuard": not self.strict,
            "uptime": max(0.0, now - self.started_at),
            "counters": self.stats.as_dict(),
            "sockets": sockets,
        }

    # ---- internals ---------------------------------------------------------------------------

    def _proves(self, kind: int, data: bytes | memoryview) -> bool:
        index = wg.addressed_index(kind, data)
        if index is None:
            return False
        return not self.local_indices or index in self.local_indices

    def _confirm(self, entry: ClientAddress, when: str) -> None:
        entry.confirmed = True
        self.stats.clients_confirmed += 1
        _insert_capped(self.clients, entry, self.max_clients, self._evicted)
        self._log.append(
            f"client {format_address(entry.address)}{when} carrying the tunnel "
            f"(sent to {_ip(entry.local_raw) or 'listenAddr'})"
        )

    def _evicted(self, old: ClientAddress) -> None:
        self.stats.clients_evicted += 1
        self._log.append(
            f"client table full ({self.max_clients}): evicted {format_address(old.address)}"
        )

    @staticmethod
    def _touch_in(
        table: OrderedDict[Address, ClientAddress],
        entry: ClientAddress,
        local_raw: bytes | None,
        now: float,
    ) -> None:
        entry.last_seen = now
        entry.local_raw = local_raw
        table.move_to_end(entry.address)


def _insert_capped(
    table: OrderedDict[Address, ClientAddress],
    entry: ClientAddress,
    cap: int,
    on_evict: Any,
) -> None:
    if len(table) >= cap:
        _, old = table.popitem(last=False)
        on_evict(old)
    table[entry.address] = entry


@functools.lru_cache(maxsize=64)  # a server has few addresses; a flood logs one line per source
def _ip(raw: bytes | None) -> str:
    """Raw 4/16 address bytes from IP_PKTINFO -> text; '' when unknown."""
    if raw is None:
        return ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""
