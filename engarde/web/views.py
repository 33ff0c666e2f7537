"""JSON documents of the web API, built from a core snapshot. Pure: no quart, no trio, no clock.

Theory of operation: the core's ``snapshot(now)`` is the only view the web side has of the relay.
This module reshapes it into

* the v1 documents, exactly the Go original's ``/api/v1/get-list`` fields (the OpenWrt LuCI app
  and users' scripts parse them), and
* the v2 status document, which says per link *why* it is (not) carrying copies, what it sent,
  received and dropped, whether it "went quiet" while the others still receive, and what its
  copies are worth (first arrivals, loss, lag, datagrams only it delivered: engarde.web.quality).
  On the server, client addresses are grouped under their client (one per WireGuard peer, as
  the core groups them); addresses not proven yet are listed apart as ``pending``.

Field names of the core's snapshot are read in one place each, so a renamed core field breaks the
web tests instead of silently turning into ``null`` in the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engarde.web import quality
from engarde.web.quality import Baseline

JSON = dict[str, Any]

QUIET_AFTER_S = 5.0
"""An active link is "quiet" when it has heard nothing from the server for this long while
another active link has (and it has been in its state at least this long)."""

Rates = Mapping[str, tuple[float, float]]
"""Per link (client: interface name; server: client address): (tx, rx) bytes per second."""


# ---- v1: the Go original's shapes ---------------------------------------------------------


def client_get_list(snapshot: JSON, version: str) -> JSON:
    """``GET /api/v1/get-list`` for the client role, the original's fields only.

    Interfaces in the kernel's order (by ifindex), as the original lists them (Go's
    ``net.Interfaces``): a replugged modem comes last, as LuCI users are used to.
    """
    interfaces = []
    for link in sorted(snapshot["interfaces"], key=lambda link: link["index"]):
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
    "no-address": "no usable address (see addressFamilies)",
    "tentative": "its address is not ready yet (IPv6 duplicate address detection)",
    "no-destination": "no server address for its address family (dstAddr / dstAddrV6)",
    "gone": "interface removed",
}


def link_state(link: JSON) -> tuple[str, str]:
    """(state, reason) of one client link: a short machine word and a sentence for humans.

    state is one of: up, starting, error, admin-down, no-carrier, no-address, tentative,
    no-destination, excluded.
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


def client_status(
    snapshot: JSON, version: str, rates: Rates | None = None, baseline: Baseline | None = None
) -> JSON:
    """``GET /api/v2/status`` for the client role. ``baseline``: where "the last minute" of
    the links' copy figures starts (engarde.web.quality; None: since the start)."""
    rates = rates or {}
    base = baseline if baseline is not None else quality.since_start(snapshot["uptime"])
    links = [_client_link(link, rates, base) for link in snapshot["interfaces"]]
    _mark_quiet(links)
    quality.add_shares(link["quality"] for link in links)
    counters = dict(snapshot["counters"])
    return {
        **_identity(snapshot, version),
        "wireguardPeer": snapshot["wireguardPeer"],
        "uptime": round(snapshot["uptime"], 3),
        "activeLinks": sum(1 for link in links if link["status"] == "active"),
        "dedup": snapshot["dedup"],
        "duplicatesDropped": counters["duplicates_dropped"],
        "counters": counters,
        "tracker": dict(snapshot["tracker"]),
        "links": links,
    }


def _client_link(link: JSON, rates: Rates, baseline: Baseline) -> JSON:
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
        "quality": quality.link_quality(link["quality"], baseline, link["name"]),
        "families": _active_families(link),
        "paths": [_client_path(link["name"], p, baseline) for p in link.get("paths", ())],
    }


def _active_families(link: JSON) -> list[str]:
    return sorted({p["family"] for p in link.get("paths", ()) if p["status"] == "active"})


def path_key(name: str, address: str) -> str:
    """The key of one path of a client link in the quality window: interface/address."""
    return f"{name}/{address}"


