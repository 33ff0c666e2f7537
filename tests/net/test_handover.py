"""Handovers (engarde.net.handover, docs/restart.md) on loopback: the reuseport steering, a
successor taking over from a running server (started by hand and by SIGUSR2) while datagrams
flow, what a handover under way answers a third process, a successor that fails to start, junk
on the control socket, and what systemd is told.

Only loopback: each test uses its own free ports, so its control socket name
("\\0engarde/udp/127.0.0.1:PORT") is its own too. A UDP echo thread stands in for WireGuard
(relayNonWireGuard: the server relays any datagram).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engarde.net.handover import GRACE_S, control_name, steer
from lab import REPO_ROOT, AdoptedProcess
from tests.net.helpers import LogFile, wait_until

WAIT_S = 20.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def reuseport_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(100)
        except BlockingIOError:
            return n
        n += 1


def test_steer_sends_every_new_datagram_to_the_chosen_socket() -> None:
    port = free_udp_port()
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(32)]
    with reuseport_socket(port) as first, reuseport_socket(port) as second:
        try:

            def send_and_count() -> tuple[int, int]:
                for s in senders:  # 32 source ports: the kernel's hash would split them
                    s.sendto(b"x", ("127.0.0.1", port))
                time.sleep(0.05)
                return drain(first), drain(second)

            assert steer(first, 0)
            assert send_and_count() == (32, 0)
            assert steer(second, 1)  # the program belongs to the group: any member sets it
            assert send_and_count() == (0, 32)
            # What the old socket sends still leaves from the shared address.
            first.sendto(b"reply", senders[0].getsockname())
            assert senders[0].recvfrom(100) == (b"reply", ("127.0.0.1", port))
        finally:
            for s in senders:
                s.close()


def test_control_name_is_per_address() -> None:
    assert control_name("127.0.0.1", 5) == "\0engarde/udp/127.0.0.1:5"
    assert control_name("::", 5) == "\0engarde/udp/[::]:5"
    assert control_name("", 5) == "\0engarde/udp/*:5"


# ---- engarde servers on loopback -----------------------------------------------------------


class Echo:
    """WireGuard's stand-in: every datagram goes back where it came from."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, src = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.sock.sendto(data, src)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


class Traffic:
    """Numbered datagrams every 2 ms to the server from one socket; which came back."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = port
        self.sent = 0
        self.back: set[int] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._tx, self._rx)]
        for t in self._threads:
            t.start()

    def _tx(self) -> None:
        while not self._stop.is_set():
            self.sock.sendto(b"%d" % self.sent, ("127.0.0.1", self.port))
            self.sent += 1
            time.sleep(0.002)

    def _rx(self) -> None:
        while True:
            try:
                self.back.add(int(self.sock.recv(100)))
            except TimeoutError:
                if self._stop.is_set():
                    return
            except OSError:
                return

    def stop(self) -> list[int]:
        """Stop sending; the numbers that never came back (after a moment for the last)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self.sock.close()
        return sorted(set(range(self.sent)) - self.back)

    def wait_back(self, more: int = 50) -> None:
        target = len(self.back) + more
        wait_until(lambda: len(self.back) >= target, f"{more} more echoes", timeout_s=WAIT_S)


@pytest.fixture
def procs() -> Iterator[list[Any]]:
    """Processes to stop (by PID) at the end, whatever happens."""
    running: list[Any] = []
    yield running
    for proc in running:
        if proc.poll() is None:
            proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_config(path: Path, port: int, echo: Echo, web_port: int | None = None) -> Path:
    text = (
        f'server:\n  listenAddr: "127.0.0.1:{port}"\n  dstAddr: "127.0.0.1:{echo.port}"\n'
        "  relayNonWireGuard: true\n"
    )
    if web_port is not None:
        text += f'  webManager:\n    listenAddr: "127.0.0.1:{web_port}"\n'
    path.write_text(text)
    return path


def start(
    procs: list[Any], config: Path, log: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], LogFile]:
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engarde", "server", str(config), "--log-level", "debug"],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    procs.append(proc)
    return proc, LogFile(log, proc)


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.close()


