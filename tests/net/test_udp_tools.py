"""The fake WireGuard ends of lab.udp_tools (``wg-sink``, ``wg-send``) on this machine's loopback.

No namespaces: every socket is on 127.0.0.1, every process is stopped by the test. One last
test drives the same tools through the tests/net/helpers classes inside a lab.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import REPO_ROOT, Lab, stop_process
from tests.net.helpers import LogFile, WgSender, WgSink

LOOPBACK = "127.0.0.1"
DATA = struct.Struct("<IIQ")  # type 4, receiver index, counter
PROBE = struct.Struct("!QQ")  # wg-send payload: sequence number, send time
RUN_BOUND_S = 10  # generous: only there to turn a hang into a failure


class Procs:
    """Processes started by a test; all stopped (by PID) at its end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[Any]] = []

    def tool(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(
            [sys.executable, "-m", "lab.udp_tools", *args], cwd=REPO_ROOT, **kwargs
        )
        self.started.append(proc)
        return proc

    def sink(self, *extra: str) -> tuple[subprocess.Popen[Any], tuple[str, int], int]:
        """Start ``wg-sink`` on an ephemeral loopback port; (process, address, its index)."""
        proc = self.tool(
            "wg-sink", "--listen", f"{LOOPBACK}:0", *extra, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        hello = json.loads(proc.stdout.readline())
        host, port = hello["listening"].rsplit(":", 1)
        return proc, (host, int(port)), hello["index"]

    def send(self, to: tuple[str, int], *extra: str) -> tuple[subprocess.Popen[Any], LogFile, Path]:
        """Start ``wg-send`` towards ``to``; (process, its stderr log, its report path)."""
        n = len(self.started)
        err_path, report = self.workdir / f"wg-send-{n}.err", self.workdir / f"wg-send-{n}.json"
        with err_path.open("wb") as err:
            proc = self.tool(
                "wg-send",
                "--to",
                f"{to[0]}:{to[1]}",
                "--report",
                str(report),
                *extra,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        return proc, LogFile(err_path, proc), report


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    started = Procs(tmp_path)
    try:
        yield started
    finally:
        for proc in started.started:
            stop_process(proc)


def sink_stats(proc: subprocess.Popen[Any]) -> dict[str, Any]:
    """SIGTERM the sink and return its statistics line."""
    proc.terminate()
    out, _ = proc.communicate(timeout=RUN_BOUND_S)
    stats: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return stats


def send_report(proc: subprocess.Popen[Any], log: LogFile, report: Path) -> dict[str, Any]:
    assert proc.wait(timeout=RUN_BOUND_S) == 0, log.tail()
    result: dict[str, Any] = json.loads(report.read_text())
    return result


class DoublingRelay:
    """A two-link engarde in miniature, with no dedup at all: each datagram from the client goes
    to ``dest`` from two sockets (two "links"), each datagram back (on either) to the client
    twice."""

    def __init__(self, dest: tuple[str, int]) -> None:
        self.dest = dest
        self.front = self._bound()
        self.links = [self._bound(), self._bound()]
        self.client: tuple[str, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _bound() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        return sock

    @property
    def addr(self) -> tuple[str, int]:
        host, port = self.front.getsockname()
        return host, port

    def link_keys(self) -> list[str]:
        return [f"{LOOPBACK}:{link.getsockname()[1]}" for link in self.links]

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            for sock in (self.front, *self.links, self._wake_r):
                sel.register(sock, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    sock = key.fileobj
                    if sock is self._wake_r:
                        return
                    assert isinstance(sock, socket.socket)
                    data, src = sock.recvfrom(65535)
                    if sock is self.front:
                        self.client = src
                        for link in self.links:
                            link.sendto(data, self.dest)
                    elif self.client is not None:
                        for _ in range(2):
                            self.front.sendto(data, self.client)

    def close(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(timeout=RUN_BOUND_S)
        for sock in (self.front, *self.links, self._wake_r, self._wake_w):
            sock.close()


def test_wg_send_handshakes_and_every_datagram_is_echoed_once(procs: Procs) -> None:
    sink, addr, index = procs.sink("--echo", "--index", "0x0a0b0c0d")
    assert index == 0x0A0B0C0D
    sender, log, report_path = procs.send(
        addr, "--count", "200", "--interval-ms", "1", "--grace-ms", "2000", "--index", "77"
    )
    report = send_report(sender, log, report_path)
    stats = sink_stats(sink)

    assert report["responder_index"] == index
    assert report["index"] == 77
    assert report["handshake_ms"] >= 0
    assert report["handshake_responses"] == report["initiations"] >= 1
    assert (report["sent"], report["received_unique"], report["lost"]) == (200, 200, [])
    assert (report["duplicates"], report["unmatched"], report["foreign"]) == (0, 0, 0)
    assert report["rtt_ms"]["max"] is not None and report["rtt_ms"]["max"] >= 0
    assert report["size"] == 128

    assert (stats["received"], stats["unique"], stats["duplicates"]) == (200, 200, 0)
    assert (stats["replied"], stats["other"], stats["sessions"]) == (200, 0, 1)
    assert stats["handshakes"] == report["initiations"]
    ((source, counts),) = stats["by_source"].items()
    assert source.startswith(f"{LOOPBACK}:")
    assert counts == {"received": 200, "first": 200}

    progress = [json.loads(line) for line in log.text().splitlines()]
    assert progress[0]["responder_index"] == index
    assert progress[-1] == {"sent": 200, "replies": 200, "done": True}


def test_sink_counts_the_copies_of_a_doubling_relay(procs: Procs) -> None:
    sink, addr, _ = procs.sink("--echo")
    relay = DoublingRelay(addr)
    links = relay.link_keys()
    try:
        sender, log, report_path = procs.send(
            relay.addr, "--count", "200", "--interval-ms", "1", "--grace-ms", "2000"
        )
        report = send_report(sender, log, report_path)
        stats = sink_stats(sink)
    finally:
        relay.close()

    assert (stats["received"], stats["unique"], stats["duplicates"]) == (400, 200, 200)
    assert stats["replied"] == 200
    assert stats["handshakes"] == 2 * report["initiations"]
    assert set(stats["by_source"]) == set(links)
    assert [c["received"] for c in stats["by_source"].values()] == [200, 200]
    assert sum(c["first"] for c in stats["by_source"].values()) == 200

    # Each echo reply came back twice: one unique, one duplicate (same reply counter).
    assert (report["received_unique"], report["lost"], report["duplicates"]) == (200, [], 200)
    assert report["handshake_responses"] >= 2


def test_sink_dedups_replayed_bytes_roams_and_ignores_junk() -> None:
    """Drive wg-sink by hand: replay the same datagram bytes, move the peer, send junk."""
    sink = subprocess.Popen(
        [sys.executable, "-m", "lab.udp_tools", "wg-sink", "--listen", f"{LOOPBACK}:0", "--echo"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    peer, roamed = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    try:
        assert sink.stdout is not None
        hello = json.loads(sink.stdout.readline())
        host, port = hello["listening"].rsplit(":", 1)
        addr = (host, int(port))
        for sock in (peer, roamed):
            sock.bind((LOOPBACK, 0))
            sock.settimeout(2)

        initiation = struct.pack("<II", 1, 4242) + os.urandom(140)
        peer.sendto(initiation, addr)
        response = peer.recv(200)
        assert len(response) == 92
        kind, responder, receiver = struct.unpack_from("<III", response)
        assert (kind, responder, receiver) == (2, hello["index"], 4242)

        def data(counter: int, size: int = 64) -> bytes:
            probe = PROBE.pack(counter, 1000 + counter)
            tag = hashlib.sha256(b"%d" % counter).digest()[:16]
            return DATA.pack(4, responder, counter) + probe + bytes(size - 48) + tag

        for counter in (0, 1, 0, 1, 2):  # two replayed copies
            peer.sendto(data(counter), addr)
        replies = [peer.recv(200) for _ in range(3)]
        for reply_counter, reply in enumerate(replies):
            assert len(reply) == 64
            assert DATA.unpack_from(reply) == (4, 4242, reply_counter)  # its own counters
            assert PROBE.unpack_from(reply, 16) == (reply_counter, 1000 + reply_counter)
            assert reply[32:48] == bytes(16)

        # The first copy of counter 3 comes from elsewhere: the peer roams there and the reply
        # follows it. A late copy from the old address is a duplicate: no reply.
        roamed.sendto(data(3, size=48), addr)
        reply = roamed.recv(200)
        assert len(reply) == 48
        assert DATA.unpack_from(reply) == (4, 4242, 3)
        peer.sendto(data(3, size=48), addr)

        for junk in (
            data(9)[:40],  # not 32 + 16k bytes
            DATA.pack(4, responder ^ 1, 5) + bytes(32),  # nobody's index
            struct.pack("<II", 1, 4242) + bytes(10),  # initiation of the wrong size
            b"\x04\x01\x00\x00" + data(7)[4:],  # reserved bytes not zero
            b"hi",
        ):
            peer.sendto(junk, addr)
        peer.sendto(data(4), addr)  # new data from the old address: the peer roams back
        assert DATA.unpack_from(peer.recv(200)) == (4, 4242, 4)
        for sock in (peer, roamed):
            sock.settimeout(0.1)
            with pytest.raises(TimeoutError):
                sock.recv(200)
    finally:
        sink.terminate()
        out, _ = sink.communicate(timeout=RUN_BOUND_S)
        peer_port, roamed_port = peer.getsockname()[1], roamed.getsockname()[1]
        peer.close()
        roamed.close()
    stats = json.loads(out.strip().splitlines()[-1])
    assert (stats["received"], stats["unique"], stats["duplicates"]) == (8, 5, 3)
    assert (stats["handshakes"], stats["replied"], stats["other"]) == (1, 5, 5)
    assert stats["by_source"] == {
        f"{LOOPBACK}:{peer_port}": {"received": 7, "first": 4},
        f"{LOOPBACK}:{roamed_port}": {"received": 1, "first": 1},
    }


def test_wg_send_without_a_handshake_response_fails_clearly(procs: Procs) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((LOOPBACK, 0))
        silent.settimeout(2)
        sender, log, report = procs.send(
            silent.getsockname(), "--index", "5", "--handshake-timeout-s", "0.5"
        )
        assert sender.wait(timeout=RUN_BOUND_S) == 1
        initiations = []
        silent.settimeout(0)
        with contextlib.suppress(BlockingIOError):
            while True:
                initiations.append(silent.recv(200))
    assert "no handshake response" in log.text()
    assert not report.exists()
    assert len(initiations) >= 2  # resent every 200 ms
    assert {(len(m), m[:8]) for m in initiations} == {(148, struct.pack("<II", 1, 5))}
    assert len(set(initiations)) == len(initiations)  # fresh random bytes each time


def test_wg_send_pause_file_holds_the_sending_and_sigterm_ends_the_run(
    procs: Procs, tmp_path: Path
) -> None:
    sink, addr, _ = procs.sink("--echo")
    pause = tmp_path / "pause"
    pause.touch()
    sender, log, report_path = procs.send(
        addr,
        *("--count", "100000", "--interval-ms", "1", "--size", "33", "--progress-ms", "50"),
        *("--pause-file", str(pause)),
    )
    log.wait_for(r'\{"sent": 0, "replies": 0, "paused": true\}\n')
    mark = log.mark()
    sender.send_signal(signal.SIGUSR1)
    assert log.wait_for(r'\{"sent": (\d+)[^\n]*\}\n', since=mark).group(1) == "0"

    pause.unlink()
    log.wait_for(r'"paused": false\}\n')
    log.wait_for(r'\{"sent": [1-9]\d*', since=mark)  # a periodic progress line
    sender.terminate()
    report = send_report(sender, log, report_path)
    stats = sink_stats(sink)

    assert report["stopped"] is True
    assert report["paused_ms"] > 0
    assert report["size"] == 48
    assert 0 < report["sent"] < 100000
    # The sink may not have read the last few datagrams yet when it was stopped.
    assert report["received_unique"] <= stats["unique"] == stats["received"] <= report["sent"]
    assert report["received_unique"] + len(report["lost"]) == report["sent"]


@pytest.mark.parametrize("lab", [1], indirect=True)
def test_helpers_drive_wg_sink_and_wg_send(lab: Lab) -> None:
    sink = WgSink(lab, f"{LOOPBACK}:0", index=99)
    sender = WgSender(lab, 100000, 1, to=sink.addr, grace_ms=500, ns=lab.server_ns)
    assert sender.wait_handshake()["responder_index"] == 99
    paused_at = sender.pause()
    assert sender.sent_now() == paused_at
    sender.resume()
    report = sender.stop()
    stats = sink.stop()
    assert report["sent"] >= paused_at
    assert report["responder_index"] == sink.index == 99
    assert report["received_unique"] <= stats["unique"] <= report["sent"]
    assert sender.sent_so_far() == report["sent"]