def _client_path(name: str, path: JSON, baseline: Baseline) -> JSON:
    """One path of a link: a source address of the interface (its family) and its socket."""
    c = path["counters"]
    key = path_key(name, path["address"])
    return {
        "address": path["address"],
        "family": path["family"],
        "status": path["status"],
        "localPort": path["localPort"],
        "dstAddress": path["dstAddress"],
        "dstResolved": path["dstResolved"],
        "lastError": path["lastError"],
        "lastReceivedAge": _age(path["lastReceivedAge"]),
        "tx": {"datagrams": c["tx_datagrams"], "bytes": c["tx_bytes"]},
        "rx": {"datagrams": c["rx_datagrams"], "bytes": c["rx_bytes"]},
        "quality": quality.link_quality(path["quality"], baseline, key),
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


def server_status(
    snapshot: JSON, version: str, rates: Rates | None = None, baseline: Baseline | None = None
) -> JSON:
    """``GET /api/v2/status`` for the server role: client addresses grouped under their client
    (one per WireGuard peer), and the addresses not proven yet apart."""
    rates = rates or {}
    base = baseline if baseline is not None else quality.since_start(snapshot["uptime"])
    proven: dict[str, JSON] = {}
    pending: list[JSON] = []
    for sock in snapshot["sockets"]:
        if sock["confirmed"]:
            proven[sock["address"]] = sock
        else:
            pending.append(_pending_address(sock, rates))
    groups = [_client_group(group, proven, rates, base) for group in snapshot["clients"]]
    counters = dict(snapshot["counters"])
    return {
        **_identity(snapshot, version),
        "upstreamAddress": snapshot["upstreamAddress"],
        "clientTimeout": snapshot["clientTimeout"],
        "maxClients": snapshot["maxClients"],
        "maxPeers": snapshot["maxPeers"],
        "relayNonWireGuard": snapshot["relayNonWireGuard"],
        "dedup": snapshot["dedup"],
        "uptime": round(snapshot["uptime"], 3),
        "clientsAlive": sum(1 for g in groups if g["addressesAlive"]),
        "addressesAlive": sum(g["addressesAlive"] for g in groups),
        "addressesPending": snapshot["pendingCount"],
        "pendingOmitted": max(0, snapshot["pendingCount"] - len(pending)),
        "duplicatesDropped": counters["duplicates_dropped"],
        "probesOpen": snapshot["probesOpen"],
        "counters": counters,
        "clients": groups,
        "pending": pending,
    }


def _client_group(group: JSON, proven: Mapping[str, JSON], rates: Rates, base: Baseline) -> JSON:
    # The snapshot copies the address and client tables one after the other while the relay
    # runs: an address proven in between is in one list only. Show what both agree on.
    addresses = [
        _proven_address(proven[address], rates, base)
        for address in group["addresses"]
        if address in proven
    ]
    quality.add_shares(a["quality"] for a in addresses)
    rx, tx = _zero_rx(), _zero_tx()
    for a in addresses:
        for key in ("datagrams", "bytes", "bytesPerSecond"):
            rx[key] += a["rx"][key]
            tx[key] += a["tx"][key]
        tx["dropped"]["buffer_full"] += a["tx"]["dropped"]["buffer_full"]
        tx["dropped"]["error"] += a["tx"]["dropped"]["error"]
    gone = group.get("gone", {})
    for way, totals in (("rx", rx), ("tx", tx)):
        totals["datagrams"] += gone.get(f"{way}_datagrams", 0)
        totals["bytes"] += gone.get(f"{way}_bytes", 0)
    rx["bytesPerSecond"] = round(rx["bytesPerSecond"], 1)
    tx["bytesPerSecond"] = round(tx["bytesPerSecond"], 1)
    return {
        "id": group["id"],
        "label": group["label"],
        "firstSeenAge": _age(group["firstSeenAge"]),
        "lastReceivedAge": _age(group["lastReceivedAge"]),
        "sessions": list(group["sessions"]),
        "peerSessions": list(group["peerSessions"]),
        "upstream": group["upstream"],
        "addressesAlive": sum(1 for a in addresses if a["state"] == "alive"),
        "duplicatesDropped": group["duplicatesDropped"],
        "tracker": dict(group["tracker"]),
        "rx": rx,
        "tx": tx,
        "quality": quality.summed(a["quality"] for a in addresses),
        "addresses": addresses,
    }


def _proven_address(sock: JSON, rates: Rates, base: Baseline) -> JSON:
    c = sock["counters"]
    tx_rate, rx_rate = rates.get(sock["address"], (0.0, 0.0))
    return {
        "address": sock["address"],
        "family": "ipv6" if sock["address"].startswith("[") else "ipv4",
        "localAddress": sock["localAddress"],
        "state": server_address_state(sock),
        "provenBy": sock["provenBy"],
        "probe": sock["probe"],
        "last": int(sock["lastReceivedAge"]),
        "lastReceivedAge": _age(sock["lastReceivedAge"]),
        "firstSeenAge": _age(sock["firstSeenAge"]),
        "rx": _rx(c, rx_rate),
        "tx": {
            "datagrams": c["tx_datagrams"],
            "bytes": c["tx_bytes"],
            "bytesPerSecond": round(tx_rate, 1),
            "dropped": {"buffer_full": c["tx_dropped_full"], "error": c["tx_errors"]},
            "lastErrno": c["last_tx_errno"],
        },
        "quality": quality.link_quality(sock["quality"], base, sock["address"]),
    }


def _pending_address(sock: JSON, rates: Rates) -> JSON:
    _, rx_rate = rates.get(sock["address"], (0.0, 0.0))
    return {
        "address": sock["address"],
        "localAddress": sock["localAddress"],
        "probe": sock["probe"],
        "last": int(sock["lastReceivedAge"]),
        "lastReceivedAge": _age(sock["lastReceivedAge"]),
        "firstSeenAge": _age(sock["firstSeenAge"]),
        "rx": _rx(sock["counters"], rx_rate),
    }


def _rx(c: JSON, rate: float) -> JSON:
    return {
        "datagrams": c["rx_datagrams"],
        "bytes": c["rx_bytes"],
        "bytesPerSecond": round(rate, 1),
    }


def _zero_rx() -> JSON:
    return {"datagrams": 0, "bytes": 0, "bytesPerSecond": 0.0}


def _zero_tx() -> JSON:
    return {
        "datagrams": 0,
        "bytes": 0,
        "bytesPerSecond": 0.0,
        "dropped": {"buffer_full": 0, "error": 0},
    }


def server_address_state(sock: JSON) -> str:
    """alive: proven to carry a WireGuard session of its client, gets WireGuard's replies;
    pending: seen, not proven (gets nothing but the answer to its own handshake); expired:
    silent longer than clientTimeout, about to be forgotten."""
    if not sock["confirmed"]:
        return "pending"
    return "alive" if sock["alive"] else "expired"


def _age(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---- cumulative counters for the history and the last minute ---------------------------------

TOTALS_FIELDS = (
    "txBytes",
    "rxBytes",
    "txDatagrams",
    "rxDatagrams",
    "won",
    "late",
    "lost",
    "saved",
)
Totals = dict[str, tuple[int, ...]]
"""Per key: cumulative counters in the order of TOTALS_FIELDS."""


def traffic_totals(snapshot: JSON) -> Totals:
    """The cumulative counters the history turns into per-second deltas.

    Client: per interface name, tx = towards the server, copies as received from it. Server: per
    client address, tx = towards that client (WireGuard's replies), rx = its copies.
    """
    out: Totals = {}
    for key, c, q in _links(snapshot):
        out[key] = (
            c["tx_bytes"],
            c["rx_bytes"],
            c["tx_datagrams"],
            c["rx_datagrams"],
            q["won"],
            q["late"],
            q["lost"],
            q["saved"],
        )
    return out


def unproven_totals(snapshot: JSON) -> tuple[int, int, int] | None:
    """Server: what all unproven addresses sent (cumulative rx bytes, rx datagrams) and how
    many there are now, as counts: a flood of spoofed sources is one line, not a series per
    address. None on the client."""
    if snapshot["type"] != "server":
        return None
    c = snapshot["counters"]
    return (c["unproven_rx_bytes"], c["unproven_rx_datagrams"], snapshot["pendingCount"])


def quality_totals(snapshot: JSON) -> dict[str, quality.Counts]:
    """Per link key (and, on the client, per path key), the cumulative copy counters (for
    engarde.web.quality.QualityWindow)."""
    pairs = [(key, q) for key, _, q in _links(snapshot)]
    if snapshot["type"] == "client":
        for link in snapshot["interfaces"]:
            for p in link.get("paths", ()):
                pairs.append((path_key(link["name"], p["address"]), p["quality"]))
    return quality.cumulative(pairs)


def _links(snapshot: JSON) -> list[tuple[str, JSON, JSON]]:
    """(key, counters, quality) of every link (client) or proven client address (server; an
    unproven address has no series: see unproven_totals)."""
    if snapshot["type"] == "client":
        return [(x["name"], x["counters"], x["quality"]) for x in snapshot["interfaces"]]
    return [
        (x["address"], x["counters"], x["quality"]) for x in snapshot["sockets"] if x["confirmed"]
    ]
