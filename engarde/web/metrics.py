"""Prometheus exposition at /metrics: a custom collector over one core snapshot per scrape.

Theory of operation: nothing is counted twice. The relay's own counters (engarde.core.stats)
are the truth; at scrape time `EngardeCollector` takes one snapshot and turns it into metric
families. The registry is private to the app (never prometheus_client's global one), so two
dashboards in one process (tests) do not collide, and no process/platform collectors are added.

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

Server (per client address, label ``address``)::

    engarde_server_client_alive, engarde_server_client_last_receive_age_seconds
    engarde_server_client_rx_datagrams_total / _rx_bytes_total   (copies from the client)
    engarde_server_client_tx_datagrams_total / _tx_bytes_total   (WireGuard's replies to it)
    engarde_server_client_tx_dropped_total{reason}               buffer_full | error
    engarde_server_clients{state}                 alive | pending | expired (not yet forgotten)
    engarde_server_clients_{admitted,confirmed,expired,evicted,dropped}_total
    engarde_server_clients_rx_{datagrams,bytes}_total   everything received from clients
    engarde_server_junk_dropped_total             datagrams not shaped like WireGuard
    engarde_server_unproven_dropped_total         data from unknown addresses for no session

Both roles: ``engarde_info{version,role}``, ``engarde_uptime_seconds``,
``engarde_wireguard_{rx,tx}_{datagrams,bytes}_total``,
``engarde_wireguard_tx_dropped_total{reason}``, ``engarde_empty_datagrams_total``,
``engarde_receive_errors_total``; client: ``engarde_no_uplink_dropped_total``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from engarde.web import views
from engarde.web.live import Dashboard

UPLINK_STATES = ("up", "starting", "error", "admin-down", "no-carrier", "no-address", "excluded")


def make_registry(dashboard: Dashboard) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngardeCollector(dashboard))
    return registry


class EngardeCollector(Collector):
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def collect(self) -> Iterator[Metric]:
        snap = self.dashboard.snapshot()
        info = InfoMetricFamily("engarde", "engarde version and role")
        info.add_metric([], {"version": self.dashboard.version, "role": self.dashboard.role})
        yield info
        yield GaugeMetricFamily(
            "engarde_uptime_seconds", "Seconds since the relay started", value=snap["uptime"]
        )
        yield from _relay(snap["counters"], self.dashboard.role)
        if self.dashboard.role == "client":
            yield from _uplinks(snap)
        else:
            yield from _server_clients(snap)


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
    if role == "client":
        yield _counter(
            "engarde_no_uplink_dropped",
            "Datagrams from WireGuard dropped because no uplink was usable",
            c["no_uplink_drops"],
        )
    else:
        yield _counter(
            "engarde_server_clients_rx_datagrams",
            "Datagrams received from all client addresses",
            c.get("clients_rx_datagrams", 0),
        )
        yield _counter(
            "engarde_server_clients_rx_bytes",
            "Bytes received from all client addresses",
            c.get("clients_rx_bytes", 0),
        )
        yield _counter(
            "engarde_server_unproven_dropped",
            "WireGuard data from unknown addresses naming no session of ours, dropped",
            c.get("unproven_datagrams", 0),
        )
        yield _counter(
            "engarde_server_junk_dropped",
            "Datagrams from clients not shaped like WireGuard, dropped",
            c.get("junk_datagrams", 0),
        )
        for what in ("admitted", "confirmed", "expired", "evicted", "dropped"):
            yield _counter(
                f"engarde_server_clients_{what}",
                f"Client addresses {what}",
                c.get(f"clients_{what}", 0),
            )


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
    yield from (up, excluded, state, tx_d, tx_b, tx_drop, rx_d, rx_b, rx_drop, age)
    yield GaugeMetricFamily("engarde_uplinks_active", "Uplinks carrying copies", value=active)


def _server_clients(snap: dict[str, Any]) -> Iterator[Metric]:
    labels = ["address"]
    alive = GaugeMetricFamily(
        "engarde_server_client_alive",
        "1 while the client address gets WireGuard's replies (alive and confirmed)",
        labels=labels,
    )
    age = GaugeMetricFamily(
        "engarde_server_client_last_receive_age_seconds",
        "Seconds since the client address last sent",
        labels=labels,
    )
    rx_d = CounterMetricFamily(
        "engarde_server_client_rx_datagrams",
        "Copies received from the client address",
        labels=labels,
    )
    rx_b = CounterMetricFamily(
        "engarde_server_client_rx_bytes", "Bytes received from the client address", labels=labels
    )
    tx_d = CounterMetricFamily(
        "engarde_server_client_tx_datagrams",
        "WireGuard replies sent to the client address",
        labels=labels,
    )
    tx_b = CounterMetricFamily(
        "engarde_server_client_tx_bytes", "Bytes sent to the client address", labels=labels
    )
    tx_drop = CounterMetricFamily(
        "engarde_server_client_tx_dropped",
        "Replies not sent to the client address, by reason",
        labels=[*labels, "reason"],
    )
    states = {"alive": 0, "pending": 0, "expired": 0}
    for sock in snap["sockets"]:
        key = [sock["address"]]
        c = sock["counters"]
        state = views.server_client_state(sock)
        states[state] += 1
        alive.add_metric(key, 1.0 if state == "alive" else 0.0)
        age.add_metric(key, sock["lastReceivedAge"])
        rx_d.add_metric(key, c["rx_datagrams"])
        rx_b.add_metric(key, c["rx_bytes"])
        tx_d.add_metric(key, c["tx_datagrams"])
        tx_b.add_metric(key, c["tx_bytes"])
        tx_drop.add_metric([*key, "buffer_full"], c["tx_dropped_full"])
        tx_drop.add_metric([*key, "error"], c["tx_errors"])
    yield from (alive, age, rx_d, rx_b, tx_d, tx_b, tx_drop)
    count = GaugeMetricFamily(
        "engarde_server_clients", "Client addresses, by state", labels=["state"]
    )
    for state, n in states.items():
        count.add_metric([state], n)
    yield count


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
