"""Prometheus exposition at /metrics: a custom collector over one core snapshot per scrape.

Theory of operation: nothing is counted twice. The relay's own counters (engarde.core.stats,
engarde.core.copies) are the truth; at scrape time `EngardeCollector` takes one snapshot and
turns it into metric families. The registry is private to the app (never prometheus_client's
global one), so two dashboards in one process (tests) do not collide, and no process/platform
collectors are added.

Client (per uplink, labels ``interface`` and ``label``)::

    engarde_uplink_up                         1 when the uplink's socket is carrying copies
    engarde_uplink_excluded                   1 when excluded (config XOR runtime toggle)
    engarde_uplink_state{state}               1 for the link's current state
    engarde_uplink_tx_datagrams_total / _tx_bytes_total
    engarde_uplink_tx_dropped_total{reason}   buffer_full | error
    engarde_uplink_rx_datagrams_total / _rx_bytes_total
    engarde_uplink_rx_dropped_total{reason}   foreign | no_peer | buffer_full
    engarde_uplink_last_receive_age_seconds   only for links that received something
    engarde_uplinks_active

Server, per proven client address (labels ``client``: the client's id, and ``address``:
ip:port; unproven addresses have no series of their own, whatever a spoofed-source flood
sends: they are counted in ``engarde_server_addresses{state="pending"}`` and
``engarde_server_unproven_rx_*_total``, so the number of series is bounded by maxClients)::

    engarde_server_address_alive, engarde_server_address_last_receive_age_seconds
    engarde_server_address_rx_datagrams_total / _rx_bytes_total   (copies from it)
    engarde_server_address_tx_datagrams_total / _tx_bytes_total   (WireGuard's replies to it)
    engarde_server_address_tx_dropped_total{reason}               buffer_full | error

(these were ``engarde_server_client_*{address}`` before clients were groups of addresses);
per client (label ``client``): ``engarde_server_client_addresses_alive``,
``engarde_server_client_duplicates_dropped_total``; and::

    engarde_server_clients                        clients (WireGuard peers)
    engarde_server_addresses{state}               alive | pending | expired (was
                                                  engarde_server_clients{state})
    engarde_server_probes_open
    engarde_server_clients_rx_{datagrams,bytes}_total   everything received from client addresses
    engarde_server_unproven_rx_{datagrams,bytes}_total  of which from unproven addresses
    engarde_server_{junk,unproven}_dropped_total
    engarde_server_addresses_{seen,proven,expired,evicted,dropped}_total
    engarde_server_pending_evicted_total
    engarde_server_clients_{created,expired,evicted,merged}_total
    engarde_server_probes_{opened,refused}_total
    engarde_server_{wrong_session_datagrams,initiation_mismatches,cookies_to_unproven,
                    unroutable_from_wireguard,upstream_errors,local_moves,
                    local_moves_refused}_total

What each link's copies are worth, on the receiving side (client: per uplink, labels
``interface``, ``label``; server: per proven client address, labels ``client``, ``address``;
an unproven address is never measured)::

    engarde_link_copies_won_total     first copy of a datagram
    engarde_link_copies_late_total    exact copy after another link's
    engarde_link_copies_lost_total    another link delivered it, this one never did
    engarde_link_copies_saved_total   only this link delivered it: the tunnel would have lost it
    engarde_link_lag_seconds          histogram: how far behind the first copy the late ones
                                      came (buckets: engarde.core.copies.LAG_BOUNDS_S; _sum is
                                      the exact sum of the lags)

The relay's own added delay (both roles; one datagram per hot socket every 10 ms, kernel
receive timestamp to handling, engarde.net.latency)::

    engarde_relay_delay_seconds       histogram (buckets: engarde.core.latency.BOUNDS_S)
    engarde_relay_delay_max_seconds   the largest sample since start

Both roles: ``engarde_info{version,role}``, ``engarde_uptime_seconds``,
``engarde_wireguard_{rx,tx}_{datagrams,bytes}_total``,
``engarde_wireguard_tx_dropped_total{reason}``, ``engarde_empty_datagrams_total``,
``engarde_receive_errors_total``, ``engarde_duplicates_dropped_total``; client:
``engarde_no_uplink_dropped_total``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from engarde.core.copies import LAG_BOUNDS_S
from engarde.core.latency import cumulative
from engarde.web import views
from engarde.web.live import Dashboard

UPLINK_STATES = (
    "up",
    "starting",
    "error",
    "admin-down",
    "no-carrier",
    "no-address",
    "tentative",
    "no-destination",
    "excluded",
)


def make_registry(dashboard: Dashboard) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngardeCollector(dashboard))
    return registry


class EngardeCollector(Collector):
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def collect(self) -> Iterator[Metric]:
        snap = self.dashboard.snapshot(pending_shown=0)  # unproven: counts only
        info = InfoMetricFamily("engarde", "engarde version and role")
        info.add_metric([], {"version": self.dashboard.version, "role": self.dashboard.role})
        yield info
        yield GaugeMetricFamily(
            "engarde_uptime_seconds", "Seconds since the relay started", value=snap["uptime"]
        )
        yield from _relay(snap["counters"], self.dashboard.role)
        yield from _delay(snap["latency"])
        if self.dashboard.role == "client":
            yield from _uplinks(snap)
        else:
            yield from _server_addresses(snap)
            yield from _server_clients(snap)


def _delay(latency: dict[str, Any]) -> Iterator[Metric]:
    """The relay's added delay, sampled by the pump (engarde.net.latency)."""
    h = latency["histogram"]
    histogram = HistogramMetricFamily(
        "engarde_relay_delay_seconds",
        "Sampled datagrams: from the kernel's receive timestamp to the relay handling them",
    )
    buckets = [
        ("+Inf" if bound == float("inf") else repr(bound), float(n))
        for bound, n in cumulative(h["boundsS"], h["counts"])
    ]
    histogram.add_metric([], buckets, sum_value=h["sumS"])
    yield histogram
    yield GaugeMetricFamily(
        "engarde_relay_delay_max_seconds",
        "The largest sampled added delay since the relay started",
        value=(latency["maxMs"] or 0.0) / 1000.0,
    )


