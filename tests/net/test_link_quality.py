"""What every link is worth, measured from WireGuard's own counters, and duplicates dropped
before WireGuard: a fake WireGuard pair (lab.udp_tools wg-send / wg-sink, same header shape,
no crypto) talks through engarde over 3 uplinks; the sink answers every first copy, so both
directions are measured (the server per client address, the client per uplink).

- uplink 2 loses 20 % at random both ways (nftables numgen): the API shows ~20 % loss for it;
- uplinks 1 and 2 are blackholed while a burst goes through: uplink 0's "saved" grows by
  exactly the burst, on both sides;
- with dedup on (the default) the sink receives each counter once while all 3 uplinks carry
  copies; with `dedup: false` the copies reach it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from lab import Lab
from tests.net.helpers import (
    CLIENT_LISTEN,
    ECHO_ADDR,
    SERVER_PORT,
    WEB,
    UplinkCounters,
    WgSender,
    WgSink,
    api,
    start_client,
    start_server,
    wait_until,
    write_config,
)

SETTLE_S = 2.5  # the copy window (1 s), a sweep period (0.25 s) and a wide margin
LOSS_PCT = 20


def status(lab: Lab, ns: str) -> dict[str, Any]:
    return api(lab, ns, "/api/v2/status")


def config(lab: Lab, dedup: bool) -> Any:
    web = {"listenAddr": WEB}
    return write_config(
        lab,
        client={
            "listenAddr": CLIENT_LISTEN,
            "dstAddr": f"{lab.service_addr}:{SERVER_PORT}",
            "webManager": web,
            "dedup": dedup,
        },
        server={
            "listenAddr": f"0.0.0.0:{SERVER_PORT}",
            "dstAddr": ECHO_ADDR,
            "webManager": web,
            "dedup": dedup,
        },
    )


def server_quality(doc: dict[str, Any], ip: str) -> dict[str, Any]:
    """The quality of the (one) client address with this IP, on the server."""
    found = [
        address["quality"]
        for client in doc["clients"]
        for address in client["addresses"]
        if address["address"].split(":")[0] == ip
    ]
    assert len(found) == 1, json.dumps(doc["clients"], indent=1)[:3000]
    return found[0]


def client_quality(doc: dict[str, Any], name: str) -> dict[str, Any]:
    link: dict[str, Any] = next(item for item in doc["links"] if item["name"] == name)
    return link["quality"]


def test_loss_saves_and_duplicates_per_link(lab: Lab) -> None:
    path = config(lab, dedup=True)
    server = start_server(lab, path)
    client = start_client(lab, path)
    sink = WgSink(lab, echo=True)
    counters = UplinkCounters(lab)
    start = counters.read()
    lab.drop_random(2, LOSS_PCT)
    sender = WgSender(lab, count=100_000, interval_ms=4)  # 250/s, stopped by the test
    sender.wait_handshake()

    def logs() -> str:
        return server.log.tail(2500) + "\n" + client.log.tail(2500)

    # Steady traffic with loss on uplink 2, then let the last counters settle.
    wait_until(lambda: sender.sent_so_far() >= 2500, "2500 datagrams sent", timeout_s=40)
    sender.pause()
    time.sleep(SETTLE_S)
    at_server, at_client = status(lab, lab.server_ns), status(lab, lab.client_ns)
    lossy_s = server_quality(at_server, lab.uplink(2).client_ip)
    lossy_c = client_quality(at_client, "up2")
    clean_s = server_quality(at_server, lab.uplink(1).client_ip)
    report = f"server: {lossy_s}\nclient: {lossy_c}\nclean: {clean_s}\n{logs()}"
    assert abs(lossy_s["lossPctTotal"] - LOSS_PCT) <= 5, report
    assert abs(lossy_c["lossPctTotal"] - LOSS_PCT) <= 5, report
    assert clean_s["lossPctTotal"] <= 1, report
    assert lossy_s["lagP50Ms"] is not None or lossy_s["late"] == 0, report
    assert at_server["dedup"] is True and at_server["duplicatesDropped"] > 2000, report

    # A burst that only uplink 0 carries: 1 and 2 blackholed both ways meanwhile.
    saved_s = server_quality(at_server, lab.uplink(0).client_ip)["saved"]
    saved_c = client_quality(at_client, "up0")["saved"]
    lab.blackhole(1)
    lab.blackhole(2)
    first = sender.sent_now()
    sender.resume()
    wait_until(lambda: sender.sent_so_far() >= first + 200, "the burst", timeout_s=20)
    last = sender.pause()
    time.sleep(SETTLE_S)
    lab.blackhole(1, on=False)
    lab.blackhole(2, on=False)
    burst = last - first
    at_server, at_client = status(lab, lab.server_ns), status(lab, lab.client_ns)
    sole_s = server_quality(at_server, lab.uplink(0).client_ip)
    sole_c = client_quality(at_client, "up0")
    report = f"burst {burst}\nserver: {sole_s}\nclient: {sole_c}\n{logs()}"
    assert sole_s["saved"] - saved_s == burst, report
    assert sole_c["saved"] - saved_c == burst, report

    sender.resume()
    time.sleep(1.0)
    result = sender.stop()
    stats = sink.stop()
    now = counters.read()
    carried = {i: now[f"in_sv{i}"] - start[f"in_sv{i}"] for i in range(3)}
    report = f"sink: {stats}\nsender: {result}\nuplinks: {carried}\n{logs()}"
    assert stats["duplicates"] == 0, report
    assert stats["unique"] == result["sent"], report
    assert all(n > 1000 for n in carried.values()), report
    assert result["duplicates"] == 0, report  # the client dropped the reply copies too
    assert "Traceback" not in server.log.text() + client.log.text()


@pytest.mark.parametrize("lab", [3], indirect=True)
def test_without_dedup_every_copy_reaches_the_sink(lab: Lab) -> None:
    path = config(lab, dedup=False)
    server = start_server(lab, path)
    client = start_client(lab, path)
    sink = WgSink(lab, echo=True)
    sender = WgSender(lab, count=300, interval_ms=5)
    result = sender.wait()
    stats = sink.stop()
    report = f"sink: {stats}\nsender: {result}\n{server.log.tail()}\n{client.log.tail()}"
    assert stats["unique"] == 300, report
    assert stats["duplicates"] >= 2 * 300 - 30, report  # 3 copies of each, give or take
    assert result["duplicates"] >= 2 * 300 - 30, report  # the replies' copies too
    doc = status(lab, lab.server_ns)
    assert doc["dedup"] is False and doc["duplicatesDropped"] == 0
    wons = [server_quality(doc, lab.uplink(i).client_ip)["won"] for i in range(3)]
    assert sum(wons) >= 290, wons  # still measured
