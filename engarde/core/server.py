"""Server relay core: which client addresses belong to which client, and who may receive what.

Theory of operation
-------------------
Datagrams arrive from *client addresses* (ip, port): one per uplink of each engarde client.
The server groups them into *clients* (core/peers.py), one per WireGuard peer, by reading the
clear-text WireGuard header (core/wireguard.py): no keys, not a byte added. Each client gets its
own upstream socket towards WireGuard, so WireGuard sees one endpoint per peer, and whatever
WireGuard sends to that socket (replies, keepalives, the handshakes it initiates) goes to that
client's live addresses only. The one rule: **no address receives anything WireGuard sends until
it is proven to be a path of the peer that datagram is for**, and unproven addresses never take
a proven client's place (separate tables, separate caps).

Indices. Every WireGuard session has two random 32-bit indices: ours (chosen by our WireGuard,
named by the peer's transport data) and the peer's (named by what our WireGuard sends). The core
learns them from what our WireGuard sends on a client's socket (its responses and initiations
name ours, its data and responses name the peer's), never from what arrives from the internet,
and forgets them `INDEX_TTL_S` after learning them (WireGuard rejects a session after 180 s).

How an address is proven (joins a client):
1. *handshake*: it sent a handshake initiation, and our WireGuard answered it (the response
   names the initiator's index). The response goes only to the addresses that sent exactly
   that initiation (all copies of it, one per uplink), which join the client the response is
   for: a new client if none of them was proven yet, or the proven sender's client (a rekey).
2. *copy*: it sent transport data that is an exact copy (session index, counter and the
   16-byte tag) of a datagram a proven address of the client sent within the copy window (a
   new uplink of a field kit: its copies arrive a little after the others'). A forger who
   knows the index but not the tag cannot produce one.
3. *wireguard*: it sent transport data that is not such a copy (it is the first of its client
   to deliver, the only uplink rebinding its NAT port, or the server restarted and knows no
   session yet). It gets its own *probe* socket towards WireGuard. WireGuard sends on a socket
   only after authenticating what came through it (its endpoint roaming), so an answer on the
   probe proves the address; the index the answer names says which client it belongs to (a new
   client after a restart). Probes are capped (`MAX_PROBES`) and their opening rate-limited.

A proven address is refreshed (kept alive) only by transport data of its own client's sessions
and by responses to handshakes its client's WireGuard peer was sent; an initiation from it goes
to WireGuard through its client's socket but refreshes nothing. Addresses silent for
clientTimeout are forgotten; a client with no address left is forgotten and its socket closed.
Two clients that turn out to be one peer (our WireGuard sends, on one client's socket, a
datagram for the other's session) merge.

Exceptions to "nothing to unproven addresses", both bounded: a cookie reply our WireGuard sends
under load goes to the senders of the initiation it answers (64 bytes per 148 received), and an
initiation our WireGuard sends towards a probe goes to that probe's address only (WireGuard
authenticated its datagram). Everything else WireGuard sends on the lobby that names no known
client is dropped and counted.

What is left to on-path attackers: anyone who sees the traffic can re-send exact copies of a
client's datagrams from another address and race them, as they can against WireGuard's own
roaming; that address then counts as a path of the client for as long as the copies keep
coming. Amplification stays at most one datagram out per datagram in.

Copies. Each client has a `CopyTracker` (core/copies.py): its transport data's first copies
go to WireGuard, exact copies are dropped (unless `dedup: false`), and each address's
`LinkQuality` says what it delivered.

`relayNonWireGuard: true` keeps the original's behaviour: one client ("everyone"), every
address joins it at once, every datagram is relayed, nothing is deduplicated.

The shell (engarde.net.server) owns the sockets: it takes the hot path itself (a proven
address sending data of its own client's sessions; WireGuard's data on a client's socket) and
asks `from_client` / `from_wireguard` for everything else; it opens a route's socket when it
finds `route.upstream is None`, closes those `take_closing()` returns, calls `expire` once a
second and `sweep` a few times a second, and logs what `take_log` returns.
"""

from __future__ import annotations