def _relay(c: dict[str, Any], role: str) -> Iterator[Metric]:
    yield _counter(
        "engarde_wireguard_rx_datagrams", "Datagrams received from WireGuard", c["wg_rx_datagrams"]
    )
    yield _counter("engarde_wireguard_rx_bytes", "Bytes received from WireGuard", c["wg_rx_bytes"])
    yield _counter(
        "engarde_wireguard_tx_datagrams", "Datagrams delivered to WireGuard", c["wg_tx_datagrams"]
    )
    yield _counter("engarde_wireguard_tx_bytes", "Bytes delivered to WireGuard", c["wg_tx_bytes"])
    dropped = CounterMetricFamily(
        "engarde_wireguard_tx_dropped",
        "Datagrams for WireGuard not delivered, by reason",
        labels=["reason"],
    )
    dropped.add_metric(["buffer_full"], c["wg_tx_dropped_full"])
    dropped.add_metric(["error"], c["wg_tx_errors"])
    yield dropped
    yield _counter(
        "engarde_empty_datagrams", "Zero-length datagrams, never relayed", c["empty_datagrams"]
    )
    yield _counter("engarde_receive_errors", "Errors receiving datagrams", c["recv_errors"])
    yield _counter(
        "engarde_duplicates_dropped",
        "Exact copies of a datagram already handed on, dropped before WireGuard",
        c["duplicates_dropped"],
    )
    if role == "client":
        yield _counter(
            "engarde_no_uplink_dropped",
            "Datagrams from WireGuard dropped because no uplink was usable",
            c["no_uplink_drops"],
        )
        yield _counter(
            "engarde_wireguard_peer_changes",
            "Times WireGuard's source address (where replies go) changed",
            c["wg_peer_changes"],
        )
        yield _counter(
            "engarde_destination_moves",
            "Times a host-name dstAddr resolved to a new address and the paths followed",
            c["destination_moves"],
        )
    else:
        yield _counter(
            "engarde_server_clients_rx_datagrams",
            "Datagrams received from all client addresses",
            c["clients_rx_datagrams"],
        )
        yield _counter(
            "engarde_server_clients_rx_bytes",
            "Bytes received from all client addresses",
            c["clients_rx_bytes"],
        )
        yield _counter(
            "engarde_server_unproven_rx_datagrams",
            "Datagrams received from client addresses not proven (yet)",
            c["unproven_rx_datagrams"],
        )
        yield _counter(
            "engarde_server_unproven_rx_bytes",
            "Bytes received from client addresses not proven (yet)",
            c["unproven_rx_bytes"],
        )
        for name, (field, doc) in _SERVER_COUNTERS.items():
            yield _counter(f"engarde_server_{name}", doc, c[field])


