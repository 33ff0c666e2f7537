"""The relay's own added delay, measured inside (engarde.net.latency), with real traffic.

A sender at ~2k datagrams/s is already running when the client starts (start-up under load),
then an uplink goes down and comes back, with the dashboard serving on both sides. Both roles'
`/api/v2/status` latency must show samples, and no stall in which the pump thread was blocked
(waiting for the GIL: a GC pass or a long control-plane step; not waiting for a CPU, which a
busy machine causes) for more than BLOCKED_MAX_MS. The 55 ms full GC measured before the GC was
frozen ahead of the data path is caught; the bound leaves room for a busy 2-CPU box.
"""

from __future__ import annotations

import fcntl
import gc
import json
import socket
import struct
import time
from typing import Any

import pytest

from engarde.core.latency import DelayRecorder
from engarde.net.latency import NEVER, SIOCGSTAMPNS, DelaySampler
from lab import Lab
from tests.net.helpers import (
    CLIENT_LISTEN,
    SERVER_PORT,
    WEB,
    Echo,
    Sender,
    api,
    server_section,
    start_client,
    start_server,
    wait_for_socket,
    write_config,
)

RATE_INTERVAL_MS = 0.5  # 2k/s
SECONDS = 8.0
BLOCKED_MAX_MS = 45.0
HANG_MS = 1000.0  # any sample this late is a hang, whatever the machine is doing


def test_relay_delay_through_startup_and_a_link_flap(lab: Lab) -> None:
    web = {"listenAddr": WEB}
    config = write_config(
        lab,
        client={
            "listenAddr": CLIENT_LISTEN,
            "dstAddr": f"{lab.service_addr}:{SERVER_PORT}",
            "webManager": web,
        },
        server=server_section() | {"webManager": web},
    )
    echo = Echo(lab)
    server = start_server(lab, config)
    sender = Sender(lab, int(SECONDS * 1000 / RATE_INTERVAL_MS), RATE_INTERVAL_MS, grace_ms=1000)
    client = start_client(lab, config)  # while datagrams already arrive
    time.sleep(1.5)
    mark = client.log.mark()
    lab.link_down(1)
    time.sleep(1.0)
    lab.link_up(1)
    wait_for_socket(client, 1, since=mark)
    report = sender.wait()
    docs = {
        "client": api(lab, lab.client_ns, "/api/v2/status")["latency"],
        "server": api(lab, lab.server_ns, "/api/v2/status")["latency"],
    }
    echo.stop()

    def diagnostics() -> str:
        summary = {k: v for k, v in report.items() if k != "lost"}
        summary["lost"] = len(report["lost"])
        return (
            f"latency: {json.dumps({r: _short(d) for r, d in docs.items()}, indent=1)}\n"
            f"sender: {summary}\nclient log: {client.log.tail(1500)}\n"
            f"server log: {server.log.tail(800)}"
        )

    assert report["received_unique"] > report["sent"] * 0.5, diagnostics()
    for role, doc in docs.items():
        assert doc["samples"] >= 100, f"{role}: too few samples\n{diagnostics()}"
        assert doc["maxMs"] < HANG_MS, f"{role}: the relay hung\n{diagnostics()}"
        assert doc["maxBlockedMs"] < BLOCKED_MAX_MS, (
            f"{role}: the pump was blocked {doc['maxBlockedMs']} ms\n{diagnostics()}"
        )


def wait_for_receive_timestamps(rx: socket.socket, tx: socket.socket) -> None:
    """Until the kernel stamps datagrams on arrival. Asking for timestamps turns on a switch
    for the whole kernel, in deferred work when no socket had them on (the test before may just
    have closed the last one): until it runs, a datagram is stamped when it is read. A datagram
    left waiting 10 ms shows which."""
    deadline = time.monotonic() + 5.0
    waited_ms = 0.0
    while time.monotonic() < deadline:
        tx.sendto(b"warm", rx.getsockname())
        time.sleep(0.01)
        assert rx.recv(100) == b"warm"
        sec, nsec = struct.unpack("=qq", fcntl.ioctl(rx.fileno(), SIOCGSTAMPNS, bytes(16)))
        waited_ms = (time.time_ns() - (sec * 1_000_000_000 + nsec)) / 1e6
        if waited_ms >= 5.0:
            return
    pytest.fail(f"no receive timestamps after 5 s (a datagram read after 10 ms: {waited_ms} ms)")


def test_sample_reads_the_kernel_receive_time_and_explains_a_gc_stall() -> None:
    """On loopback: a datagram that waited ~30 ms while a full GC ran is measured (from its
    kernel timestamp, not from when we read it) and labelled with the GC pass."""
    recorder = DelayRecorder()
    sampler = DelaySampler(recorder)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        sample = sampler.watch(rx, "test")
        sampler.tick()
        sample.mark(time.monotonic())  # nothing read yet: ENOENT, nothing recorded
        assert recorder.samples == 0
        wait_for_receive_timestamps(rx, tx)
        tx.sendto(b"waits", rx.getsockname())
        time.sleep(0.02)
        gc.collect()
        time.sleep(0.01)
        assert rx.recv(100) == b"waits"
        now = time.monotonic()
        assert now >= sample.due
        sample.mark(now)
        sample.due = 0.0
        sample.mark(time.monotonic())  # no new datagram: not counted twice
        NEVER.mark(now)
        assert NEVER.due == float("inf")
    finally:
        sampler.close()
        rx.close()
        tx.close()
    doc = recorder.as_json(now)
    assert recorder.samples == 1, doc
    assert 0.025 <= recorder.max_s < 5.0, doc
    stall = doc["worstRecentStall"]
    assert stall is not None and stall["socket"] == "test", doc
    assert stall["doing"].startswith("gc gen2"), doc
    assert stall["cpuWaitMs"] is not None and stall["blockedMs"] is not None, doc
    assert sampler._on_gc not in gc.callbacks


def _short(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("histogram", "worstRecentStall")} | {
        "histogram": doc["histogram"]["counts"]
    }