import itertools
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engarde.config import ServerConfig
from engarde.core import wireguard as wg
from engarde.core.addr import format_address
from engarde.core.copies import SERVER_BUDGET, CopyTracker, SlotBudget, lag_quantile_s
from engarde.core.latency import DelayRecorder
from engarde.core.peers import (
    Address,
    Client,
    ClientAddress,
    Initiation,
    Lobby,
    Route,
    address_view,
    client_view,
    local_ip,
)
from engarde.core.stats import RelayStats, errno_name

INDEX_TTL_S = 200.0  # a WireGuard session is rejected 180 s after its handshake
MAX_INDICES = 8  # per client and kind: WireGuard keeps at most 3 keypairs per peer
INITIATION_TTL_S = 10.0  # WireGuard answers within milliseconds, retries after 5 s
MAX_INITIATIONS = 1024
MAX_INITIATION_SENDERS = 16  # copies of one initiation: one per uplink of its client
MAX_PROBES = 64
PROBE_RATE = 20.0  # probes opened per second, on average
PROBE_BURST = 20.0
PROBE_LINGER_S = 3.0  # a probe whose address got proven: WireGuard may still answer on it

_DATA_HEADER = struct.Struct("<IQ")  # receiver index, counter: at byte 4 of transport data


@dataclass(slots=True)
class ServerStats(RelayStats):
    clients_rx_datagrams: int = 0  # from client addresses (wg_rx_* count what WireGuard sent)
    clients_rx_bytes: int = 0
    unproven_rx_datagrams: int = 0  # of clients_rx_*: from addresses not proven (yet)
    unproven_rx_bytes: int = 0
    junk_datagrams: int = 0  # not shaped like WireGuard: dropped before WireGuard
    unproven_datagrams: int = 0  # from an unproven address and no probe to judge it: dropped
    addresses_seen: int = 0  # new source addresses
    addresses_proven: int = 0
    addresses_expired: int = 0  # proven addresses silent for clientTimeout
    addresses_evicted: int = 0  # proven addresses pushed out by maxClients
    pending_evicted: int = 0  # unproven addresses pushed out by maxClients
    addresses_dropped: int = 0  # a send to them failed
    clients_created: int = 0
    clients_expired: int = 0
    clients_evicted: int = 0  # pushed out by maxPeers
    clients_merged: int = 0
    wrong_session_datagrams: int = 0  # a proven address naming no session of its client
    probes_opened: int = 0
    probes_refused: int = 0  # cap or rate reached: the datagram was dropped
    initiation_mismatches: int = 0  # same sender index, other bytes: not a copy
    cookies_to_unproven: int = 0  # cookie replies sent to initiators not proven yet
    unroutable_from_wireguard: int = 0  # WireGuard sent something for no known address
    upstream_errors: int = 0  # the shell could not open a route's socket
    local_moves: int = 0  # a proven address now sends to another local address (proven)
    local_moves_refused: int = 0  # ... claimed by an unproven datagram: nothing moved


