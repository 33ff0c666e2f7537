"""JSON documents of the web API, built from a core snapshot. Pure: no quart, no trio, no clock.

Theory of operation: the core's ``snapshot(now)`` is the only view the web side has of the relay.
This module reshapes it into

* the v1 documents, exactly the Go original's ``/api/v1/get-list`` fields (the OpenWrt LuCI app
  and users' scripts parse them), and
* the v2 status document, which says per link *why* it is (not) carrying copies, what it sent,
  received and dropped, and whether it "went quiet" while the others still receive.

Field names of the core's snapshot are read in one place each, so a renamed core field breaks the
web tests instead of silently turning into ``null`` in the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

JSON = dict[str, Any]

QUIET_AFTER_S = 5.0
"""An active link is "quiet" when it has heard nothing from the server for this long while
another active link has (and it has been in its state at least this long)."""

Rates = Mapping[str, tuple[float, float]]
"""Per link (client: interface name; server: client address): (tx, rx) bytes per second."""


# ---- v1: the Go original's shapes ---------------------------------------------------------


def client_get_list(snapshot: JSON, version: str) -> JSON:
    """``GET /api/v1/get-list`` for the client role, the original's fields only."""
    interfaces = []
    for link in snapshot["interfaces"]:
        excluded = effectively_excluded(link)
        status = "excluded" if excluded else link["status"]
        item: JSON = {"name": link["name"]}
        if link["label"]:
            item["label"] = link["label"]
        item["status"] = status
        item["senderAddress"] = link["senderAddress"]
        item["dstAddress"] = "" if excluded else link["dstAddress"]
        age = link["lastReceivedAge"]
        # The original reports `last` only for a running uplink socket that received something.
        item["last"] = int(age) if status == "active" and age is not None else None
        interfaces.append(item)
    return {**_identity(snapshot, version, dst=False), "interfaces": interfaces}


def server_get_list(snapshot: JSON, version: str) -> JSON:
    """``GET /api/v1/get-list`` for the server role, the original's fields only."""
    return {
        **_identity(snapshot, version),
        "sockets": [
            {"address": s["address"], "last": int(s["lastReceivedAge"])}
            for s in snapshot["sockets"]
        ],
    }


def _identity(snapshot: JSON, version: str, *, dst: bool = True) -> JSON:
    """The fields every answer starts with (v1 client's get-list has no dstAddress)."""
    head: JSON = {
        "type": snapshot["type"],
        "version": version,
        "description": snapshot["description"],
        "listenAddress": snapshot["listenAddress"],
    }
    if dst:
        head["dstAddress"] = snapshot["dstAddress"]
    return head


def effectively_excluded(link: JSON) -> bool:
    """Excluded by the config XOR toggled at runtime, whatever the link's state."""
    return bool(link["excluded"])


# ---- v2: richer status ----------------------------------------------------------------------

_REASONS = {
    "up": "carrying copies",
    "starting": "opening its socket",
    "admin-down": "interface is administratively down",
    "no-carrier": "no carrier (cable unplugged, modem or peer down)",
    "no-address": "no usable IPv4 address",
    "gone": "interface removed",
}


def link_state(link: JSON) -> tuple[str, str]:
    """(state, reason) of one client link: a short machine word and a sentence for humans.

    state is one of: up, starting, error, admin-down, no-carrier, no-address, excluded.
    """
    raw: str = link["reason"]
    if effectively_excluded(link):
        where = "in engarde.yml" if link["excludedByConfig"] else "at runtime"
        reason = f"excluded {where}"
        kernel = link.get("linkState", raw)
        if kernel != "up":
            reason += f"; also {_REASONS.get(kernel, kernel)}"
        return "excluded", reason
    if raw.startswith("error"):
        detail = raw.partition(":")[2].strip() or link.get("lastError", "")
        return "error", f"socket failed: {detail}" if detail else "socket failed"
    if raw == "up" and link["status"] != "active":
        return "starting", _REASONS["starting"]
    return raw, _REASONS.get(raw, raw)


def client_status(snapshot: JSON, version: str, rates: Rates | None = None) -> JSON:
    """``GET /api/v2/status`` for the client role."""
    rates = rates or {}
    links = [_client_link(link, rates) for link in snapshot["interfaces"]]
    _mark_quiet(links)
    counters = dict(snapshot["counters"])
    return {
        **_identity(snapshot, version),
        "wireguardPeer": snapshot["wireguardPeer"],
        "uptime": round(snapshot["uptime"], 3),
        "activeLinks": sum(1 for link in links if link["status"] == "active"),
        "counters": counters,
        "links": links,
    }