def test_a_second_server_takes_over_without_losing_a_datagram(
    tmp_path: Path, procs: list[Any], echo: Echo
) -> None:
    port = free_udp_port()
    config = write_config(tmp_path / "engarde.yml", port, echo)
    first, first_log = start(procs, config, tmp_path / "first.log")
    first_log.wait_for("server listening on")
    traffic = Traffic(port)
    traffic.wait_back()
    second, second_log = start(procs, config, tmp_path / "second.log")
    second_log.wait_for(rf"engarde \(pid {first.pid}\) serves 127.0.0.1:{port}: taking over")
    second_log.wait_for("server listening on")
    first_log.wait_for(rf"engarde \(pid {second.pid}\) took over")
    traffic.wait_back()
    assert first.wait(timeout=GRACE_S + WAIT_S) == 0, first_log.tail()
    traffic.wait_back()
    lost = traffic.stop()
    assert lost == [], f"{len(lost)} of {traffic.sent} lost: {lost[:20]}\n{first_log.tail()}"
    assert re.search(rf"handed over to pid {second.pid}: exiting", first_log.text())
    second_log.wait_for(rf"engarde \(pid {first.pid}\) exited: handover complete")
    assert "Traceback" not in first_log.text() + second_log.text()
    assert second.poll() is None


def test_usr2_starts_the_successor_itself(tmp_path: Path, procs: list[Any], echo: Echo) -> None:
    port = free_udp_port()
    config = write_config(tmp_path / "engarde.yml", port, echo)
    first, log = start(procs, config, tmp_path / "server.log")
    log.wait_for("server listening on")
    traffic = Traffic(port)
    traffic.wait_back()
    mark = log.mark()
    first.send_signal(signal.SIGUSR2)
    pid = int(log.wait_for(r"started the successor \(pid (\d+)\)", since=mark).group(1))
    successor = AdoptedProcess(pid)
    procs.append(successor)
    log.wait_for(rf"engarde \(pid {pid}\) took over", since=mark)
    log.wait_for("server listening on", since=mark)
    assert first.wait(timeout=GRACE_S + WAIT_S) == 0, log.tail()
    traffic.wait_back()
    lost = traffic.stop()
    assert lost == [], f"{len(lost)} of {traffic.sent} lost: {lost[:20]}\n{log.tail()}"
    # The successor can be upgraded the same way: it serves the control socket now.
    log.wait_for(rf"engarde \(pid {first.pid}\) exited: handover complete", since=mark)
    log = LogFile(log.path, successor)
    mark = log.mark()
    successor.send_signal(signal.SIGUSR2)
    third = int(log.wait_for(r"started the successor \(pid (\d+)\)", since=mark).group(1))
    procs.append(AdoptedProcess(third))
    log.wait_for(rf"engarde \(pid {third}\) took over", since=mark)
    assert "Traceback" not in log.text(), log.tail()