class ServerCore:
    def __init__(self, config: ServerConfig, *, now: float = 0.0) -> None:
        self.config = config
        self.timeout_s = config.client_timeout_s
        self.max_addresses = config.maxClients
        self.max_peers = config.maxPeers
        self.strict = not config.relayNonWireGuard
        self.dedup = config.dedup and self.strict
        self.addresses: OrderedDict[Address, ClientAddress] = OrderedDict()  # proven, LRU
        self.pending: OrderedDict[Address, ClientAddress] = OrderedDict()  # unproven, LRU
        self.clients: dict[int, Client] = {}
        self.local_index: dict[int, Client] = {}
        self.peer_index: dict[int, Client] = {}
        self.initiations: OrderedDict[int, Initiation] = OrderedDict()
        self.probes: OrderedDict[Address, ClientAddress] = OrderedDict()  # open probe sockets
        self.lobby = Lobby()
        self.budget = SlotBudget(SERVER_BUDGET)
        self.stats = ServerStats()
        self.delay = DelayRecorder()  # the relay's added delay, fed by the pump
        self.started_at = now
        self.upstream_local: str = ""  # the lobby's (or everyone's) socket address, for display
        self._ids = itertools.count(1)
        self._probe_tokens = PROBE_BURST
        self._probe_tokens_at = now
        self._closing: list[Route] = []
        self._lingering: dict[int, tuple[Client, float]] = {}  # merged away, socket still open
        self._log: list[str] = []
        self.everyone: Client | None = None
        if not self.strict:
            self.everyone = self._new_client(now, log=False)
            self.everyone.label = "everyone (relayNonWireGuard)"

    def apply_config(self, config: ServerConfig, now: float) -> None:
        """A reloaded config: timeouts, caps and dedup take effect now (a smaller cap forgets
        the stalest entries at once). relayNonWireGuard and listenAddr need a restart (the
        reloader keeps their running values)."""
        self.config = config
        self.timeout_s = config.client_timeout_s
        self.max_addresses = config.maxClients
        self.max_peers = config.maxPeers
        self.dedup = config.dedup and self.strict
        while len(self.addresses) > self.max_addresses:
            _, old = self.addresses.popitem(last=False)
            self.stats.addresses_evicted += 1
            self._forget_address(old, now, in_table=False)
        while len(self.pending) > self.max_addresses:
            _, old = self.pending.popitem(last=False)
            self.stats.pending_evicted += 1
            self._drop_probe(old)
        others = [c for c in self.clients.values() if c is not self.everyone]
        for client in sorted(others, key=lambda c: c.last_seen)[
            : max(0, len(others) - self.max_peers)
        ]:
            self.stats.clients_evicted += 1
            self._log.append(
                f"client table shrunk (maxPeers {self.max_peers}): {client.name} forgotten"
            )
            self._forget_client(client)

    # ---- datagrams from client addresses ------------------------------------------------------

    def from_client(
        self,
        address: Address,
        local_raw: bytes | None,
        kind: int,
        data: bytes | bytearray | memoryview,
        n: int,
        now: float,
    ) -> Route | None:
        """A datagram (not junk) that the shell's hot path did not take.

        Returns the route whose upstream socket must carry it to WireGuard (the shell opens it
        when `route.upstream` is None), or None: dropped here, and counted.
        """
        entry = self.addresses.get(address)
        if self.everyone is not None:
            if entry is None:
                entry = self._seen(address, local_raw, now)
                self._prove(entry, self.everyone, now, "relayNonWireGuard")
            else:
                self._touch(entry, local_raw, now)
            self._count_rx(entry, n)
            return self.everyone
        if entry is not None:
            return self._from_proven(entry, local_raw, kind, data, n, now)
        entry = self.pending.get(address)
        if entry is None:
            entry = self._seen(address, local_raw, now)
        else:
            entry.last_seen = now
            entry.local_raw = local_raw
            self.pending.move_to_end(address)
        self._count_rx(entry, n)
        self.stats.unproven_rx_datagrams += 1
        self.stats.unproven_rx_bytes += n
        if kind == wg.INITIATION:
            self._record_initiation(address, data, now)
            return self.lobby
        if kind == wg.COOKIE_REPLY:
            return self.lobby  # harmless to WireGuard; it answers nothing
        if kind == wg.DATA:
            index, counter = _DATA_HEADER.unpack_from(data, 4)
            owner = self.local_index.get(index)
            if owner is not None:
                tag = bytes(data[n - 16 : n])
                if owner.tracker.has_copy(index, counter, tag):
                    self._prove(entry, owner, now, "copy")
                    return self._track(owner, entry, index, counter, tag, now)
            return self._probe(entry, index, now)
        # A handshake response: the peer answers an initiation our WireGuard sent.
        return self._probe(entry, wg.index_at(data, 8), now)

    def _from_proven(
        self,
        entry: ClientAddress,
        local_raw: bytes | None,
        kind: int,
        data: bytes | bytearray | memoryview,
        n: int,
        now: float,
    ) -> Route | None:
        client = entry.client
        assert client is not None  # proven addresses always have one
        self._count_rx(entry, n)
        if kind == wg.DATA:
            index, counter = _DATA_HEADER.unpack_from(data, 4)
            if index in client.local_indices:
                tag = bytes(data[n - 16 : n])
                if local_raw == entry.local_raw or self._move_local(
                    entry, client, local_raw, client.tracker.has_copy(index, counter, tag)
                ):
                    self._touch(entry, local_raw, now)
                # Else sent to another of our addresses and not proven: WireGuard judges it,
                # but it moves nothing and refreshes nothing (it may be spoofed).
                return self._track(client, entry, index, counter, tag, now)
            # Not a session of its client: maybe one we have not learned (WireGuard judges),
            # maybe another client's, then if WireGuard accepts it through this client's socket
            # its answer there shows both are one peer (merge). Refreshes nothing.
            self.stats.wrong_session_datagrams += 1
            return client
        if kind == wg.INITIATION:
            self._record_initiation(entry.address, data, now)
        elif (
            kind == wg.RESPONSE
            and wg.index_at(data, 8) in client.local_indices
            and (local_raw == entry.local_raw or self._move_local(entry, client, local_raw, False))
        ):
            self._touch(entry, local_raw, now)
        return client

    def _move_local(
        self, entry: ClientAddress, client: Client, local_raw: bytes | None, proven: bool
    ) -> bool:
        """A proven address sent to another of our addresses (a multi-homed server). Replies
        to it leave from the address it sends to, so a spoofed datagram sent to the other
        address would make them leave from there (and the client, which drops anything but
        the server address it sends to, drop them). Only a proven datagram of its client's
        session may move it: an exact copy of one a proven path delivered (`proven`)."""
        if not proven:
            self.stats.local_moves_refused += 1
            return False
        self.stats.local_moves += 1
        old, new = local_ip(entry.local_raw) or "listenAddr", local_ip(local_raw) or "listenAddr"
        self._log.append(
            f"{client.name}: {format_address(entry.address)} now sends to {new} (was {old}): "
            "replies leave from there"
        )
        return True

    def _track(
        self, client: Client, entry: ClientAddress, index: int, counter: int, tag: bytes, now: float
    ) -> Client | None:
        if client.tracker.see(index, counter, tag, entry.quality, now) or not self.dedup:
            return client
        client.duplicates_dropped += 1
        self.stats.duplicates_dropped += 1
        return None

    # ---- datagrams from WireGuard -------------------------------------------------------------

    def from_wireguard(
        self, route: Route, kind: int, data: bytes | bytearray | memoryview, now: float
    ) -> Sequence[ClientAddress]:
        """WireGuard sent this on `route`'s socket: learn what it says, return where it goes
        (the addresses to send it to; empty: dropped, counted)."""
        if isinstance(route, Client):
            while route.merged_into is not None:
                route = route.merged_into
            client = self._learn_from_wireguard(route, kind, data, now)
            return self.alive_addresses(client, now)
        if isinstance(route, ClientAddress):
            return self._from_wireguard_on_probe(route, kind, data, now)
        return self._from_wireguard_on_lobby(kind, data, now)

    def _learn_from_wireguard(
        self, client: Client, kind: int, data: bytes | bytearray | memoryview, now: float
    ) -> Client:
        """What our WireGuard sent on `client`'s socket names its sessions. Returns the client
        (the survivor, if it turned out to be the same peer as another client)."""
        if kind == wg.DATA or kind == wg.COOKIE_REPLY:
            return self._learn_peer(client, wg.index_at(data, 4), now)
        if kind == wg.INITIATION:
            self._learn_local(client, wg.index_at(data, 4), now)
        elif kind == wg.RESPONSE:
            self._learn_local(client, wg.index_at(data, 4), now)
            client = self._learn_peer(client, wg.index_at(data, 8), now)
            client = self._admit_initiators(client, wg.index_at(data, 8), now)
        return client

    def _from_wireguard_on_lobby(
        self, kind: int, data: bytes | bytearray | memoryview, now: float
    ) -> Sequence[ClientAddress]:
        if kind == wg.RESPONSE:
            peer = wg.index_at(data, 8)
            senders = self._initiators(peer)
            if not senders:
                self.stats.unroutable_from_wireguard += 1
                return ()
            client = next((s.client for s in senders if s.client is not None), None)
            if client is None:
                client = self.peer_index.get(peer) or self._new_client(now)
            client = self._learn_from_wireguard(client, kind, data, now)
            return self.alive_addresses(client, now)
        if kind == wg.DATA:
            client = self.peer_index.get(wg.index_at(data, 4))
            if client is not None:
                return self.alive_addresses(client, now)
        elif kind == wg.COOKIE_REPLY:
            index = wg.index_at(data, 4)
            client = self.peer_index.get(index)
            if client is not None:
                return self.alive_addresses(client, now)
            senders = self._initiators(index)
            if senders:
                self.stats.cookies_to_unproven += sum(1 for s in senders if s.client is None)
                return senders
        self.stats.unroutable_from_wireguard += 1
        return ()

    def _from_wireguard_on_probe(
        self, entry: ClientAddress, kind: int, data: bytes | bytearray | memoryview, now: float
    ) -> Sequence[ClientAddress]:
        if entry.client is not None:  # proven already; WireGuard has not moved on yet
            client = self._learn_from_wireguard(entry.client, kind, data, now)
            return self.alive_addresses(client, now)
        if kind == wg.INITIATION:
            # WireGuard starts a handshake towards this path (its endpoint for some peer): only
            # this address gets it, and it proves nothing about which client it belongs to.
            return (entry,) if entry.address in self.pending else ()
        if kind == wg.RESPONSE:
            peer = wg.index_at(data, 8)
        elif kind in (wg.DATA, wg.COOKIE_REPLY):
            peer = wg.index_at(data, 4)
        else:
            self.stats.unroutable_from_wireguard += 1
            return ()
        if entry.address not in self.pending:  # forgotten meanwhile (expired, evicted)
            self.stats.unroutable_from_wireguard += 1
            return ()
        known = self.peer_index.get(peer)
        if known is None:
            client = self._new_client(now)
            if entry.claim is not None and entry.claim not in self.local_index:
                self._learn_local(client, entry.claim, now)
        else:
            client = known
        self._prove(entry, client, now, "wireguard")
        client = self._learn_from_wireguard(client, kind, data, now)
        return self.alive_addresses(client, now)

    def alive_addresses(self, client: Client, now: float) -> list[ClientAddress]:
        cutoff = now - self.timeout_s
        return [e for e in client.addresses.values() if e.last_seen >= cutoff]

    # ---- housekeeping ------------------------------------------------------------------------

    def expire(self, now: float) -> list[str]:
        """Forget what has been silent too long. Returns log lines (one per client/address)."""
        cutoff = now - self.timeout_s
        lines: list[str] = []
        while self.addresses:
            entry = next(iter(self.addresses.values()))
            if entry.last_seen >= cutoff:
                break
            lines.append(
                f"{_name(entry.client)}: {format_address(entry.address)} forgotten "
                f"(silent for {self.timeout_s:g} s)"
            )
            self.stats.addresses_expired += 1
            self._forget_address(entry, now)
        while self.pending:
            entry = next(iter(self.pending.values()))
            if entry.last_seen >= cutoff:
                break
            self._forget_address(entry, now)
        for client in list(self.clients.values()):
            if not client.addresses and client is not self.everyone:
                lines.append(f"{client.name} expired (no address heard for {self.timeout_s:g} s)")
                self.stats.clients_expired += 1
                self._forget_client(client)
            else:
                self._expire_indices(client, now)
        for entry in list(self.probes.values()):
            if entry.probe_proven_at is not None and now - entry.probe_proven_at > PROBE_LINGER_S:
                self._close_probe(entry)
        for key, (client, since) in list(self._lingering.items()):
            if now - since > PROBE_LINGER_S:
                del self._lingering[key]
                self._closing.append(client)
        while self.initiations:
            first = next(iter(self.initiations.values()))
            if now - first.at <= INITIATION_TTL_S:
                break
            self.initiations.popitem(last=False)
        return lines

    def sweep(self, now: float) -> None:
        """Settle copies older than the copy window (a few times a second)."""
        for client in self.clients.values():
            client.tracker.sweep(now)

    def drop(self, address: Address, err: int | None, now: float = 0.0) -> str | None:
        """A send to this address failed: forget it (it comes back with its next datagram and
        proves itself again)."""
        entry = self.addresses.get(address) or self.pending.get(address)
        if entry is None:
            return None
        self.stats.addresses_dropped += 1
        owner = _name(entry.client)
        self._forget_address(entry, now)
        return f"{owner}: {format_address(address)} dropped: send failed ({errno_name(err)})"

    def route_failed(self, route: Route) -> None:
        """The shell could not open `route`'s socket (e.g. EMFILE): forget the probe."""
        self.stats.upstream_errors += 1
        if isinstance(route, ClientAddress):
            self.probes.pop(route.address, None)

    def take_closing(self) -> list[Route]:
        """Routes whose socket the shell must now unregister and close (then upstream=None)."""
        out = list(self._closing)
        self._closing.clear()  # in place: the shell's handlers hold the list (`pending_work`)
        return out

    @property
    def pending_work(self) -> tuple[list[str], list[Route]]:
        """The log lines and routes to close waiting for the shell (`take_log`,
        `take_closing`): two lists kept in place, so a hot loop tests them without a call."""
        return self._log, self._closing

    def take_log(self) -> list[str]:
        out = list(self._log)
        self._log.clear()
        return out

    # ---- status ------------------------------------------------------------------------------

    def snapshot(self, now: float, *, pending_shown: int | None = None) -> dict[str, Any]:
        """Everything the dashboard shows. ``pending_shown``: at most this many unproven
        addresses (the most recently heard) are described, so a flood of spoofed sources costs
        a bounded amount per call; ``pendingCount`` says how many there are (None: all)."""
        cutoff = now - self.timeout_s
        # The pump thread writes these tables while the dashboard asks: list() copies each in one
        # C call (the GIL is not released inside it), then only the copies are iterated.
        proven = list(self.addresses.values())
        pending_count = len(self.pending)
        if pending_shown is None or pending_shown >= pending_count:
            pending = list(reversed(self.pending.values()))
        else:
            pending = list(itertools.islice(reversed(self.pending.values()), pending_shown))
        clients = list(self.clients.values())
        sockets = [address_view(e, now, cutoff) for e in [*reversed(proven), *pending]]
        return {
            "type": "server",
            "description": self.config.description,
            "listenAddress": self.config.listenAddr,
            "dstAddress": self.config.dstAddr,
            "upstreamAddress": self.upstream_local,
            "clientTimeout": self.timeout_s,
            "maxClients": self.max_addresses,
            "maxPeers": self.max_peers,
            "relayNonWireGuard": not self.strict,
            "dedup": self.dedup,
            "uptime": max(0.0, now - self.started_at),
            "counters": self.stats.as_dict(),
            "latency": self.delay.as_json(now),
            "probesOpen": len(self.probes),
            "pendingCount": pending_count,
            "sockets": sockets,
            "clients": [client_view(c, now, cutoff) for c in clients],
        }

    # ---- internals: addresses ----------------------------------------------------------------

    def _seen(self, address: Address, local_raw: bytes | None, now: float) -> ClientAddress:
        entry = ClientAddress(address, local_raw, now, now)
        self.stats.addresses_seen += 1
        if self.everyone is None:
            if len(self.pending) >= self.max_addresses:
                _, old = self.pending.popitem(last=False)
                self.stats.pending_evicted += 1
                self._drop_probe(old)
            self.pending[address] = entry
        return entry

    def _touch(self, entry: ClientAddress, local_raw: bytes | None, now: float) -> None:
        entry.last_seen = now
        entry.local_raw = local_raw
        self.addresses.move_to_end(entry.address)
        if entry.client is not None:
            entry.client.last_seen = now

    def _count_rx(self, entry: ClientAddress, n: int) -> None:
        entry.rx_datagrams += 1
        entry.rx_bytes += n
        self.stats.clients_rx_datagrams += 1
        self.stats.clients_rx_bytes += n

    def _prove(self, entry: ClientAddress, client: Client, now: float, how: str) -> None:
        """`entry` is a path of `client` from now on."""
        if entry.client is client:
            return
        if entry.client is not None:  # proven for another client: the two are one peer
            self._merge(client, entry.client, now)
            return
        self.pending.pop(entry.address, None)
        if len(self.addresses) >= self.max_addresses:
            _, old = self.addresses.popitem(last=False)
            self.stats.addresses_evicted += 1
            self._log.append(
                f"address table full (maxClients {self.max_addresses}): "
                f"{_name(old.client)} loses {format_address(old.address)}"
            )
            self._forget_address(old, now, in_table=False)
        entry.client = client
        entry.proven_by = how
        entry.last_seen = now
        client.addresses[entry.address] = entry
        client.last_seen = now
        self.addresses[entry.address] = entry
        self.stats.addresses_proven += 1
        client.tracker.open(entry.quality, now)
        if entry.upstream is not None:
            entry.probe_proven_at = now
        self._log.append(
            f"{client.name}: {format_address(entry.address)} carrying the tunnel "
            f"(sent to {local_ip(entry.local_raw) or 'listenAddr'}; {_HOW[how]})"
        )

    def _forget_address(self, entry: ClientAddress, now: float, *, in_table: bool = True) -> None:
        if in_table:
            self.addresses.pop(entry.address, None)
            self.pending.pop(entry.address, None)
        client = entry.client
        if client is not None:
            if client.addresses.pop(entry.address, None) is not None:
                client.gone_rx_datagrams += entry.rx_datagrams
                client.gone_rx_bytes += entry.rx_bytes
                client.gone_tx_datagrams += entry.tx_datagrams
                client.gone_tx_bytes += entry.tx_bytes
            client.tracker.close(entry.quality, now)
        self._drop_probe(entry)

    def _drop_probe(self, entry: ClientAddress) -> None:
        if entry.address in self.probes and self.probes[entry.address] is entry:
            self._close_probe(entry)

    def _close_probe(self, entry: ClientAddress) -> None:
        self.probes.pop(entry.address, None)
        entry.probe_proven_at = None
        if entry.upstream is not None:
            self._closing.append(entry)

    def _probe(self, entry: ClientAddress, claim: int, now: float) -> Route | None:
        """Unproven transport data (or a response): WireGuard judges it through the address's
        own probe socket, if one is open or may be opened now."""
        entry.claim = claim
        if entry.address in self.probes:
            self.probes.move_to_end(entry.address)
            return entry
        elapsed = now - self._probe_tokens_at
        self._probe_tokens = min(PROBE_BURST, self._probe_tokens + elapsed * PROBE_RATE)
        self._probe_tokens_at = now
        if self._probe_tokens < 1.0:
            self.stats.probes_refused += 1
            self.stats.unproven_datagrams += 1
            return None
        self._probe_tokens -= 1.0
        if len(self.probes) >= MAX_PROBES:
            _, old = self.probes.popitem(last=False)
            self.probes[old.address] = old  # _close_probe pops it again
            self._close_probe(old)
        self.probes[entry.address] = entry
        self.stats.probes_opened += 1
        return entry

    # ---- internals: clients and indices ------------------------------------------------------

    def _new_client(self, now: float, *, log: bool = True) -> Client:
        if len(self.clients) >= self.max_peers:
            stalest = min(
                (c for c in self.clients.values() if c is not self.everyone),
                key=lambda c: c.last_seen,
            )
            self._log.append(
                f"client table full (maxPeers {self.max_peers}): {stalest.name} forgotten"
            )
            self.stats.clients_evicted += 1
            self._forget_client(stalest)
        client = Client(next(self._ids), now, now, CopyTracker(budget=self.budget))
        self.clients[client.id] = client
        self.stats.clients_created += 1
        if log:
            self._log.append(f"{client.name}: new WireGuard peer")
        return client

    def _forget_client(self, client: Client) -> None:
        for entry in list(client.addresses.values()):
            self._forget_address(entry, client.last_seen)
        for index in client.local_indices:
            if self.local_index.get(index) is client:
                del self.local_index[index]
        for index in client.peer_indices:
            if self.peer_index.get(index) is client:
                del self.peer_index[index]
        client.tracker.settle_all()
        self.clients.pop(client.id, None)
        if client.upstream is not None:
            self._closing.append(client)

    def _merge(self, survivor: Client, other: Client, now: float) -> Client:
        """`other` turned out to be the same WireGuard peer as `survivor`: one client."""
        if other is survivor:
            return survivor
        if other.id < survivor.id:
            survivor, other = other, survivor
        for entry in list(other.addresses.values()):
            other.tracker.close(entry.quality, now)
            entry.client = survivor
            survivor.addresses[entry.address] = entry
        other.addresses.clear()
        for index, at in other.local_indices.items():
            self.local_index[index] = survivor
            survivor.local_indices[index] = at
        for index, at in other.peer_indices.items():
            self.peer_index[index] = survivor
            survivor.peer_indices[index] = at
        other.local_indices.clear()
        other.peer_indices.clear()
        survivor.duplicates_dropped += other.duplicates_dropped
        survivor.last_seen = max(survivor.last_seen, other.last_seen)
        # WireGuard may be sending to other's socket right now (that may be how we learned they
        # are one): keep it open a moment, what arrives on it goes to the survivor.
        other.merged_into = survivor
        upstream, other.upstream = other.upstream, None
        self._forget_client(other)
        if upstream is not None:
            other.upstream = upstream
            self._lingering[other.id] = (other, now)
        self.stats.clients_merged += 1
        self._log.append(f"{other.name} is the same WireGuard peer as {survivor.name}: merged")
        return survivor

    def _learn_local(self, client: Client, index: int, now: float) -> None:
        owner = self.local_index.get(index)
        if owner is not None and owner is not client:
            del owner.local_indices[index]  # reused by our WireGuard for another session
        self.local_index[index] = client
        _remember(client.local_indices, index, now, self.local_index, client)

    def _learn_peer(self, client: Client, index: int, now: float) -> Client:
        owner = self.peer_index.get(index)
        if owner is client:
            return client
        if owner is not None:  # our WireGuard says: this socket's peer owns that session
            client = self._merge(owner, client, now)
            if index in client.peer_indices:
                return client
        self.peer_index[index] = client
        _remember(client.peer_indices, index, now, self.peer_index, client)
        return client

    def _expire_indices(self, client: Client, now: float) -> None:
        for table, owners in (
            (client.local_indices, self.local_index),
            (client.peer_indices, self.peer_index),
        ):
            for index, at in list(table.items()):
                if now - at > INDEX_TTL_S:
                    del table[index]
                    if owners.get(index) is client:
                        del owners[index]

    def _record_initiation(
        self, address: Address, data: bytes | bytearray | memoryview, now: float
    ) -> None:
        sender = wg.index_at(data, 4)
        record = self.initiations.get(sender)
        message = bytes(data[:148])
        if record is None:
            if len(self.initiations) >= MAX_INITIATIONS:
                self.initiations.popitem(last=False)
            record = self.initiations[sender] = Initiation(message, now)
        elif record.message != message:
            self.stats.initiation_mismatches += 1
            return
        if address not in record.senders and len(record.senders) < MAX_INITIATION_SENDERS:
            record.senders.append(address)

    def _initiators(self, peer: int) -> list[ClientAddress]:
        record = self.initiations.get(peer)
        if record is None:
            return []
        out = []
        for address in record.senders:
            entry = self.addresses.get(address) or self.pending.get(address)
            if entry is not None:
                out.append(entry)
        return out

    def _admit_initiators(self, client: Client, peer: int, now: float) -> Client:
        """Our WireGuard answered the initiation with sender index `peer`: every address that
        sent exactly that initiation is a path of `client`."""
        for entry in self._initiators(peer):
            if entry.client is not client:
                self._prove(entry, client, now, "handshake")
                if entry.client is not None and entry.client is not client:
                    client = entry.client  # merged into the older client
        return client


_HOW = {
    "copy": "its copies match a proven address's",
    "handshake": "WireGuard answered its handshake",
    "wireguard": "WireGuard answered its data",
    "relayNonWireGuard": "relayNonWireGuard: every address is served",
}


def _remember(
    table: dict[int, float], index: int, now: float, owners: dict[int, Client], client: Client
) -> None:
    table[index] = now
    while len(table) > MAX_INDICES:
        oldest = next(iter(table))
        del table[oldest]
        if owners.get(oldest) is client:
            del owners[oldest]


def _name(client: Client | None) -> str:
    return client.name if client is not None else "unproven"


__all__ = ["ServerCore", "ServerStats", "lag_quantile_s"]