_SERVER_COUNTERS = {  # metric name (engarde_server_..._total): (ServerStats field, help)
    "junk_dropped": ("junk_datagrams", "Datagrams not shaped like WireGuard, dropped"),
    "unproven_dropped": (
        "unproven_datagrams",
        "Data from unproven addresses that no probe could judge (probe cap or rate), dropped",
    ),
    "addresses_seen": ("addresses_seen", "New client addresses (source ip:port) seen"),
    "addresses_proven": ("addresses_proven", "Client addresses proven to carry a client's tunnel"),
    "addresses_expired": (
        "addresses_expired",
        "Proven client addresses forgotten after clientTimeout of silence",
    ),
    "addresses_evicted": (
        "addresses_evicted",
        "Proven client addresses pushed out of a full table (maxClients)",
    ),
    "pending_evicted": (
        "pending_evicted",
        "Unproven client addresses pushed out of a full table (maxClients)",
    ),
    "addresses_dropped": ("addresses_dropped", "Client addresses forgotten after a failed send"),
    "clients_created": ("clients_created", "Clients (WireGuard peers) created"),
    "clients_expired": ("clients_expired", "Clients forgotten: no address left"),
    "clients_evicted": ("clients_evicted", "Clients pushed out of a full table (maxPeers)"),
    "clients_merged": ("clients_merged", "Clients found to be the same WireGuard peer, merged"),
    "wrong_session_datagrams": (
        "wrong_session_datagrams",
        "Data from a proven address naming no session of its client (passed on, refreshes nothing)",
    ),
    "probes_opened": ("probes_opened", "Probe sockets opened for unproven addresses"),
    "probes_refused": (
        "probes_refused",
        "Probes refused (cap or rate reached): their datagram was dropped",
    ),
    "initiation_mismatches": (
        "initiation_mismatches",
        "Handshake initiations reusing a sender index with other bytes (not copies)",
    ),
    "cookies_to_unproven": (
        "cookies_to_unproven",
        "WireGuard cookie replies sent to initiators not proven yet",
    ),
    "unroutable_from_wireguard": (
        "unroutable_from_wireguard",
        "Datagrams from WireGuard for no known address, dropped",
    ),
    "upstream_errors": (
        "upstream_errors",
        "Upstream sockets towards WireGuard that could not be opened",
    ),
    "local_moves": (
        "local_moves",
        "Proven addresses now sending to another server address (proven by an exact copy)",
    ),
    "local_moves_refused": (
        "local_moves_refused",
        "Datagrams claiming a proven address moved to another server address, unproven",
    ),
}