def test_a_third_process_during_a_handover_is_refused(
    tmp_path: Path, procs: list[Any], echo: Echo
) -> None:
    port = free_udp_port()
    config = write_config(tmp_path / "engarde.yml", port, echo)
    first, first_log = start(procs, config, tmp_path / "first.log")
    first_log.wait_for("server listening on")
    second, second_log = start(procs, config, tmp_path / "second.log")
    second_log.wait_for("server listening on")
    assert first.poll() is None, "the grace period is over already: the test needs it"
    third = subprocess.run(
        [sys.executable, "-m", "engarde", "server", str(config)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert third.returncode == 1, third.stderr
    last = third.stderr.strip().splitlines()[-1]
    assert f"is handing over 127.0.0.1:{port} already" in last, third.stderr
    assert "Traceback" not in third.stderr
    assert second.poll() is None


def test_a_successor_that_cannot_start_leaves_the_server_serving(
    tmp_path: Path, procs: list[Any], echo: Echo
) -> None:
    port = free_udp_port()
    config = write_config(tmp_path / "engarde.yml", port, echo)
    first, log = start(procs, config, tmp_path / "server.log")
    log.wait_for("server listening on")
    good = config.read_text()
    config.write_text(good + "  clientTimeuot: 5\n")  # the successor's config is broken
    mark = log.mark()
    first.send_signal(signal.SIGUSR2)
    log.wait_for(r"exited with code 2 before taking over: still serving", since=mark)
    traffic = Traffic(port)
    traffic.wait_back()
    assert traffic.stop() == []
    # Fixed, the next try works.
    config.write_text(good)
    mark = log.mark()
    first.send_signal(signal.SIGUSR2)
    pid = int(log.wait_for(r"started the successor \(pid (\d+)\)", since=mark).group(1))
    procs.append(AdoptedProcess(pid))
    log.wait_for(rf"engarde \(pid {pid}\) took over", since=mark)


def test_junk_on_the_control_socket_changes_nothing(
    tmp_path: Path, procs: list[Any], echo: Echo
) -> None:
    port = free_udp_port()
    config = write_config(tmp_path / "engarde.yml", port, echo)
    first, log = start(procs, config, tmp_path / "server.log")
    log.wait_for("server listening on")
    name = control_name("127.0.0.1", port)
    for junk in (b"takeover 1\n", b"\xff" * 300, b""):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(name)
            sock.sendall(junk)
            sock.settimeout(WAIT_S)
            try:
                answer = sock.recv(100)
            except ConnectionResetError:  # closed with our junk unread
                answer = b""
            assert answer == b"", answer  # closed without an answer
    # A successor that says hello and goes away: the server keeps serving.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(name)
        sock.sendall(b"hello 1\n")
        sock.settimeout(WAIT_S)
        assert sock.recv(100) == b"ok\n"
    log.wait_for(r"went away before taking over")
    traffic = Traffic(port)
    traffic.wait_back()
    assert traffic.stop() == []
    assert first.poll() is None
    assert "took over" not in log.text()


def test_systemd_is_told_ready_mainpid_and_stopping(
    tmp_path: Path, procs: list[Any], echo: Echo
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    notify.bind(path)
    notify.settimeout(WAIT_S)
    with contextlib.closing(notify):
        port = free_udp_port()
        config = write_config(tmp_path / "engarde.yml", port, echo)
        env = {"NOTIFY_SOCKET": path}
        first, _ = start(procs, config, tmp_path / "first.log", env)
        assert notify.recv(200) == b"READY=1"
        second, _ = start(procs, config, tmp_path / "second.log", env)
        assert notify.recv(200) == f"MAINPID={second.pid}\nREADY=1".encode()
        assert first.wait(timeout=GRACE_S + WAIT_S) == 0
        second.terminate()
        assert second.wait(timeout=WAIT_S) == 0
        assert notify.recv(200) == b"STOPPING=1"  # the first, handing over, said nothing


def test_the_dashboard_moves_to_the_successor(tmp_path: Path, procs: list[Any], echo: Echo) -> None:
    """The old process frees the dashboard's port before it lets the successor go ahead; the
    successor serves the page on the same address right after."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        web_port = probe.getsockname()[1]
    port = free_udp_port()
    config = write_config(tmp_path / "engarde.yml", port, echo, web_port)
    first, first_log = start(procs, config, tmp_path / "first.log")
    first_log.wait_for(f"dashboard on http://127.0.0.1:{web_port}")
    second, second_log = start(procs, config, tmp_path / "second.log")
    second_log.wait_for(f"dashboard on http://127.0.0.1:{web_port}")
    with socket.create_connection(("127.0.0.1", web_port), timeout=WAIT_S) as page:
        page.sendall(
            b"GET /api/v1/get-list HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert page.recv(100).startswith(b"HTTP/1.1 200"), second_log.tail()
    assert first.wait(timeout=GRACE_S + WAIT_S) == 0, first_log.tail()
    assert second.poll() is None, second_log.tail()
    assert "Traceback" not in first_log.text() + second_log.text()
