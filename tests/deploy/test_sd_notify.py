"""systemd readiness (Type=notify): `notify` reaches $NOTIFY_SOCKET (path and abstract '@'
addresses) and does nothing without it; the daemon sends READY=1 once it is listening and
STOPPING=1 when it shuts down (the server role on loopback: no root needed)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engarde.net.sd_notify import notify
from lab import REPO_ROOT
from tests.web.helpers import free_port


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(30)
    try:
        yield sock
    finally:
        sock.close()


def test_path_socket(
    receiver: socket.socket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    receiver.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify("READY=1", "STATUS=listening")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=listening"


def test_abstract_socket(receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"engarde-test-{os.getpid()}"
    receiver.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert notify(f"MAINPID={os.getpid()}")
    assert receiver.recv(4096) == f"MAINPID={os.getpid()}".encode()


def test_without_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_unreachable_socket_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify("READY=1") is False


def test_daemon_reports_ready_then_stopping(receiver: socket.socket, tmp_path: Path) -> None:
    path = tmp_path / "notify"
    receiver.bind(str(path))
    config = tmp_path / "engarde.yml"
    config.write_text(json.dumps({"server": {
        "listenAddr": f"127.0.0.1:{free_port()}", "dstAddr": f"127.0.0.1:{free_port()}",
    }}))  # fmt: skip
    env = {**os.environ, "NOTIFY_SOCKET": str(path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engarde", "server", str(config)],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        try:
            first = receiver.recv(4096)
        except TimeoutError:
            proc.kill()
            pytest.fail(f"no READY=1 within 30 s; stderr: {proc.communicate()[1][-3000:]}")
        assert first == b"READY=1"
        assert proc.poll() is None, "READY=1 sent, but the daemon is gone"
        proc.send_signal(signal.SIGTERM)
        assert receiver.recv(4096) == b"STOPPING=1"
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    # READY=1 follows the "listening" line: what systemd calls ready is what the log says.
    assert "listening" in stderr, stderr[-3000:]