def _uplinks(snap: dict[str, Any]) -> Iterator[Metric]:
    labels = ["interface", "label"]
    up = GaugeMetricFamily("engarde_uplink_up", "1 when the uplink carries copies", labels=labels)
    excluded = GaugeMetricFamily(
        "engarde_uplink_excluded", "1 when the uplink is excluded", labels=labels
    )
    state = GaugeMetricFamily(
        "engarde_uplink_state", "1 for the uplink's current state", labels=[*labels, "state"]
    )
    tx_d = CounterMetricFamily(
        "engarde_uplink_tx_datagrams", "Copies sent on the uplink", labels=labels
    )
    tx_b = CounterMetricFamily("engarde_uplink_tx_bytes", "Bytes sent on the uplink", labels=labels)
    tx_drop = CounterMetricFamily(
        "engarde_uplink_tx_dropped",
        "Copies not sent on the uplink, by reason",
        labels=[*labels, "reason"],
    )
    rx_d = CounterMetricFamily(
        "engarde_uplink_rx_datagrams",
        "Datagrams received from the server on the uplink",
        labels=labels,
    )
    rx_b = CounterMetricFamily(
        "engarde_uplink_rx_bytes", "Bytes received from the server on the uplink", labels=labels
    )
    rx_drop = CounterMetricFamily(
        "engarde_uplink_rx_dropped",
        "Datagrams received on the uplink and dropped, by reason",
        labels=[*labels, "reason"],
    )
    age = GaugeMetricFamily(
        "engarde_uplink_last_receive_age_seconds",
        "Seconds since the uplink last received from the server",
        labels=labels,
    )
    copies = _CopyMetrics(labels, "uplink")
    active = 0
    for link in snap["interfaces"]:
        key = [link["name"], link["label"]]
        c = link["counters"]
        is_up = link["status"] == "active"
        active += is_up
        link_state, _ = views.link_state(link)
        up.add_metric(key, 1.0 if is_up else 0.0)
        excluded.add_metric(key, 1.0 if views.effectively_excluded(link) else 0.0)
        state.add_metric([*key, link_state], 1.0)
        tx_d.add_metric(key, c["tx_datagrams"])
        tx_b.add_metric(key, c["tx_bytes"])
        tx_drop.add_metric([*key, "buffer_full"], c["tx_dropped_full"])
        tx_drop.add_metric([*key, "error"], c["tx_errors"])
        rx_d.add_metric(key, c["rx_datagrams"])
        rx_b.add_metric(key, c["rx_bytes"])
        rx_drop.add_metric([*key, "foreign"], c["rx_foreign"])
        rx_drop.add_metric([*key, "no_peer"], c["rx_no_peer"])
        rx_drop.add_metric([*key, "buffer_full"], c["rx_dropped_full"])
        if link["lastReceivedAge"] is not None:
            age.add_metric(key, link["lastReceivedAge"])
        copies.add(key, link["quality"])
    yield from (up, excluded, state, tx_d, tx_b, tx_drop, rx_d, rx_b, rx_drop, age)
    yield from copies.families()
    yield GaugeMetricFamily("engarde_uplinks_active", "Uplinks carrying copies", value=active)


def _server_addresses(snap: dict[str, Any]) -> Iterator[Metric]:
    labels = ["client", "address"]
    alive = GaugeMetricFamily(
        "engarde_server_address_alive",
        "1 while the client address gets WireGuard's replies (proven and not silent)",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "engarde_server_address_last_receive_age_seconds",
        "Seconds since the client address last sent",
        labels=labels,
    )
    rx_d = CounterMetricFamily(
        "engarde_server_address_rx_datagrams",
        "Datagrams received from the client address",
        labels=labels,
    )
    rx_b = CounterMetricFamily(
        "engarde_server_address_rx_bytes", "Bytes received from the client address", labels=labels
    )
    tx_d = CounterMetricFamily(
        "engarde_server_address_tx_datagrams",
        "WireGuard replies sent to the client address",
        labels=labels,
    )
    tx_b = CounterMetricFamily(
        "engarde_server_address_tx_bytes", "Bytes sent to the client address", labels=labels
    )
    tx_drop = CounterMetricFamily(
        "engarde_server_address_tx_dropped",
        "Replies not sent to the client address, by reason",
        labels=[*labels, "reason"],
    )
    copies = _CopyMetrics(labels, "client address")
    states = {"alive": 0, "pending": 0, "expired": 0}
    for sock in snap["sockets"]:
        client = sock["client"]
        state = views.server_address_state(sock)
        if client is None:
            continue  # unproven: counted below, never a series (a flood of spoofed sources)
        key = [str(client), sock["address"]]
        c = sock["counters"]
        states[state] += 1
        alive.add_metric(key, 1.0 if state == "alive" else 0.0)
        age.add_metric(key, sock["lastReceivedAge"])
        rx_d.add_metric(key, c["rx_datagrams"])
        rx_b.add_metric(key, c["rx_bytes"])
        tx_d.add_metric(key, c["tx_datagrams"])
        tx_b.add_metric(key, c["tx_bytes"])
        tx_drop.add_metric([*key, "buffer_full"], c["tx_dropped_full"])
        tx_drop.add_metric([*key, "error"], c["tx_errors"])
        copies.add(key, sock["quality"])
    states["pending"] = snap["pendingCount"]
    yield from (alive, age, rx_d, rx_b, tx_d, tx_b, tx_drop)
    yield from copies.families()
    count = GaugeMetricFamily(
        "engarde_server_addresses", "Client addresses, by state", labels=["state"]
    )
    for state, n in states.items():
        count.add_metric([state], n)
    yield count