def _client_link(link: JSON, rates: Rates) -> JSON:
    c = link["counters"]
    state, reason = link_state(link)
    excluded = effectively_excluded(link)
    status = "excluded" if excluded else link["status"]
    excluded_by = None
    if excluded:
        excluded_by = "config" if link["excludedByConfig"] else "runtime"
    tx_rate, rx_rate = rates.get(link["name"], (0.0, 0.0))
    return {
        "name": link["name"],
        "label": link["label"],
        "index": link["index"],
        "status": status,
        "state": state,
        "reason": reason,
        "excluded": excluded,
        "excludedBy": excluded_by,
        "senderAddress": link["senderAddress"],
        "addresses": list(link["addresses"]),
        "dstAddress": "" if excluded else link["dstAddress"],
        "dstResolved": link["dstResolved"],
        "localPort": link["localPort"],
        "adminUp": link["adminUp"],
        "carrier": link["carrier"],
        "quiet": False,
        "lastReceivedAge": _age(link["lastReceivedAge"]),
        "firstSeenAge": _age(link["firstSeenAge"]),
        "stateAge": _age(link["stateAge"]),
        "lastError": link["lastError"],
        "tx": {
            "datagrams": c["tx_datagrams"],
            "bytes": c["tx_bytes"],
            "bytesPerSecond": round(tx_rate, 1),
            "dropped": {"buffer_full": c["tx_dropped_full"], "error": c["tx_errors"]},
            "lastErrno": c["last_tx_errno"],
        },
        "rx": {
            "datagrams": c["rx_datagrams"],
            "bytes": c["rx_bytes"],
            "bytesPerSecond": round(rx_rate, 1),
            "dropped": {
                "foreign": c["rx_foreign"],
                "no_peer": c["rx_no_peer"],
                "buffer_full": c["rx_dropped_full"],
            },
        },
    }


def _mark_quiet(links: Sequence[JSON]) -> None:
    """Flag active links that hear nothing while another active link does."""
    active = [link for link in links if link["status"] == "active"]

    def hearing(link: JSON) -> bool:
        age = link["lastReceivedAge"]
        return age is not None and age <= QUIET_AFTER_S

    for link in active:
        if hearing(link) or (link["stateAge"] or 0.0) < QUIET_AFTER_S:
            continue
        link["quiet"] = any(hearing(other) for other in active if other is not link)


def server_status(snapshot: JSON, version: str, rates: Rates | None = None) -> JSON:
    """``GET /api/v2/status`` for the server role."""
    rates = rates or {}
    clients = [_server_client(s, rates) for s in snapshot["sockets"]]
    return {
        **_identity(snapshot, version),
        "upstreamAddress": snapshot.get("upstreamAddress", ""),
        "clientTimeout": snapshot["clientTimeout"],
        "maxClients": snapshot["maxClients"],
        "relayNonWireGuard": snapshot.get("relayNonWireGuard", True),
        "uptime": round(snapshot["uptime"], 3),
        "clientsAlive": sum(1 for c in clients if c["state"] == "alive"),
        "clientsPending": sum(1 for c in clients if c["state"] == "pending"),
        "counters": dict(snapshot["counters"]),
        "clients": clients,
    }


def _server_client(sock: JSON, rates: Rates) -> JSON:
    c = sock["counters"]
    tx_rate, rx_rate = rates.get(sock["address"], (0.0, 0.0))
    return {
        "address": sock["address"],
        "localAddress": sock["localAddress"],
        "state": server_client_state(sock),
        "alive": sock["alive"],
        "confirmed": sock.get("confirmed", True),
        "last": int(sock["lastReceivedAge"]),
        "lastReceivedAge": _age(sock["lastReceivedAge"]),
        "firstSeenAge": _age(sock["firstSeenAge"]),
        "rx": {
            "datagrams": c["rx_datagrams"],
            "bytes": c["rx_bytes"],
            "bytesPerSecond": round(rx_rate, 1),
        },
        "tx": {
            "datagrams": c["tx_datagrams"],
            "bytes": c["tx_bytes"],
            "bytesPerSecond": round(tx_rate, 1),
            "dropped": {"buffer_full": c["tx_dropped_full"], "error": c["tx_errors"]},
            "lastErrno": c["last_tx_errno"],
        },
    }


def server_client_state(sock: JSON) -> str:
    """alive: gets WireGuard's replies; pending: seen, but not yet proven to carry a WireGuard
    session of ours (gets handshakes only); expired: silent longer than clientTimeout."""
    if not sock["alive"]:
        return "expired"
    return "alive" if sock.get("confirmed", True) else "pending"


def _age(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---- traffic totals for the history -----------------------------------------------------------

Totals = dict[str, tuple[int, int, int, int]]
"""Per key: cumulative (tx bytes, rx bytes, tx datagrams, rx datagrams)."""


def traffic_totals(snapshot: JSON) -> Totals:
    """The cumulative counters the history turns into per-second deltas.

    Client: per interface name, tx = towards the server. Server: per client address, tx =
    towards that client (WireGuard's replies), rx = its copies.
    """
    out: Totals = {}
    if snapshot["type"] == "client":
        for link in snapshot["interfaces"]:
            c = link["counters"]
            out[link["name"]] = (c["tx_bytes"], c["rx_bytes"], c["tx_datagrams"], c["rx_datagrams"])
    else:
        for sock in snapshot["sockets"]:
            c = sock["counters"]
            out[sock["address"]] = (
                c["tx_bytes"],
                c["rx_bytes"],
                c["tx_datagrams"],
                c["rx_datagrams"],
            )
    return out