def _server_clients(snap: dict[str, Any]) -> Iterator[Metric]:
    groups = snap["clients"]
    yield GaugeMetricFamily(
        "engarde_server_clients",
        "Clients (WireGuard peers, each with its own upstream socket)",
        value=len(groups),
    )
    labels = ["client"]
    alive = GaugeMetricFamily(
        "engarde_server_client_addresses_alive",
        "Proven addresses of the client that get WireGuard's replies",
        labels=labels,
    )
    duplicates = CounterMetricFamily(
        "engarde_server_client_duplicates_dropped",
        "Exact copies of the client's datagrams dropped before WireGuard",
        labels=labels,
    )
    for group in groups:
        key = [str(group["id"])]
        alive.add_metric(key, group["alive"])
        duplicates.add_metric(key, group["duplicatesDropped"])
    yield from (alive, duplicates)
    yield GaugeMetricFamily(
        "engarde_server_probes_open",
        "Unproven addresses with a probe socket open (WireGuard judges their data)",
        value=snap["probesOpen"],
    )


class _CopyMetrics:
    """engarde_link_copies_{won,late,lost,saved}_total and engarde_link_lag_seconds, for the
    links of one role (client: uplinks; server: client addresses)."""

    def __init__(self, labels: list[str], what: str) -> None:
        self.counters = {
            name: CounterMetricFamily(
                f"engarde_link_copies_{name}", doc.format(what), labels=labels
            )
            for name, doc in _COPY_DOCS.items()
        }
        self.lag = HistogramMetricFamily(
            "engarde_link_lag_seconds",
            f"How far behind the first copy the {what}'s late copies arrived",
            labels=labels,
        )

    def add(self, key: list[str], quality: dict[str, Any]) -> None:
        for name, family in self.counters.items():
            family.add_metric(key, quality[name])
        buckets, estimate = lag_histogram(quality["lag_buckets"])
        self.lag.add_metric(key, buckets, sum_value=quality.get("lag_sum_s", estimate))

    def families(self) -> Iterator[Metric]:
        yield from self.counters.values()
        yield self.lag


_COPY_DOCS = {
    "won": "Copies that arrived first over the {}",
    "late": "Exact copies that arrived over the {} after another link's",
    "lost": "Datagrams another link delivered and the {} never did (while it carried copies)",
    "saved": "Datagrams only the {} delivered while other links were expected to",
}


def lag_histogram(counts: list[int]) -> tuple[list[tuple[str, float]], float]:
    """Prometheus buckets (cumulative, ending with +Inf) of a lag histogram from the core
    (per bucket, not cumulative; bounds LAG_BOUNDS_S, the last bucket beyond them), and its sum
    estimated from each bucket's midpoint (the bucket beyond the last bound counts as the last
    bound), for a quality that carries no exact `lag_sum_s`."""
    buckets: list[tuple[str, float]] = []
    running = 0
    total = 0.0
    lower = 0.0
    for i, n in enumerate(counts):
        running += n
        if i < len(LAG_BOUNDS_S):
            upper = LAG_BOUNDS_S[i]
            buckets.append((repr(upper), float(running)))
            total += n * (lower + upper) / 2
            lower = upper
        else:
            total += n * LAG_BOUNDS_S[-1]
    buckets.append(("+Inf", float(running)))
    return buckets, total


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
